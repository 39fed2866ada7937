"""A stage's epochs, shared by train and swa: `fit` trains and validates them in one fixed order
and calls the stage's `Run` at set points, so the two stages differ only in what their run does
there (step a schedule, average the weights, stop early, save the state to resume from).

A run that was killed resumes from its saved state (`resume`) in every process: each epoch's
randomness comes from (stage, seed, epoch) alone, so it continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.losses import LossFn
from fashion_mnist_mlp.config.sections import Augment
from fashion_mnist_mlp.training.checkpoints import (
    RunKey,
    Stateful,
    TrainingState,
    load_training_state,
    read_training_state,
)
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.distributed import (
    broadcast_bytes,
    is_main,
    require_same,
    unwrap,
    world_size,
)
from fashion_mnist_mlp.training.engine import (
    Stats,
    current_lr,
    evaluate,
    seed_epoch,
    steps_per_epoch,
    train_epoch,
)
from fashion_mnist_mlp.training.epoch_log import EpochLog


@dataclass(frozen=True)
class Loop:
    """How a stage trains: the same for each of its epochs."""

    loss_fn: LossFn
    epochs: int
    batch_size: int
    seed: int
    stage: str
    """'train' or 'swa': names the epochs' random streams (engine.seed_epoch) and the errors."""
    lr_key: str
    """The params key to lower when the loss diverges, as the error says."""
    augmentation: Augment | None = None
    bf16: bool = False


class Run:
    """A stage's side of `fit`: the optimizer it steps, the log its epochs go to, the model it
    validates (by default the one it trains), the epoch it starts at, and the hooks fit calls,
    each of which does nothing unless the stage overrides it."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, log: EpochLog, scored: nn.Module | None
    ) -> None:
        self.optimizer, self.log, self.scored = optimizer, log, scored
        self.first_epoch = 1

    def resume_from(self, state: TrainingState, path: Path) -> None:
        """Continue after the epoch a killed run saved at `path`, its log replayed first."""
        if is_main():
            print(f"{self.log.name}: resuming after epoch {state.epoch} from {path}")
        self.log.replay(state.history)
        self.first_epoch = state.epoch + 1

    def after_step(self) -> None:
        """After every optimizer step."""

    def after_epoch(self) -> None:
        """After an epoch's training, before its validation."""

    def validated(self, epoch: int, metrics: dict[str, float]) -> bool:
        """After each validation is logged (epoch 0's, before training, too), in every
        process; True stops the run."""
        return False

    def logged(self, epoch: int) -> None:
        """Last in each trained epoch, the one that stops the run included, in every process."""


def fit(model: nn.Module, data: tuple[Images, Images], loop: Loop, run: Run) -> int:
    """Train epochs `run.first_epoch`..`loop.epochs` of `model` on the training images of
    `data` (training, validation), logging the validation score of `run.scored` before the
    first epoch (epoch 0, unless resumed) and after each one. Returns the last epoch trained.
    A non-finite loss stops the run with an error naming `loop.lr_key`."""
    train_data, val_data = data
    scored = run.scored if run.scored is not None else unwrap(model)
    check_batch_norm_batches(unwrap(model), len(train_data), loop.batch_size)
    if run.first_epoch == 1:
        start = evaluate(scored, val_data)
        run.log.log(0, current_lr(run.optimizer), None, start)
        run.validated(0, start.metrics("val"))
    for epoch in range(run.first_epoch, loop.epochs + 1):
        lr = current_lr(run.optimizer)
        stats = train_epoch(
            model, train_data, loop.loss_fn, run.optimizer, loop.batch_size,
            seed_epoch(loop.seed, epoch, loop.stage), augmentation=loop.augmentation,
            bf16=loop.bf16, after_step=run.after_step,
        )  # fmt: skip
        run.after_epoch()
        val = evaluate(scored, val_data)
        check_finite(loop, epoch, lr, stats, val)
        run.log.log(epoch, lr, stats, val)
        stop = run.validated(epoch, val.metrics("val"))
        run.logged(epoch)
        if stop:
            return epoch
    return loop.epochs


def check_finite(loop: Loop, epoch: int, lr: float, *stats: Stats) -> None:
    """Stop a run whose loss became inf or nan: nothing after it would be worth writing."""
    values = [v for s in stats for v in (s.loss, s.objective) if v is not None]
    if all(math.isfinite(v) for v in values):
        return
    raise StageError(
        f"{loop.stage}: the loss became {next(v for v in values if not math.isfinite(v))} in "
        f"epoch {epoch} (lr {lr:.3g}): the model diverged and nothing was written. Lower the "
        f"learning rate ({loop.lr_key}) and rerun"
    )


def check_batch_norm_batches(model: nn.Module, images: int, batch_size: int) -> None:
    """BatchNorm in training mode needs two images or more in every process's share of every
    batch; the last batch is the smallest."""
    if not any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        return
    last = images - (steps_per_epoch(images, batch_size) - 1) * batch_size
    if last // world_size() < 2:
        processes = f", {world_size()} processes share it" if world_size() > 1 else ""
        raise StageError(
            f"model.batch_norm needs 2 images or more in each process's share of every batch, "
            f"but the last batch of the {images} training images at train.batch_size "
            f"{batch_size} has {last}{processes}: choose another train.batch_size (or "
            "split.subset), or model.batch_norm: false"
        )


def require_same_run(key: RunKey, device: torch.device) -> None:
    """Stop every process unless all run the same params, data and code (`key`): each reads its
    own machine's, and ranks that differ would train apart with nothing to show it but the
    model rank 0 writes from their mixed gradients."""
    require_same(int(key.full[:15], 16), "params, data and code (their fingerprint)", device)


def resume(
    path: Path,
    key: RunKey,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Stateful,
    device: torch.device,
) -> TrainingState | None:
    """Restore rank 0's saved state at `path` in every process (the others' machines may have
    none), after require_same_run, and return where it stopped; None to start over."""
    state = broadcast_bytes(read_training_state(path) if is_main() else None, device)
    resumed = load_training_state(state, key, model, optimizer, schedule, str(path))
    require_same(resumed.epoch if resumed else 0, f"the epoch to resume {path} after", device)
    return resumed
