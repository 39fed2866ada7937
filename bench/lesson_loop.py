"""The lesson's own training loop, as its page writes it, timed per epoch of 50,000 images.

    uv run --group bench python bench/lesson_loop.py [--epochs 3] [--threads 2]

torchvision's FashionMNIST + ToTensor + DataLoader (batch 64, shuffled), the 784-512-512-10
MLP, CrossEntropyLoss and SGD lr 1e-3, on the first 50,000 training images (the size of this
project's training split) read from Debian's copy. Prints each epoch's seconds and their median
as `lesson: X s per epoch (median)`; bench/epoch_time.py runs it beside the train stage.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

RAW = Path("/usr/share/datasets/fashion-mnist")
# torchvision checks for all four files, though the loop reads the training ones only
FILES = [
    f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))
]
IMAGES = 50_000


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


def train_loop(dataloader, model, loss_fn, optimizer) -> None:
    model.train()
    for X, y in dataloader:
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    # here, not at the top: --help works without the bench group (uv sync --group bench)
    from torchvision import datasets
    from torchvision.transforms import ToTensor

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "FashionMNIST" / "raw"
        folder.mkdir(parents=True)
        for name in FILES:  # torchvision reads the decompressed files when they are there
            (folder / name).write_bytes(gzip.decompress((RAW / f"{name}.gz").read_bytes()))
        data = datasets.FashionMNIST(root=root, train=True, download=False, transform=ToTensor())
        loader = DataLoader(Subset(data, range(IMAGES)), batch_size=64, shuffle=True)
        model = NeuralNetwork()
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        seconds = []
        for epoch in range(args.epochs):
            start = time.perf_counter()
            train_loop(loader, model, loss_fn, optimizer)
            seconds.append(time.perf_counter() - start)
            print(f"epoch {epoch + 1}: {seconds[-1]:.2f} s", flush=True)
    print(f"lesson: {statistics.median(seconds):.2f} s per epoch (median)")


if __name__ == "__main__":
    main()
