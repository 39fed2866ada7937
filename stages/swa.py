"""Stage 4: SWA-finalize the trained model (stochastic weight averaging).

Training continues from the trained weights for `swa.epochs`, with SWALR annealing the learning
rate from where training ended to `swa.lr`. `swa.strategy: swa` averages the weights after each
epoch with equal shares (AveragedModel); `ema` keeps an exponential moving average of weights
and buffers, updated after every step (`swa.ema_decay`). `update_bn` then recomputes BatchNorm
statistics for the averaged weights over the training data (with `model.batch_norm`; a no-op
without). With `swa.epochs: 0` the trained model passes through unchanged, byte for byte.
`train.nproc` > 1 runs it as DDP processes, as for train.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from stages.checkpoints import load_model, save_model
from stages.cli import run_stage
from stages.data import Images, load_split
from stages.distributed import is_main, run_data_parallel, wrap
from stages.engine import EpochLog, batches, epoch_log, fit, seed_everything
from stages.files import copy_file
from stages.losses import build_loss
from stages.optimizers import build_optimizer
from stages.params import Params, Swa, Train
from stages.paths import SWA_LIVE, SWA_MODEL, SWA_RESOURCES, TRAIN_DATA, TRAIN_MODEL, VAL_DATA


def averaged_model(model: nn.Module, cfg: Swa) -> AveragedModel:
    """swa: equal weights for every average taken (use_buffers=False: update_bn recomputes
    BatchNorm statistics afterwards); ema: torch's EMA over weights and buffers."""
    if cfg.strategy == "ema":
        return AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    return AveragedModel(model)


def average_weights(
    model: nn.Module,
    train_data: Images,
    val_data: Images,
    cfg: Swa,
    train_cfg: Train,
    start_lr: float,
    log: EpochLog,
) -> AveragedModel:
    """Continue training `model` for cfg.epochs, averaging its weights after every epoch (swa)
    or every step (ema), then recompute BatchNorm statistics for the averaged weights."""
    loss_fn = build_loss(train_cfg)
    optimizer = build_optimizer(model.parameters(), train_cfg, lr=start_lr)
    swa_model = averaged_model(model, cfg)
    swa_scheduler = SWALR(
        optimizer,
        swa_lr=cfg.lr,
        anneal_epochs=cfg.anneal_epochs,
        anneal_strategy=cfg.anneal_strategy,
    )

    def average() -> None:
        swa_model.update_parameters(model)

    def average_and_anneal() -> None:
        if cfg.strategy == "swa":
            average()
        swa_scheduler.step()

    fit(
        wrap(model, val_data.labels.device), train_data, val_data, loss_fn, optimizer, log,
        epochs=cfg.epochs, batch_size=train_cfg.batch_size, seed=cfg.seed, stage="swa",
        lr_key="swa.lr", augmentation=train_cfg.augment, bf16=train_cfg.bf16,
        after_step=average if cfg.strategy == "ema" else None,
        after_epoch=average_and_anneal, scored=swa_model.module,
    )  # fmt: skip
    update_bn(
        batches(train_data.images, train_cfg.batch_size), swa_model, device=val_data.labels.device
    )
    return swa_model


def main() -> None:
    run_data_parallel("stages.swa", finalize)


def finalize(params: Params, device: torch.device) -> None:
    cfg, train_cfg = params.swa, params.train
    seed_everything(cfg.seed, device)
    model, info = load_model(TRAIN_MODEL, device)
    train_data, val_data = load_split(TRAIN_DATA, device), load_split(VAL_DATA, device)

    if is_main():
        print(f"swa ({cfg.strategy}): {cfg.epochs} epoch{'s' * (cfg.epochs != 1)} from {TRAIN_MODEL}, "
              f"lr {info['final_lr']:.2e} -> {cfg.lr:.2e}")  # fmt: skip
    with epoch_log(SWA_LIVE, SWA_RESOURCES, "swa", cfg.epochs) as log:
        swa_model = average_weights(
            model, train_data, val_data, cfg, train_cfg, info["final_lr"], log
        )
    if not is_main():
        return
    if cfg.epochs == 0:
        copy_file(TRAIN_MODEL, SWA_MODEL)
    else:
        info = {"final_lr": cfg.lr, "swa_epochs": cfg.epochs, "swa_strategy": cfg.strategy}
        save_model(swa_model.module, SWA_MODEL, info)
    print(f"wrote {SWA_MODEL}")


if __name__ == "__main__":
    run_stage(main)
