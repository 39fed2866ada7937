"""Early stopping on a validation metric, and which epoch's weights a run keeps.

The decision is a function of the logged validation history alone, so a resumed run replays
it from the log and stops where an uninterrupted run would. Torch-free at import.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from fashion_mnist_mlp.config.schema import Mode, NonNegativeFloat, Strict, ValMetric, check_mode


class EarlyStoppingArgs(Strict):
    metric: ValMetric
    mode: Mode
    patience: Annotated[int, Field(ge=1)]
    """Epochs without an improvement of more than `min_delta` before training stops."""
    min_delta: NonNegativeFloat

    @model_validator(mode="after")
    def _mode_fits_metric(self) -> EarlyStoppingArgs:
        check_mode(self.metric, self.mode, "train.early_stopping")
        return self


class Watcher:
    """Tracks the best epoch of `metric` (ties keep the earlier one) and when to stop."""

    def __init__(self, args: EarlyStoppingArgs) -> None:
        self.args = args
        self.best_epoch, self.best_value = 0, None
        self.epoch = 0

    def improved(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record `epoch`'s validation metrics; True if it is the new best."""
        value, sign = metrics[self.args.metric], (1 if self.args.mode == "min" else -1)
        self.epoch = epoch
        if self.best_value is None or sign * (self.best_value - value) > self.args.min_delta:
            self.best_epoch, self.best_value = epoch, value
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.epoch - self.best_epoch >= self.args.patience
