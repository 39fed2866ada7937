"""predict reads an image file as the picture it shows, whatever mode, bit depth, orientation and
transparency a camera or an editor saved it in: the same tensor, and the same class, as that
picture saved as 8-bit upright greyscale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.tools.predict import read_image
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.model import MLP, MLPConfig, predict_logits

ORIENTATION = 0x0112  # the EXIF tag

# The pixels a file stores for each EXIF orientation, from the tag's definition (where the
# stored 0th row and 0th column lie in the upright picture); the reader must undo it.
STORED: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: np.fliplr,  # mirrored
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,  # 0th row is the left side, 0th column the top
    6: lambda a: np.rot90(a, 1),  # a phone held upright: shown rotated 90° clockwise
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, -1),
}


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.stack([grey] * 3, axis=-1)


# A way to save a picture: (picture, its background 0 or 255) -> (image to save, file suffix,
# the picture as this mode shows it). Transparent modes make the background transparent and
# store the opposite colour under it, as editors may: a reader that drops the alpha sees that.
Saver = Callable[[np.ndarray, int], tuple[Image.Image, str, np.ndarray]]


def as_1(p: np.ndarray, bg: int) -> tuple[Image.Image, str, np.ndarray]:
    shown = np.where(p > 127, 255, 0).astype(np.uint8)  # all a bilevel image can show
    return Image.fromarray(shown > 127), ".png", shown


def as_la_ink(p: np.ndarray, bg: int) -> tuple[Image.Image, str, np.ndarray]:
    """Ink of the opposite colour, as opaque as the picture is far from its background:
    antialiased drawing on a transparent layer."""
    ink = np.full_like(p, 255 - bg)
    alpha = np.abs(p.astype(np.int16) - bg).astype(np.uint8)
    return Image.fromarray(np.stack([ink, alpha], axis=-1)), ".png", p


def as_palette(p: np.ndarray, bg: int) -> tuple[Image.Image, str, np.ndarray]:
    image = Image.fromarray(p)  # index i is grey i, but the background's index is transparent
    palette = rgb(np.arange(256, dtype=np.uint8))
    palette[bg] = 255 - bg
    image.putpalette(palette.tobytes())
    image.info["transparency"] = bg
    return image, ".png", p


def as_rgba_cutout(p: np.ndarray, bg: int) -> tuple[Image.Image, str, np.ndarray]:
    background = p == bg
    colour = np.where(background, 255 - bg, p).astype(np.uint8)
    alpha = np.where(background, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb(colour), alpha])), ".png", p


def as_cmyk(p: np.ndarray, bg: int) -> tuple[Image.Image, str, np.ndarray]:
    zero = Image.new("L", (p.shape[1], p.shape[0]))
    return Image.merge("CMYK", [zero, zero, zero, Image.fromarray(255 - p)]), ".jpg", p


def as_i16_transparent(p: np.ndarray, bg: int) -> tuple[Image.Image, str, np.ndarray]:
    """16 bits with a tRNS grey: the background stored as a value no 8-bit grey x 257 takes."""
    marker = 65534 if bg == 0 else 1
    values = np.where(p == bg, marker, p.astype(np.uint16) * 257).astype(np.uint16)
    image = Image.fromarray(values)
    image.info["transparency"] = marker
    return image, ".png", p


def as_i16_12bit(p: np.ndarray, bg: int) -> tuple[Image.Image, str, np.ndarray]:
    """12-bit data unscaled in 16 bits, as a scientific camera writes it."""
    return Image.fromarray(np.round(p * (4095 / 255)).astype(np.uint16)), ".png", p


SAVERS: dict[str, Saver] = {
    "1": as_1,
    "L": lambda p, bg: (Image.fromarray(p), ".png", p),
    "LA": as_la_ink,
    "P-transparent": as_palette,
    "RGB": lambda p, bg: (Image.fromarray(rgb(p)), ".png", p),
    "RGB-jpeg": lambda p, bg: (Image.fromarray(rgb(p)), ".jpg", p),
    "RGBA": as_rgba_cutout,
    "CMYK-jpeg": as_cmyk,
    "I;16": lambda p, bg: (Image.fromarray(p.astype(np.uint16) * 257), ".png", p),
    "I;16-transparent": as_i16_transparent,
    "I;16-12bit": as_i16_12bit,
    "I;16-8bit": lambda p, bg: (Image.fromarray(p.astype(np.uint16)), ".png", p),  # unscaled
    "I": lambda p, bg: (Image.fromarray(p.astype(np.int32) * 257), ".tif", p),
    "F": lambda p, bg: (Image.fromarray(p.astype(np.float32) / 255), ".tif", p),
}
LOSSY = {"RGB-jpeg", "CMYK-jpeg"}


@pytest.fixture(scope="module")
def pictures(raw_dir: Path) -> np.ndarray:
    from fashion_mnist_mlp.training.fashion_mnist import read_images_and_labels

    return read_images_and_labels(raw_dir, "test")[0]


@pytest.fixture(scope="module")
def model(small_data: tuple[Images, Images]) -> MLP:
    """A small MLP trained for a second on 1,000 real images: a real decision boundary."""
    train, val = small_data
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(64,), pixel_mean=0.286, pixel_std=0.353))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(train.images), train.labels).backward()
        optimizer.step()
    accuracy = (predict_logits(model, val.images).argmax(1) == val.labels).float().mean()
    assert accuracy > 0.7
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pictures")


def saved(image: Image.Image, path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


# Derandomized: a JPEG's few /255 could, for a picture on the model's decision boundary, change
# its class (none did in 2,400 tries); fixed examples keep the suite deterministic.
@pytest.mark.parametrize("mode", SAVERS)
@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    index=st.integers(0, 9999),
    width=st.integers(28, 120),
    height=st.integers(28, 120),
    on_white=st.booleans(),
)
def test_every_mode_and_orientation_reads_as_the_upright_8bit_greyscale_picture(
    mode: str,
    pictures: np.ndarray,
    model: MLP,
    folder: Path,
    index: int,
    width: int,
    height: int,
    on_white: bool,
) -> None:
    """A FashionMNIST test image, enlarged to width x height (predict resizes it back), light on
    black or dark on white (a photo), saved in `mode` under each orientation: each reads, with
    the default --invert auto, as the light-on-black picture saved as 8-bit upright greyscale.

    A transparent background is the background: black behind the light object, white behind
    the dark one, which is then inverted with it."""
    upright = Image.fromarray(pictures[index]).resize((width, height), Image.Resampling.LANCZOS)
    background = 255 if on_white else 0
    picture = np.abs(background - np.asarray(upright).astype(np.int16)).astype(np.uint8)
    save = SAVERS[mode]
    _, suffix, shown = save(picture, background)
    light_on_black = 255 - shown if on_white else shown
    want = read_image(saved(Image.fromarray(light_on_black), folder / "want.png", 1))

    got = []
    for orientation, store in STORED.items():
        image = save(np.ascontiguousarray(store(picture)), background)[0]  # savers are pixelwise
        got.append(read_image(saved(image, folder / f"{orientation}{suffix}", orientation)))
    diffs = [round(float((g - want).abs().max()) * 255, 2) for g in got]
    assert max(diffs) < (8 if mode in LOSSY else 0.1), f"max |difference| x 255: {diffs}"
    classes = predict_logits(model, torch.stack([want, *got])).argmax(1).tolist()
    assert classes == classes[:1] * 9


def test_wide_values_beyond_the_modes_white_are_stretched_from_their_own_range(
    pictures: np.ndarray, folder: Path
) -> None:
    """A 32-bit integer or a float image is read by its own range when it leaves the mode's
    (0..65535, 0..1): stretched from its minimum and maximum, not clipped to white."""
    picture = pictures[0].astype(np.float32)
    stretched = (picture - picture.min()) / (picture.max() - picture.min())
    want = read_image(saved(Image.fromarray(stretched), folder / "want.tif", 1))
    for values in (picture * 1000 - 7, (picture * 3e5).astype(np.int32)):
        got = read_image(saved(Image.fromarray(values), folder / "wide.tif", 1))
        assert float((got - want).abs().max()) < 1e-5


def test_an_image_with_nan_pixels_is_refused(folder: Path) -> None:
    values = np.zeros((28, 28), np.float32)
    values[3, 4] = np.nan
    with pytest.raises(StageError, match=r"nan\.tif: some pixels are NaN or infinite"):
        read_image(saved(Image.fromarray(values), folder / "nan.tif", 1))


def test_an_image_whose_exif_is_damaged_is_refused_as_of_unknown_orientation(
    folder: Path,
) -> None:
    path = folder / "damaged-exif.png"
    Image.new("L", (40, 30)).save(path, exif=b"Exif\x00\x00not a TIFF header")
    with pytest.raises(StageError, match=r"damaged-exif\.png: its EXIF metadata is damaged"):
        read_image(path)


def object_on_clear(grey: int, mode: str) -> Image.Image:
    """A disc of one grey on a transparent background that hides the opposite colour (what a
    reader that drops the transparency sees): with an antialiased edge in RGBA, a hard one in P
    (its palette's index 0 marked transparent)."""
    y, x = np.mgrid[:60, :60]
    alpha = np.clip(20.5 - np.hypot(y - 29.5, x - 29.5), 0, 1)
    if mode == "P":
        image = Image.fromarray(np.where(alpha > 0.5, 1, 0).astype(np.uint8), "P")
        image.putpalette([255 - grey] * 3 + [grey] * 3)
        image.info["transparency"] = 0
        return image
    colour = np.where(alpha > 0, grey, 255 - grey).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb(colour), (alpha * 255).astype(np.uint8)]))


