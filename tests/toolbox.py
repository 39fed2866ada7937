"""Helpers for the tests of the option families (optimizers, losses, schedulers)."""

from __future__ import annotations

import torch

from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import build_optimizer
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.config.train import Train
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.engine import train_epoch
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.schedule import build_schedule


def train_config(params: Params, **changes: object) -> Train:
    """params.yaml's train section with `changes` (dotted keys below train), validated."""
    raw = params.train.model_dump(by_alias=True)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        section = raw
        for key in parents:
            section = section[key]
        section[last] = value
    return Train.model_validate(raw)


def losses_while_training(
    cfg: Train, data: Images, epochs: int = 4, model: MLP | None = None
) -> list[float]:
    """Train a small MLP (or `model`) on `data` with `cfg`'s optimizer, loss and schedule, in
    batches of 128; the objective of every epoch."""
    torch.manual_seed(0)
    model = model or MLP(MLPConfig(hidden=(64,), pixel_mean=0.286, pixel_std=0.353))
    optimizer = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    schedule = build_schedule(optimizer, cfg, steps_per_epoch=-(-len(data) // 128))
    losses = []
    for epoch in range(epochs):
        stats = train_epoch(
            model, data, build_loss(cfg), optimizer, 128, torch.Generator().manual_seed(epoch),
            after_step=schedule.after_batch,
        )  # fmt: skip
        schedule.after_epoch({"val/loss": stats.loss, "val/acc": stats.accuracy})
        losses.append(stats.objective)
    return losses


LESSON_CLASS = """
import torch
from torch import nn

class NeuralNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28*28, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits
"""
"""The lesson's NeuralNetwork class, verbatim, as source: tests run it as the lesson's code."""
