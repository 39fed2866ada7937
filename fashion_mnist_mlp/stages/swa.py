"""Stage 4: SWA-finalize the trained model (stochastic weight averaging).

Training continues from the trained weights for `swa.epochs`, with SWALR annealing the learning
rate from where training ended to `swa.lr`. `swa.strategy: swa` averages the weights after each
epoch with equal shares (AveragedModel); `ema` keeps an exponential moving average of the
weights, updated after every step (`swa.ema_decay`). After every epoch the average's BatchNorm
statistics are recomputed for its weights over the training data (with `model.batch_norm`;
nothing to do without), so each epoch's validation score is that of the model the stage would
write had it stopped there, and the last one that of the model it writes. With `swa.epochs: 0`
the trained model passes through unchanged, byte for byte.
`train.nproc` > 1 runs it as DDP processes, as for train. Like train, it saves its state after
every epoch (models/resume/swa.safetensors): a killed run resumes and ends with the same bytes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn

from fashion_mnist_mlp.cli import StageError, run_stage
from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import build_optimizer
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.config.paths import (
    SWA_LIVE,
    SWA_MODEL,
    SWA_RESOURCES,
    SWA_RESUME,
    TRAIN_DATA,
    TRAIN_MODEL,
    VAL_DATA,
)
from fashion_mnist_mlp.config.sections import Swa
from fashion_mnist_mlp.config.train import Train
from fashion_mnist_mlp.training.checkpoints import (
    RunKey,
    TrainingState,
    load_checkpoint,
    remove_training_state,
    run_key,
    save_model,
    save_training_state,
)
from fashion_mnist_mlp.training.data import Images, load_split
from fashion_mnist_mlp.training.distributed import (
    is_main,
    run_data_parallel,
    world_size,
    wrap,
)
from fashion_mnist_mlp.training.engine import batches, seed_everything
from fashion_mnist_mlp.training.epoch_log import EpochLog, epoch_log
from fashion_mnist_mlp.training.files import copy_file
from fashion_mnist_mlp.training.loop import Loop, Run, fit, require_same_run, resume
from fashion_mnist_mlp.training.numerics import in_effect


def averaged_model(model: nn.Module, cfg: Swa) -> AveragedModel:
    """swa: equal weights for every average taken; ema: torch's EMA. Of the weights only: the
    average's BatchNorm statistics are recomputed for its weights (recompute_batch_norm)."""
    average = get_ema_multi_avg_fn(cfg.ema_decay) if cfg.strategy == "ema" else None
    return AveragedModel(model, multi_avg_fn=average)


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Replace `model`'s BatchNorm running statistics by those of its own weights: the equal
    average over the batches of `images` of each batch's statistics, as torch's update_bn.

    Unlike update_bn, with dropout off. At evaluation dropout is the identity, so a BatchNorm
    after a dropout sees inputs of the same mean but a smaller variance than in training mode
    (the "variance shift" of Li et al. 2019); statistics gathered with dropout off are those of
    the inputs the written model's BatchNorm layers normalize, and draw no random numbers: a
    run resumed after its last epoch recomputes them to the same bits, whatever the global RNG
    holds."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    for batch in batches(images, batch_size):
        model(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
        norm.eval()


class Averaging(Run):
    """swa's side of fit: the average of the weights, taken after every epoch (swa) or every
    step (ema); after every epoch SWALR's step and the average's BatchNorm statistics,
    recomputed over `images`; and with a `key`, the state saved after every epoch. Its own
    state is what a resumed run needs beside the model and optimizer: SWALR's and the
    average's (its weights and how many it has taken)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: Swa,
        images: torch.Tensor,
        batch_size: int,
        log: EpochLog,
        key: RunKey | None,
    ) -> None:
        self.averaged = averaged_model(model, cfg)
        super().__init__(optimizer, log, self.averaged.module)
        self.scheduler = SWALR(
            optimizer,
            swa_lr=cfg.lr,
            anneal_epochs=cfg.anneal_epochs,
            anneal_strategy=cfg.anneal_strategy,
        )
        self.model, self.strategy, self.key = model, cfg.strategy, key
        self.images, self.batch_size = images, batch_size

    def state_dict(self) -> dict[str, Any]:
        # SWALR keeps its annealing function among its state; the constructor sets it again
        scheduler = {k: v for k, v in self.scheduler.state_dict().items() if not callable(v)}
        return {"scheduler": scheduler, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.averaged.load_state_dict(state["averaged"])

    def after_step(self) -> None:
        if self.strategy == "ema":
            self.averaged.update_parameters(self.model)

    def after_epoch(self) -> None:
        if self.strategy == "swa":
            self.averaged.update_parameters(self.model)
        self.scheduler.step()
        # the average as it is scored, saved and written: a forward pass over the training
        # images, a third of an epoch's time (1.4 s beside 3.8 s: full split, portable, 1 thread)
        recompute_batch_norm(self.averaged.module, self.images, self.batch_size)

    def logged(self, epoch: int) -> None:
        if is_main() and self.key is not None:
            state = TrainingState(epoch, self.log.history)
            save_training_state(SWA_RESUME, self.key, state, self.model, self.optimizer, self)


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
    or every step (ema), and after every epoch recomputing the average's BatchNorm statistics
    before it is scored. With a `key`, the state is saved after every epoch and a killed run's
    state under the same key is resumed from; without one (in-process use), no state is read or
    written."""
    device = val_data.labels.device
    loop = Loop(
        build_loss(train_cfg), cfg.epochs, train_cfg.batch_size, cfg.seed, stage="swa",
        lr_key="swa.lr", augmentation=train_cfg.augment, bf16=train_cfg.bf16,
    )  # fmt: skip
    optimizer = build_optimizer(model.parameters(), train_cfg, lr=start_lr)
    run = Averaging(model, optimizer, cfg, train_data.images, train_cfg.batch_size, log, key)
    resumed = resume(SWA_RESUME, key, model, optimizer, run, device) if key else None
    if resumed is not None:
        run.resume_from(resumed, SWA_RESUME)
    fit(wrap(model, device), (train_data, val_data), loop, run)
    return run.averaged


def main() -> None:
    run_data_parallel(__spec__.name, finalize)  # fashion_mnist_mlp.stages.swa, or as installed


def finalize(params: Params, device: torch.device) -> None:
    cfg, train_cfg = params.swa, params.train
    seed_everything(cfg.seed, device)
    model, info = load_checkpoint(TRAIN_MODEL, device)
    final_lr = info.get("final_lr")
    if not isinstance(final_lr, float | int):
        raise StageError(
            f"{TRAIN_MODEL} has no final_lr in its metadata: it was not written by the train "
            "stage, whose last learning rate SWA starts from. Rebuild it (dvc repro train)"
        )
    train_data, val_data = load_split(TRAIN_DATA, device), load_split(VAL_DATA, device)

    # what a saved state must match, and every process: the params swa reads, the process
    # count, inputs, code
    key = run_key(
        params, SWA_RESUME, [world_size(), *in_effect()], (TRAIN_DATA, VAL_DATA, TRAIN_MODEL)
    )
    require_same_run(key, device)
    if is_main():
        print(f"swa ({cfg.strategy}): {cfg.epochs} epoch{'s' * (cfg.epochs != 1)} from {TRAIN_MODEL}, "
              f"lr {final_lr:.2e} -> {cfg.lr:.2e}")  # fmt: skip
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
