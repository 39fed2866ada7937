"""Draws docs/schedulers.png: the learning rate every batch of a default run would use under each
scheduler, computed by the real scheduler objects (fashion_mnist_mlp/config/schedulers.py) with params.yaml's
arguments, epochs and batches per epoch. ReduceLROnPlateau is fed a validation loss that stops
improving at epoch 10, since its curve depends on one.

    uv run python bench/schedulers.py [--out docs/schedulers.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline import ROOT
from fashion_mnist_mlp.config.optimizers import build_optimizer
from fashion_mnist_mlp.config.params import load_params
from fashion_mnist_mlp.config.schedulers import SCHEDULERS
from fashion_mnist_mlp.config.train import Train
from fashion_mnist_mlp.training.engine import steps_per_epoch
from fashion_mnist_mlp.training.schedule import build_schedule


def lr_curve(cfg: Train, steps: int) -> list[float]:
    optimizer = build_optimizer([torch.zeros(1, requires_grad=True)], cfg, cfg.learning_rate)
    schedule = build_schedule(optimizer, cfg, steps)
    for epoch in range(1, cfg.epochs + 1):
        for _ in range(steps):
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch({"val/loss": max(0.3, 1 - epoch / 10 * 0.7), "val/acc": 0.0})
    return schedule.trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "schedulers.png")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    steps = steps_per_epoch(60_000 - params.split.val_size, params.train.batch_size)
    names = ["none", *SCHEDULERS, "cosine + warm-up"]
    fig, axes = plt.subplots(3, 5, figsize=(16, 8.5), sharex=True)
    for ax, name in zip(axes.flat, names, strict=False):
        changes = {"scheduler": name.split(" ")[0]}
        if name.endswith("warm-up"):
            changes["warmup_epochs"] = 3
        cfg = Train.model_validate(params.train.model_dump(by_alias=True) | changes)
        lrs = lr_curve(cfg, steps)
        ax.plot([i / steps for i in range(len(lrs))], lrs, lw=1.2)
        args_shown = cfg.scheduler_args.model_dump(by_alias=True) if cfg.scheduler_args else {}
        ax.set_title(name, fontsize=10)
        ax.text(0.98, 0.96, "\n".join(f"{k}: {v}" for k, v in args_shown.items()),
                transform=ax.transAxes, ha="right", va="top", fontsize=6, color="0.35")  # fmt: skip
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    fig.suptitle(
        f"lr of every batch, {params.train.optimizer} (lr {params.train.learning_rate:g}), "
        f"{params.train.epochs} epochs x {steps} batches, params.yaml's arguments",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=110, metadata={"Software": None})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
