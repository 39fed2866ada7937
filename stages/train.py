"""Stage 3: train the MLP on the training split, validating every epoch.

Logs train/validation loss and accuracy and the learning rate per epoch with dvclive, so
`dvc plots show` draws the overfitting picture, and writes the weights as safetensors.
"""

from __future__ import annotations

import torch

from stages.checkpoints import save_model
from stages.cli import run_stage
from stages.data import load_split
from stages.engine import epoch_log, fit, resolve_device, seed_everything, steps_per_epoch
from stages.model import MLP, MLPConfig
from stages.optim import build_loss, build_optimizer, build_scheduler, current_lr
from stages.params import load_params
from stages.paths import TRAIN_DATA, TRAIN_LIVE, TRAIN_MODEL, TRAIN_RESOURCES, VAL_DATA


def main() -> None:
    params = load_params()
    cfg = params.train
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, device)
    train_data, val_data = load_split(TRAIN_DATA, device), load_split(VAL_DATA, device)

    config = MLPConfig.from_params(params.model)
    model = MLP(config).to(device)
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(model.parameters(), cfg, cfg.lr)
    steps = steps_per_epoch(len(train_data), cfg.batch_size)
    scheduler, per_batch = build_scheduler(optimizer, cfg, steps)
    step = scheduler.step if scheduler is not None else None

    print(
        f"train: {len(train_data)} images, {cfg.epochs} epochs on {device}, {cfg.optimizer}, {cfg.scheduler}"
    )
    with epoch_log(TRAIN_LIVE, TRAIN_RESOURCES, "train", cfg.epochs) as log:
        fit(
            model, train_data, val_data, loss_fn, optimizer, log,
            epochs=cfg.epochs, batch_size=cfg.batch_size,
            generator=torch.Generator().manual_seed(cfg.seed), augmentation=cfg.augment,
            bf16=cfg.precision == "bf16",
            after_step=step if per_batch else None, after_epoch=None if per_batch else step,
        )  # fmt: skip
    save_model(model, TRAIN_MODEL, {"final_lr": current_lr(optimizer)})
    print(f"wrote {TRAIN_MODEL}")


if __name__ == "__main__":
    run_stage(main)
