"""The in-memory tensors the training loop indexes: a whole split as one float tensor, on the
device, so a batch is an index and the loop does no per-sample Python work."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.training.fashion_mnist import CLASSES, IMAGE_SIDE, TEST_SIZE, TRAIN_SIZE
from fashion_mnist_mlp.training.files import tensor_layout


@dataclass(frozen=True)
class Images:
    """A split held in memory: float images in [0, 1] (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def load_split(path: Path, device: torch.device | str = "cpu") -> Images:
    check_split_layout(path)
    tensors = load_file(path)
    labels = tensors["labels"]
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise _damaged(path, f"holds label {int(labels.max())}; classes are 0..{len(CLASSES) - 1}")
    return Images(
        images=tensors["images"].to(device=device, dtype=torch.float32).div_(255),
        labels=labels.to(device=device, dtype=torch.int64),
    )


def check_split_layout(path: Path) -> None:
    """Refuse, from the header alone, a file that is not a split: before any memory is
    allocated for what a damaged or foreign header claims."""
    try:
        _, layout = tensor_layout(path)
    except FileNotFoundError:
        raise StageError(f"{path} is missing: run the split stage (dvc repro split)") from None
    except ValueError as e:
        raise _damaged(path, str(e)) from None
    labels_shape = layout.get("labels", ("", ()))[1]
    n = labels_shape[0] if len(labels_shape) == 1 else -1
    expected = {"images": ("U8", (n, IMAGE_SIDE, IMAGE_SIDE)), "labels": ("U8", (n,))}
    if layout != expected or not 0 < n <= TRAIN_SIZE + TEST_SIZE:
        found = ", ".join(f"{k} {dtype} {list(shape)}" for k, (dtype, shape) in layout.items())
        found += f" ({len(layout)} tensors)" if len(layout) > 2 else ""
        raise _damaged(
            path,
            f"holds {found or 'no tensors'}, not a split's images U8 [N, 28, 28] and labels "
            f"U8 [N] with 0 < N <= {TRAIN_SIZE + TEST_SIZE}",
        )


def _damaged(path: Path, problem: str) -> StageError:
    return StageError(
        f"{path} {problem}: it is damaged or not this pipeline's. Restore it (dvc checkout "
        f"{path}) or rebuild it (dvc repro split)"
    )


def read_pixel_statistics(manifest: Path) -> tuple[float, float]:
    """The training split's pixel mean and standard deviation, as the split stage measured them."""
    try:
        stats = json.loads(manifest.read_text())["pixel_statistics"]
        mean, std = float(stats["mean"]), float(stats["std"])
        if not (0 <= mean <= 1 and 0 < std <= 1):
            raise ValueError(f"mean {mean} and std {std} are not statistics of pixels in [0, 1]")
        return mean, std
    except FileNotFoundError:
        raise StageError(f"{manifest} is missing: run the split stage (dvc repro split)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise StageError(
            f"{manifest} has no valid pixel_statistics ({type(e).__name__}: {e}): rerun the "
            "split stage (dvc repro split)"
        ) from None
