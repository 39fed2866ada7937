from __future__ import annotations

import pytest
import torch

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.engine import evaluate
from fashion_mnist_mlp.training.epoch_log import EpochLog
from fashion_mnist_mlp.training.loop import Loop, Run, fit
from fashion_mnist_mlp.training.model import MLP, MLPConfig


class Recorder(Run):
    """A run that records which hook fit called when, and asks to stop after `stop_at`."""

    def __init__(self, model: MLP, epochs: int, stop_at: int | None = None) -> None:
        super().__init__(
            torch.optim.SGD(model.parameters(), lr=0.05), EpochLog(None, "t", epochs), None
        )
        self.stop_at, self.events, self.metrics = stop_at, [], []

    def after_step(self) -> None:
        self.events.append("step")

    def after_epoch(self) -> None:
        self.events.append("epoch")

    def validated(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.events.append(f"validated {epoch}")
        self.metrics.append(metrics)
        return epoch == self.stop_at

    def logged(self, epoch: int) -> None:
        self.events.append(f"logged {epoch}")


def loop(params: Params, epochs: int) -> Loop:
    return Loop(
        build_loss(params.train), epochs, batch_size=100, seed=0, stage="train", lr_key="train.lr"
    )


def setup(
    small_data: tuple[Images, Images], epochs: int, **run: int
) -> tuple[MLP, tuple[Images, Images], Recorder]:
    """250 training images: batches of 100, 100 and 50, three steps an epoch."""
    train, val = small_data
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(32,)))
    return (
        model,
        (Images(train.images[:250], train.labels[:250]), val),
        Recorder(model, epochs, **run),
    )


EPOCH = ["step"] * 3 + ["epoch"]


def test_fit_calls_the_hooks_of_the_run_in_order(params: Params, small_data) -> None:
    model, data, run = setup(small_data, 2)
    assert fit(model, data, loop(params, 2), run) == 2
    assert run.events == [
        "validated 0",
        *EPOCH,
        "validated 1",
        "logged 1",
        *EPOCH,
        "validated 2",
        "logged 2",
    ]
    # each hook sees the metrics of the epoch just logged, the last those of the model as it is
    assert [{k: m[k] for k in run.metrics[0]} for m in run.log.history] == run.metrics
    assert run.metrics[-1] == evaluate(model, data[1]).metrics("val")


def test_a_run_that_asks_to_stop_ends_after_that_epoch_is_logged(
    params: Params, small_data
) -> None:
    model, data, run = setup(small_data, 5, stop_at=1)
    assert fit(model, data, loop(params, 5), run) == 1
    assert run.events == ["validated 0", *EPOCH, "validated 1", "logged 1"]
    assert len(run.log.history) == 2


def test_a_resumed_run_trains_from_its_first_epoch_without_scoring_epoch_0(
    params: Params, small_data
) -> None:
    model, data, run = setup(small_data, 3)
    run.first_epoch = 3
    assert fit(model, data, loop(params, 3), run) == 3
    assert run.events == [*EPOCH, "validated 3", "logged 3"]


def test_a_diverging_run_stops_with_the_epoch_and_the_lr_to_lower(
    params: Params, small_data
) -> None:
    model, data, run = setup(small_data, 3)
    run.optimizer.param_groups[0]["lr"] = 1e30
    with pytest.raises(
        StageError, match=r"train: the loss became (nan|inf) in epoch 1 .*\(train.lr\)"
    ):
        fit(model, data, loop(params, 3), run)
    assert len(run.log.history) == 1  # only the score before training was logged
    assert "logged 1" not in run.events
