"""Early stopping on a validation metric (train.early_stopping, whose block
fashion_mnist_mlp/config/train.py validates), and which epoch's weights a run keeps.

The decision is a function of the logged validation history alone, so a resumed run replays
it from the log and stops where an uninterrupted run would. Torch-free at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fashion_mnist_mlp.config.train import EarlyStoppingArgs


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
