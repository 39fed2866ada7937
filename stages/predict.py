"""Classify image files with the exported model of any version.

    uv run python -m stages.predict shirt.png boot.jpg --rev v1.0.0

Images are read as greyscale and resized to 28x28. FashionMNIST shows light clothes on a black
background; an image whose border is mostly light (a photo on white) is inverted to match,
unless --invert says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .cli import StageError, run_stage
from .fashion_mnist import CLASSES, IMAGE_SIDE
from .model import predict_logits
from .registry import load_model

MAX_PIXELS = 64_000_000
"""More than any photo has, less than where PIL warns of a decompression bomb; checked on the
header, before any pixel is decoded."""


def read_image(path: Path, invert: str = "auto") -> torch.Tensor:
    """An image file as a (28, 28) float tensor in [0, 1], light object on dark background."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise StageError(
                    f"{path}: {width}x{height} pixels, more than the {MAX_PIXELS:,} this tool "
                    "reads; is the file damaged? Otherwise resize it first"
                )
            grey = image.convert("L")
            if grey.size != (IMAGE_SIDE, IMAGE_SIDE):
                grey = grey.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
            pixels = np.asarray(grey, dtype=np.float32) / 255
    except FileNotFoundError:
        raise StageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise StageError(f"{path}: not an image this tool can read ({e})") from None
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if invert == "yes" or (invert == "auto" and border.mean() > 0.5):
        pixels = 1 - pixels
    return torch.from_numpy(pixels)


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
        prog="python -m stages.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--rev", help="git tag, commit, branch or experiment (default: workspace)")
    parser.add_argument("--repo", help="path or URL of the project (default: this one)")
    parser.add_argument(
        "--top", type=int, default=3, choices=range(1, len(CLASSES) + 1), metavar="K"
    )
    parser.add_argument("--invert", choices=["auto", "yes", "no"], default="auto")
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