@pytest.mark.parametrize("mode", ["RGBA", "P"])
@pytest.mark.parametrize(
    ("grey", "invert", "kept"),
    [
        (230, "auto", True),  # a light object: on black, as it is
        (50, "auto", False),  # a dark one: on white, inverted with it
        (230, "no", True),
        (50, "no", True),  # on black, as it is, however dim
        (230, "yes", False),
        (50, "yes", False),
    ],
)
def test_an_object_on_a_transparent_background_ends_on_black(
    folder: Path, mode: str, grey: int, invert: str, kept: bool
) -> None:
    path = folder / f"clear-{grey}.png"
    object_on_clear(grey, mode).save(path)
    pixels = read_image(path, invert)
    centre = grey / 255 if kept else 1 - grey / 255
    assert abs(float(pixels[14, 14]) - centre) < 1e-3 and float(pixels[0, 0]) == 0.0, pixels


def test_12bit_data_in_a_16bit_file_is_read_as_12bit_with_a_note(
    pictures: np.ndarray, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Divided by 65535, 0..4095 would be all but black; a dark 16-bit picture is read as it
    is."""
    picture = pictures[0]
    want = read_image(saved(Image.fromarray(picture), folder / "8bit.png", 1))
    got = read_image(saved(as_i16_12bit(picture, 0)[0], folder / "12bit.png", 1))
    assert float((got - want).abs().max()) < 0.5 / 4095
    note = capsys.readouterr().err
    assert "12bit.png: note: 16-bit values up to 4095 only: read as 12-bit data" in note, note
    dark = (picture.astype(np.uint16) * 257 // 8).astype(np.uint16)  # up to 8191 of 65535
    got = read_image(saved(Image.fromarray(dark), folder / "dark.png", 1))
    assert abs(float(got.max()) - float(dark.max()) / 65535) < 1e-3 and not capsys.readouterr().err
