"""Stage 4: SWA-finalize the trained model (stochastic weight averaging).

Training continues from the trained weights for `swa.epochs`, with SWALR annealing the learning
rate from where training ended to `swa.lr`. `swa.strategy: swa` averages the weights after each
epoch with equal shares (AveragedModel); `ema` keeps an exponential moving average of weights
and buffers, updated after every step (`swa.ema_decay`). `update_bn` then recomputes BatchNorm
statistics for the averaged weights over the training data (with `model.batch_norm`; a no-op
without). With `swa.epochs: 0` the trained model passes through unchanged, byte for byte.
`train.nproc` > 1 runs it as DDP processes, as for train. Like train, it saves its state after
every epoch (models/resume/swa.safetensors): a killed run resumes and ends with the same bytes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from .checkpoints import (
    RunKey,
    TrainingState,
    load_model,
    load_training_state,
    read_training_state,
    remove_training_state,
    run_key,
    save_model,
    save_training_state,
)
from .cli import StageError, run_stage
from .data import Images, load_split
from .distributed import (
    broadcast_bytes,
    is_main,
    require_same,
    run_data_parallel,
    world_size,
    wrap,
)
from .engine import EpochLog, batches, epoch_log, fit, seed_everything
from .files import copy_file
from .losses import build_loss
from .numerics import in_effect
from .optimizers import build_optimizer
from .params import Params, Swa, Train
from .paths import (
    SWA_LIVE,
    SWA_MODEL,
    SWA_RESOURCES,
    SWA_RESUME,
    TRAIN_DATA,
    TRAIN_MODEL,
    VAL_DATA,
)


def averaged_model(model: nn.Module, cfg: Swa) -> AveragedModel:
    """swa: equal weights for every average taken (use_buffers=False: update_bn recomputes
    BatchNorm statistics afterwards); ema: torch's EMA over weights and buffers."""
    if cfg.strategy == "ema":
        return AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    return AveragedModel(model)


class Averaging:
    """What a resumed run needs beside the model and optimizer: SWALR's state and the
    average's (its weights and how many it has taken)."""

    def __init__(self, scheduler: SWALR, averaged: AveragedModel) -> None:
        self.scheduler, self.averaged = scheduler, averaged

    def state_dict(self) -> dict[str, Any]:
        # SWALR keeps its annealing function among its state; the constructor sets it again
        scheduler = {k: v for k, v in self.scheduler.state_dict().items() if not callable(v)}
        return {"scheduler": scheduler, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.averaged.load_state_dict(state["averaged"])


def average_weights(
    model: nn.Module,
    train_data: Images,
    val_data: Images,
    cfg: Swa,
    train_cfg: Train,
    start_lr: float,
    log: EpochLog,
    key: RunKey | None = None,
) -> AveragedModel:
    """Continue training `model` for cfg.epochs, averaging its weights after every epoch (swa)
    or every step (ema), then recompute BatchNorm statistics for the averaged weights. With a
    `key`, the state is saved after every epoch and a killed run's state under the same key is
    resumed from; without one (in-process use), no state is read or written."""
    device = val_data.labels.device
    loss_fn = build_loss(train_cfg)
    optimizer = build_optimizer(model.parameters(), train_cfg, lr=start_lr)
    swa_model = averaged_model(model, cfg)
    swa_scheduler = SWALR(
        optimizer,
        swa_lr=cfg.lr,
        anneal_epochs=cfg.anneal_epochs,
        anneal_strategy=cfg.anneal_strategy,
    )
    progress = Averaging(swa_scheduler, swa_model)
    # rank 0's state for every rank, as in train
    saved = read_training_state(SWA_RESUME) if is_main() and key else None
    state = broadcast_bytes(saved, device)
    resumed = load_training_state(state, key, model, optimizer, progress, str(SWA_RESUME))
    require_same(resumed.epoch if resumed else 0, "the epoch swa resumes after", device)
    if resumed is not None:
        if is_main():
            print(f"swa: resuming after epoch {resumed.epoch} from {SWA_RESUME}")
        log.replay(resumed.history)

    def save_state(epoch: int) -> None:
        state = TrainingState(epoch, log.history)
        save_training_state(SWA_RESUME, key, state, model, optimizer, progress)

    def average() -> None:
        swa_model.update_parameters(model)

    def average_and_anneal() -> None:
        if cfg.strategy == "swa":
            average()
        swa_scheduler.step()

    fit(
        wrap(model, device), train_data, val_data, loss_fn, optimizer, log,
        epochs=cfg.epochs, batch_size=train_cfg.batch_size, seed=cfg.seed, stage="swa",
        lr_key="swa.lr", augmentation=train_cfg.augment, bf16=train_cfg.bf16,
        after_step=average if cfg.strategy == "ema" else None,
        after_epoch=average_and_anneal, scored=swa_model.module,
        first_epoch=(resumed.epoch if resumed else 0) + 1,
        logged=save_state if is_main() and key else None,
    )  # fmt: skip
    update_bn(batches(train_data.images, train_cfg.batch_size), swa_model, device=device)
    return swa_model


def main() -> None:
    run_data_parallel(__spec__.name, finalize)  # stages.swa, or as installed


def finalize(params: Params, device: torch.device) -> None:
    cfg, train_cfg = params.swa, params.train
    seed_everything(cfg.seed, device)
    model, info = load_model(TRAIN_MODEL, device)
    final_lr = info.get("final_lr")
    if not isinstance(final_lr, float | int):
        raise StageError(
            f"{TRAIN_MODEL} has no final_lr in its metadata: it was not written by the train "
            "stage, whose last learning rate SWA starts from. Rebuild it (dvc repro train)"
        )
    train_data, val_data = load_split(TRAIN_DATA, device), load_split(VAL_DATA, device)

    if is_main():
        print(f"swa ({cfg.strategy}): {cfg.epochs} epoch{'s' * (cfg.epochs != 1)} from {TRAIN_MODEL}, "
              f"lr {final_lr:.2e} -> {cfg.lr:.2e}")  # fmt: skip
    # what a saved state must match: the params swa reads, the process count, inputs, code
    key = run_key(
        params, SWA_RESUME, [world_size(), *in_effect()], (TRAIN_DATA, VAL_DATA, TRAIN_MODEL)
    )
    with epoch_log(SWA_LIVE, SWA_RESOURCES, "swa", cfg.epochs) as log:
        swa_model = average_weights(model, train_data, val_data, cfg, train_cfg, final_lr, log, key)
    if not is_main():
        return
    if cfg.epochs == 0:
        copy_file(TRAIN_MODEL, SWA_MODEL)
    else:
        info = {"final_lr": cfg.lr, "swa_epochs": cfg.epochs, "swa_strategy": cfg.strategy}
        save_model(swa_model.module, SWA_MODEL, info)
    remove_training_state(SWA_RESUME)
    print(f"wrote {SWA_MODEL}")


if __name__ == "__main__":
    run_stage(main)
