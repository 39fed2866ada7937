"""Classify image files with the exported model of any version.

    uv run python -m fashion_mnist_mlp.tools.predict shirt.png boot.jpg --rev v1.0.0

Images are read as greyscale, upright as their EXIF orientation says, and resized to 28x28.
FashionMNIST shows light clothes on a black background; an image whose border is mostly light
(a photo on white) is inverted to match, unless --invert says otherwise.

A transparent background is taken for what FashionMNIST's pictures were made from: a product
photo on white (the dataset is those photos, negated). So transparency is composited onto white,
and the border test then inverts it to the black background; --invert no composites it onto
black instead, for a light drawing on a transparent background. Either way it ends as background.
"""

from __future__ import annotations

import argparse
import struct
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


def full_scale(mode: str) -> float | None:
    """The value of white in a mode of more than 8 bits a pixel; None for the 8-bit modes.

    Pillow reads 16-bit PNG, TIFF and PGM as I;16 or I, so I is taken as 16-bit too; one whose
    values leave 0..65535 (a 32-bit TIFF) is stretched by unit_range instead. F is float: 0..1,
    as numpy and scikit-image write it."""
    if mode == "F":
        return 1.0
    return 65535.0 if mode == "I" or mode.startswith("I;16") else None


def read_image(path: Path, invert: str = "auto") -> torch.Tensor:
    """An image file as a (28, 28) float tensor in [0, 1], light object on dark background.

    Every mode is read by its real range: 8-bit modes (1, L, P, RGB, CMYK, ...) / 255, 16-bit
    ones / 65535, I and F as full_scale says. Transparency is composited onto white, or onto
    black with invert="no" (the module's docstring says why). Resizing is done on the
    alpha-premultiplied picture, which is the same as resizing the composited one."""
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
    backdrop = 0.0 if invert == "no" else 1.0
    if alpha is None:
        pixels = resized(grey)
    else:  # composited after resizing: both are linear, and the alpha is resized too
        opacity = resized(alpha)
        pixels = resized(grey * alpha) + backdrop * (1 - opacity)
    pixels = pixels.clip(0, 1)  # Lanczos overshoots at sharp edges
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if invert == "yes" or (invert == "auto" and border.mean() > 0.5):
        pixels = 1 - pixels
    return torch.from_numpy(pixels)


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


def unit_range(values: np.ndarray, white: float, path: Path) -> np.ndarray:
    """Values of a wide mode in [0, 1]: divided by the mode's white when they lie within
    0..white, else stretched from their own minimum and maximum (all we know of their meaning)."""
    if not np.isfinite(values).all():
        raise StageError(f"{path}: some pixels are NaN or infinite; save it without them")
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= white:
        return values / white
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


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
        help="auto: invert an image whose border is mostly light or transparent; no: take it "
        "as light on dark (a transparent background then counts as dark)",
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
