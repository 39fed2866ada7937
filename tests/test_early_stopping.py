from __future__ import annotations

import pytest

from fashion_mnist_mlp.config.train import EarlyStoppingArgs
from fashion_mnist_mlp.training.early_stopping import Watcher

from .conftest import error_of_params


def stopping_epoch(curve: list[float], **args: object) -> tuple[int, int]:
    """(epoch it stops after, best epoch) for a validation loss curve (epoch 1 first)."""
    watcher = Watcher(EarlyStoppingArgs(**{"metric": "val/loss", "mode": "min", "patience": 2,
                                           "min_delta": 0.0} | args))  # fmt: skip
    for epoch, loss in enumerate(curve, start=1):
        watcher.improved(epoch, {"val/loss": loss, "val/acc": 1 - loss})
        if watcher.should_stop:
            return epoch, watcher.best_epoch
    return len(curve), watcher.best_epoch


def test_stops_patience_epochs_after_the_best() -> None:
    assert stopping_epoch([1.0, 0.8, 0.7, 0.75, 0.72, 0.6]) == (5, 3)


def test_never_stops_while_improving() -> None:
    assert stopping_epoch([1.0, 0.9, 0.8, 0.7]) == (4, 4)


def test_min_delta_counts_only_real_improvements() -> None:
    assert stopping_epoch([1.0, 0.95, 0.94, 0.93], min_delta=0.1) == (3, 1)


def test_accuracy_is_watched_upwards() -> None:
    watcher = Watcher(EarlyStoppingArgs(metric="val/acc", mode="max", patience=1, min_delta=0))
    for epoch, acc in enumerate([0.5, 0.7, 0.6], start=1):
        watcher.improved(epoch, {"val/loss": 0.0, "val/acc": acc})
    assert (watcher.best_epoch, watcher.should_stop) == (2, True)


def test_a_mode_against_the_metric_is_refused(raw_params: dict) -> None:
    es = {"metric": "val/acc", "mode": "min", "patience": 3, "min_delta": 0.0}
    message = error_of_params(raw_params, {"train.early_stopping": es})
    assert "mode = 'min' watches val/acc in the wrong direction: use mode: max" in message


def test_keeping_the_best_needs_a_metric(raw_params: dict) -> None:
    message = error_of_params(raw_params, {"train.keep": "best"})
    assert "train.keep = 'best' needs a metric" in message


@pytest.mark.parametrize("patience", [0, -1])
def test_patience_is_at_least_one(raw_params: dict, patience: int) -> None:
    es = {"metric": "val/loss", "mode": "min", "patience": patience, "min_delta": 0.0}
    assert "train.early_stopping.patience" in error_of_params(
        raw_params, {"train.early_stopping": es}
    )
