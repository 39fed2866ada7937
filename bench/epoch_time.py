"""Epoch time of the training loop, side by side with the lesson's loop and the machine's bound.

    uv run python bench/epoch_time.py [--epochs 3] [--threads N]

In one run, on the same data: the lesson's own loop (torchvision FashionMNIST + ToTensor +
DataLoader, batch 64, SGD), this project's loop at batch 64 and at the default batch size, and
the bound that a large sgemm measured now puts on one epoch of the MLP's forward and backward
pass. Prints medians and the ratios; the machine is shared and noisy, so compare within a run.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.data import Images, load_split
from stages.engine import train_epoch
from stages.fashion_mnist import RAW_FILES
from stages.model import MLP, MLPConfig
from stages.optim import build_loss, build_optimizer
from stages.params import load_params
from stages.paths import RAW_DIR, TRAIN_DATA

# forward 2·(784·512 + 512·512 + 512·10) FLOP per image, backward twice that
FLOP_PER_IMAGE = 3 * 2 * (784 * 512 + 512 * 512 + 512 * 10)


def median_seconds(run_epoch: Callable[[], object], epochs: int) -> float:
    run_epoch()  # warm-up: allocator, kernels, page cache
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sgemm_flops(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def tutorial_epoch(raw_dir: Path, n_images: int) -> Callable[[], None]:
    """The lesson's loop, verbatim in spirit: Dataset + ToTensor + DataLoader, SGD lr 1e-3."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    root = Path(tempfile.mkdtemp())
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for raw in RAW_FILES.values():  # torchvision reads the decompressed files when present
        (folder / raw.name.removesuffix(".gz")).write_bytes(
            gzip.decompress((raw_dir / raw.name).read_bytes())
        )
    data = datasets.FashionMNIST(root=root, train=True, download=False, transform=ToTensor())
    loader = DataLoader(Subset(data, range(n_images)), batch_size=64, shuffle=True)

    class NeuralNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.linear_relu_stack = nn.Sequential(
                nn.Linear(28 * 28, 512),
                nn.ReLU(),
                nn.Linear(512, 512),
                nn.ReLU(),
                nn.Linear(512, 10),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear_relu_stack(self.flatten(x))

    model = NeuralNetwork()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def run() -> None:
        model.train()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return run


def project_epoch(data: Images, batch_size: int) -> Callable[[], object]:
    params = load_params()
    model = MLP(MLPConfig(hidden=tuple(params.model.hidden), dropout=params.model.dropout))
    optimizer = build_optimizer(model.parameters(), params.train, params.train.lr)
    loss_fn = build_loss(params.train)
    generator = torch.Generator().manual_seed(0)
    return lambda: train_epoch(model, data, loss_fn, optimizer, batch_size, generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loop (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_split(TRAIN_DATA)
    n = len(data)
    default_batch = load_params().train.batch_size
    flops = sgemm_flops()
    bound = n * FLOP_PER_IMAGE / flops
    rows = {
        "lesson loop, batch 64 (SGD)": median_seconds(tutorial_epoch(RAW_DIR, n), args.epochs),
        "project loop, batch 64": median_seconds(project_epoch(data, 64), args.epochs),
        f"project loop, batch {default_batch} (default)": median_seconds(
            project_epoch(data, default_batch), args.epochs
        ),
        "bound: sgemm at the measured rate": bound,
    }
    print(
        f"{n} training images, {args.threads} threads, sgemm {flops / 1e9:.0f} GFLOP/s, median of {args.epochs} epochs"
    )
    for name, seconds in rows.items():
        print(f"  {name:<42} {seconds:6.2f} s/epoch")
    lesson, at64, default, _ = rows.values()
    print(f"  project vs lesson at batch 64:        {lesson / at64:5.2f}x faster (target >= 2.5x)")
    print(
        f"  project at default batch vs bound:    {default / bound:5.2f}x the bound (target <= 1.3x)"
    )


if __name__ == "__main__":
    main()
