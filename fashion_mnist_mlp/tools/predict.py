"""Classify image files with the exported model of any version.

    uv run python -m fashion_mnist_mlp.tools.predict shirt.png boot.jpg --rev v1.0.0

Images are read as greyscale, upright as their EXIF orientation says, and resized to 28x28.
FashionMNIST shows light clothes on a black background; an image whose border is mostly light
(a photo on white) is inverted to match, unless --invert says otherwise.

A transparent background is the background, black or white as the object was drawn for
(--invert auto): black behind a light object, which then stays as it is; white behind a dark
one, which the border test then inverts, as it does a photo on white. An object fades into the
background it was drawn for, so its outline tells (`backdrop`): a light one's lightness rises
from its outline inward, a dark one's falls, whether its edge is antialiased in grey (a picture
cut out of its background) or in opacity (a drawing on a transparent layer). --invert no puts
it on black, --invert yes on white (then inverted): it ends as black background either way.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fashion_mnist_mlp.cli import StageError, run_stage
from fashion_mnist_mlp.training.fashion_mnist import CLASSES, IMAGE_SIDE
from fashion_mnist_mlp.training.model import predict_logits
from fashion_mnist_mlp.training.versions import load_model

if TYPE_CHECKING:
    from PIL import Image

MAX_PIXELS = 64_000_000
"""More than any photo has, less than where PIL warns of a decompression bomb; checked on the
header, before any pixel is decoded."""


SIXTEEN_BIT = 65535.0


def full_scale(mode: str) -> float | None:
    """The value of white in a mode of more than 8 bits a pixel; None for the 8-bit modes.

    Pillow reads 16-bit PNG, TIFF and PGM as I;16 or I, so I is taken as 16-bit too; one whose
    values leave 0..65535 (a 32-bit TIFF) is stretched by unit_range instead. F is float: 0..1,
    as numpy and scikit-image write it."""
    if mode == "F":
        return 1.0
    return SIXTEEN_BIT if mode == "I" or mode.startswith("I;16") else None


def read_image(path: Path, invert: str = "auto") -> torch.Tensor:
    """An image file as a (28, 28) float tensor in [0, 1], light object on dark background.

    Every mode is read by its real range: 8-bit modes (1, L, P, RGB, CMYK, ...) / 255, 16-bit
    ones / 65535, I and F as full_scale says. Transparency is composited onto black or white
    (`backdrop`; the module's docstring says why). Resizing is done on the alpha-premultiplied
    picture, which is the same as resizing the composited one."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise StageError(
                    f"{path}: {width}x{height} pixels, more than the {MAX_PIXELS:,} this tool "
                    "reads; is the file damaged? Otherwise resize it first"
                )
            try:
                upright = ImageOps.exif_transpose(image)
            except (SyntaxError, struct.error) as e:
                raise StageError(
                    f"{path}: its EXIF metadata is damaged ({e}), so which way up the picture "
                    "goes is unknown; save it again without EXIF (most editors can)"
                ) from None
            grey, alpha = grey_and_alpha(upright, path)
    except FileNotFoundError:
        raise StageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise StageError(f"{path}: not an image this tool can read ({e})") from None
    if alpha is None:
        pixels = resized(grey)
    else:  # composited after resizing: both are linear, and the alpha is resized too
        opacity = resized(alpha)
        pixels = resized(grey * alpha) + backdrop(grey, alpha, invert) * (1 - opacity)
    pixels = pixels.clip(0, 1)  # Lanczos overshoots at sharp edges
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if invert == "yes" or (invert == "auto" and border.mean() > 0.5):
        pixels = 1 - pixels
    return torch.from_numpy(pixels)


EVEN = 1 / 64
"""The least difference of lightness between an object's outline and its inside that shows
which way it fades; below it (a hard-edged cut-out of one grey), its mean grey decides."""


def backdrop(grey: np.ndarray, alpha: np.ndarray, invert: str) -> float:
    """The grey behind a transparent background: 0.0 (black) or 1.0 (white, which the border
    test inverts to black with the rest). In auto, the one the object was drawn for: black
    where its lightness, opacity x (grey - 1/2), rises from its outline (the pixels next to
    clear ones) to its inside, white where it falls; for an even object, black where its mean
    grey, opacity weighted, is at least mid-grey. On 2,000 FashionMNIST test pictures cut out
    of their black background, the mean grey alone takes 34% of them for dark objects at 28x28
    (their faint pixels weigh), 52% enlarged to 28-120 pixels a side; the fade, 0.9% (pictures
    that fill their frame, with little outline) and none."""
    if invert != "auto":
        return 0.0 if invert == "no" else 1.0
    lightness = alpha * (grey - 0.5)
    clear = alpha == 0
    near = np.zeros_like(clear)  # pixels next to a clear one (4-neighbours)
    near[1:] |= clear[:-1]
    near[:-1] |= clear[1:]
    near[:, 1:] |= clear[:, :-1]
    near[:, :-1] |= clear[:, 1:]
    outline, inside = ~clear & near, ~clear & ~near
    if outline.any() and inside.any():
        fade = float(lightness[inside].mean() - lightness[outline].mean())
        if abs(fade) >= EVEN:
            return 0.0 if fade > 0 else 1.0
    return 0.0 if lightness.sum() >= 0 else 1.0


