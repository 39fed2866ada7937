"""The in-memory tensors the training loop indexes: a whole split as one float tensor, on the
device, so a batch is an index and the loop does no per-sample Python work."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from stages.cli import StageError


@dataclass(frozen=True)
class Images:
    """A split held in memory: float images in [0, 1] (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def load_split(path: Path, device: torch.device | str = "cpu") -> Images:
    if not path.is_file():
        raise StageError(f"{path} is missing: run the split stage (dvc repro split)")
    tensors = load_file(path)
    return Images(
        images=tensors["images"].to(device=device, dtype=torch.float32).div_(255),
        labels=tensors["labels"].to(device=device, dtype=torch.int64),
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
