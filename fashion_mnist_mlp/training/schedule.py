"""The learning rate of a training run: `Schedule` steps the scheduler train.scheduler names
(fashion_mnist_mlp/config/schedulers.py) after every batch or epoch, after an optional warm-up,
and records the lr every batch used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fashion_mnist_mlp.config.schedulers import Horizon, SchedulerArgs

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from fashion_mnist_mlp.config.train import Train


class Schedule:
    """The learning rate of a run, stepped by the training loop after every batch and every
    validated epoch: a linear warm-up over `warmup_epochs` (per batch, from `warmup_start` x the
    lr to the lr the scheduler starts at), then the scheduler, per batch or per epoch.

    No step follows the run's last batch or epoch: it would set the lr of a step that never
    comes (one-cycle's linear annealing extrapolates it below zero), and the lr a run ends at,
    which swa starts from, must be the one its last step used. So the first batch after the
    warm-up runs at the scheduler's start value and the last batch at its end value: linear's
    end_factor x lr, cosine's eta_min, polynomial's 0, one-cycle's lr / div_factor /
    final_div_factor (the periodic cyclic and SGDR end wherever their cycle is). `trace` holds
    the lr every batch used, for the per-batch plot."""

    def __init__(
        self,
        optimizer: Optimizer,
        args: SchedulerArgs | None,
        horizon: Horizon,
        warmup_epochs: int = 0,
        warmup_start: float = 1.0,
    ) -> None:
        self.optimizer, self.args = optimizer, args
        self.total_epochs = warmup_epochs + horizon.epochs
        self.total_batches = self.total_epochs * horizon.steps_per_epoch
        self.warmup_batches = warmup_epochs * horizon.steps_per_epoch
        self.warmup_start = warmup_start
        self.scheduler = args.build(optimizer, horizon) if args is not None else None
        self.targets = [group["lr"] for group in optimizer.param_groups]
        self.batches = self.epochs = 0
        self.trace: list[float] = []
        if self.warmup_batches:
            self._scale(warmup_start)

    def _scale(self, factor: float) -> None:
        for group, target in zip(self.optimizer.param_groups, self.targets, strict=True):
            group["lr"] = target * factor

    def after_batch(self) -> None:
        self.trace.append(float(self.optimizer.param_groups[0]["lr"]))
        self.batches += 1
        if self.batches >= self.total_batches:
            return
        if self.batches < self.warmup_batches:
            start = self.warmup_start
            self._scale(start + (1 - start) * self.batches / self.warmup_batches)
        elif self.batches == self.warmup_batches:
            self._scale(1.0)  # exactly the lr the scheduler starts from
        elif self.scheduler is not None and self.args.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_metrics: dict[str, float]) -> None:
        """Step a per-epoch scheduler (ReduceLROnPlateau on its validation metric)."""
        self.epochs += 1
        stepped = self.scheduler is not None and not self.args.per_batch
        if not stepped or self.batches <= self.warmup_batches or self.epochs >= self.total_epochs:
            return
        if self.args.watches:
            self.scheduler.step(val_metrics[self.args.metric])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
        # a tensor, so it goes into the file's body: as JSON, a long run's trace outgrows the
        # safetensors header limit (100 MB, about 5 million batches)
        trace = torch.tensor(self.trace, dtype=torch.float64)
        return {"batches": self.batches, "epochs": self.epochs, "trace": trace,
                "scheduler": scheduler}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches, self.epochs = state["batches"], state["epochs"]
        self.trace = state["trace"].tolist()
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def build_schedule(optimizer: Optimizer, cfg: Train, steps_per_epoch: int) -> Schedule:
    """The schedule `cfg` (params' train section) asks for, over `optimizer`."""
    horizon = Horizon(cfg.epochs - cfg.warmup_epochs, steps_per_epoch, cfg.learning_rate)
    return Schedule(
        optimizer, cfg.scheduler_args, horizon, cfg.warmup_epochs, cfg.warmup_start_factor
    )
