"""Stage 4: SWA-finalize the trained model (stochastic weight averaging).

Training continues from the trained weights for `swa.epochs`, with SWALR annealing the learning
rate from where training ended to `swa.lr`; after each epoch the weights join a running average
(AveragedModel). `update_bn` then recomputes BatchNorm statistics for the averaged weights (a
no-op for this MLP, kept so a model with BatchNorm stays correct). With `swa.epochs: 0` the
trained model passes through unchanged, byte for byte. `train.nproc` > 1 runs it as DDP
processes, as for train.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

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


def average_weights(
    model: nn.Module,
    train_data: Images,
    val_data: Images,
    cfg: Swa,
    train_cfg: Train,
    start_lr: float,
    log: EpochLog,
) -> AveragedModel:
    """Continue training `model` for cfg.epochs, averaging its weights after every epoch."""
    loss_fn = build_loss(train_cfg)
    optimizer = build_optimizer(model.parameters(), train_cfg, lr=start_lr)
    swa_model = AveragedModel(model)
    swa_scheduler = SWALR(
        optimizer,
        swa_lr=cfg.lr,
        anneal_epochs=cfg.anneal_epochs,
        anneal_strategy=cfg.anneal_strategy,
    )

    def average_and_anneal() -> None:
        swa_model.update_parameters(model)
        swa_scheduler.step()

    fit(
        wrap(model, val_data.labels.device), train_data, val_data, loss_fn, optimizer, log,
        epochs=cfg.epochs, batch_size=train_cfg.batch_size, seed=cfg.seed, stage="swa",
        lr_key="swa.lr", augmentation=train_cfg.augment, bf16=train_cfg.bf16,
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
        print(f"swa: {cfg.epochs} epochs from {TRAIN_MODEL}, "
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
        save_model(swa_model.module, SWA_MODEL, {"final_lr": cfg.lr, "swa_epochs": cfg.epochs})
    print(f"wrote {SWA_MODEL}")


if __name__ == "__main__":
    run_stage(main)