def grey_and_alpha(image: Image.Image, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The image's grey level and opacity in [0, 1], float32, at full size; no opacity for an
    image without transparency."""
    white = full_scale(image.mode)
    if white is not None:
        values = np.asarray(image).astype(np.float32)
        transparent = image.info.get("transparency")  # the grey value a 16-bit PNG's tRNS names
        alpha = None if transparent is None else (values != transparent).astype(np.float32)
        return unit_range(values, white, path), alpha
    if image.has_transparency_data:  # alpha band, or a palette or colour marked transparent
        grey, alpha = image.convert("LA").split()
        return np.asarray(grey, np.float32) / 255, np.asarray(alpha, np.float32) / 255
    return np.asarray(image.convert("L"), np.float32) / 255, None


NARROW_DEPTHS = (8, 10, 12)
"""Bit depths that 16-bit files may hold unscaled (12-bit cameras and scanners, an 8-bit array
saved as uint16). Files seldom say so (PNG's sBIT comes with values scaled to 16 bits; TIFF's
MaxSampleValue is rarely set), so this is a guess: a 16-bit picture whose brightest value is
at most 4095 (1/16 of white) would be all but black to the model, so it is read as the fewest
of these bits that hold that value, and a note says so."""


def unit_range(values: np.ndarray, white: float, path: Path) -> np.ndarray:
    """Values of a wide mode in [0, 1]: divided by the mode's white when they lie within
    0..white (16-bit ones as NARROW_DEPTHS says), else stretched from their own minimum and
    maximum (all we know of their meaning)."""
    if not np.isfinite(values).all():
        raise StageError(f"{path}: some pixels are NaN or infinite; save it without them")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > white:
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    if white == SIXTEEN_BIT and 0 < high < 2 ** NARROW_DEPTHS[-1]:
        bits = next(b for b in NARROW_DEPTHS if high < 2**b)
        print(
            f"{path}: note: 16-bit values up to {high:.0f} only: read as {bits}-bit data "
            f"(0..{2**bits - 1}); if it is a dark 16-bit picture instead, save it as 8-bit",
            file=sys.stderr,
        )
        white = 2**bits - 1
    return values / white


def resized(pixels: np.ndarray) -> np.ndarray:
    """A float image resized to 28x28 (Lanczos, as Pillow does it), in float32 throughout."""
    from PIL import Image

    if pixels.shape == (IMAGE_SIDE, IMAGE_SIDE):
        return pixels
    small = Image.fromarray(pixels).resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(small, np.float32)


def classify(
    images: torch.Tensor, model: torch.nn.Module, top: int
) -> list[list[tuple[str, float]]]:
    probs = predict_logits(model, images).softmax(1)
    best = probs.topk(top, dim=1)
    return [
        [(CLASSES[i], p) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]
        for values, indices in zip(best.values, best.indices, strict=True)
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fashion_mnist_mlp.tools.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--rev", help="git tag, commit, branch or experiment (default: workspace)")
    parser.add_argument("--repo", help="path or URL of the project (default: this one)")
    parser.add_argument(
        "--top", type=int, default=3, choices=range(1, len(CLASSES) + 1), metavar="K"
    )
    parser.add_argument(
        "--invert", choices=["auto", "yes", "no"], default="auto",
        help="auto: invert an image whose border is mostly light, and put a transparent "
        "background behind a light object as black, behind a dark one as white (inverted with "
        "it); yes: invert (a transparent background counts as white); no: take it as light on "
        "dark (a transparent background counts as black)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    images = torch.stack([read_image(p, args.invert) for p in args.images])
    model = load_model(rev=args.rev, repo=args.repo)
    for path, ranked in zip(args.images, classify(images, model, args.top), strict=True):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked))


def cli() -> None:
    """`fashion-mnist-predict`, the command this package installs."""
    run_stage(main)


if __name__ == "__main__":
    cli()
