"""Epoch time of the training loop, side by side with the lesson's loop and the machine's bound.

    uv run --group bench python bench/epoch_time.py [--epochs 5] [--threads N]

In one run, on the same data (the training split, so `dvc repro split` first): the lesson's own
loop (torchvision FashionMNIST + ToTensor + DataLoader, batch 64, SGD); this project's loop
(train_epoch with the model, loss, optimizer and per-batch scheduler of params.yaml) at batch 64
with the lesson's SGD and with the default optimizer, and at the default batch size in fp32 and
bf16 autocast; and the bound that a large matmul measured now puts on one epoch of the MLP's
forward and backward pass (3x the forward FLOPs, as the issue counts them). Prints medians and
the ratios; the machine is shared and noisy, so compare within one run.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import build_optimizer
from fashion_mnist_mlp.config.params import load_params
from fashion_mnist_mlp.config.paths import RAW_DIR, TRAIN_DATA
from fashion_mnist_mlp.training.data import Images, load_split
from fashion_mnist_mlp.training.engine import steps_per_epoch, train_epoch
from fashion_mnist_mlp.training.fashion_mnist import RAW_FILES
from fashion_mnist_mlp.training.model import LEGACY_PIXEL_MEAN, LEGACY_PIXEL_STD, MLP, MLPConfig
from fashion_mnist_mlp.training.schedule import build_schedule

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


def matmul_flops(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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

    return lambda: lesson_train_loop(loader, model, loss_fn, optimizer)


def lesson_train_loop(
    loader: Iterable, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """The lesson's train_loop: one pass over the loader."""
    model.train()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def project_epoch(data: Images, **overrides: object) -> Callable[[], object]:
    """One epoch of the train stage's loop with params.yaml's train section, `overrides` applied."""
    params = load_params()
    cfg = params.train.model_copy(update=overrides)
    model = MLP(MLPConfig.from_params(params.model, LEGACY_PIXEL_MEAN, LEGACY_PIXEL_STD))
    optimizer = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    # a one-cycle schedule long enough for the warm-up and timed epochs, stepped per batch
    schedule = build_schedule(
        optimizer,
        cfg.model_copy(update={"epochs": 1000}),
        steps_per_epoch(len(data), cfg.batch_size),
    )
    loss_fn = build_loss(cfg)
    generator = torch.Generator().manual_seed(0)
    return lambda: train_epoch(
        model, data, loss_fn, optimizer, cfg.batch_size, generator,
        bf16=cfg.bf16, after_step=schedule.after_batch,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per loop (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_split(TRAIN_DATA)
    n = len(data)
    default = load_params().train
    fp32_flops, bf16_flops = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    fp32_bound, bf16_bound = n * FLOP_PER_IMAGE / fp32_flops, n * FLOP_PER_IMAGE / bf16_flops

    def timed(epoch: Callable[[], object]) -> float:
        return median_seconds(epoch, args.epochs)

    b = default.batch_size
    rows = {
        "lesson loop, batch 64, SGD": timed(tutorial_epoch(RAW_DIR, n)),
        "project loop, batch 64, SGD": timed(
            project_epoch(data, batch_size=64, optimizer="sgd", precision="fp32")
        ),
        f"project loop, batch 64, {default.optimizer}": timed(
            project_epoch(data, batch_size=64, precision="fp32")
        ),
        f"project loop, batch {b}, {default.optimizer}, fp32": timed(
            project_epoch(data, precision="fp32")
        ),
        f"project loop, batch {b}, {default.optimizer}, bf16": timed(
            project_epoch(data, precision="bf16")
        ),
        "bound: fp32 matmul at the measured rate": fp32_bound,
        "bound: bf16 matmul at the measured rate": bf16_bound,
    }
    lesson, sgd64, opt64, fp32, bf16 = list(rows.values())[:5]
    print(
        f"{n} training images, {args.threads} threads, median of {args.epochs} epochs; matmul "
        f"fp32 {fp32_flops / 1e9:.0f} GFLOP/s, bf16 {bf16_flops / 1e9:.0f} GFLOP/s "
        f"(default: batch {b}, {default.precision})"
    )
    for name, seconds in rows.items():
        print(f"  {name:<44} {seconds:6.2f} s/epoch")
    print(f"  lesson / project, batch 64, same SGD:        {lesson / sgd64:5.2f}x (target >= 2.5x)")
    print(f"  lesson / project, batch 64, {default.optimizer:<16} {lesson / opt64:5.2f}x")
    print(
        f"  project fp32 / fp32 bound, batch {b}:      {fp32 / fp32_bound:5.2f}x (target <= 1.3x)"
    )
    print(f"  project bf16 / bf16 bound, batch {b}:      {bf16 / bf16_bound:5.2f}x")


if __name__ == "__main__":
    main()
