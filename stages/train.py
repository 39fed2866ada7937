"""Stage 3: train the MLP on the training split, validating every epoch.

Logs train/validation loss and accuracy and the learning rate per epoch with dvclive, so
`dvc plots show` draws the overfitting picture, and writes the weights as safetensors.

After every epoch the full training state goes to models/resume/; a run that was killed resumes
from it when params, data and code are unchanged, and ends with the bytes an uninterrupted run
would have written. The state file is removed once the model is written.

With `train.nproc` > 1 the stage runs itself as that many DistributedDataParallel processes
(torchrun); `torchrun --nproc-per-node=N -m stages.train` works too (stages/distributed.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

from stages.checkpoints import (
    TrainingState,
    load_training_state,
    read_training_state,
    save_model,
    save_training_state,
)
from stages.cli import run_stage
from stages.data import load_split, read_pixel_statistics
from stages.distributed import (
    broadcast_bytes,
    is_main,
    require_same,
    run_data_parallel,
    world_size,
    wrap,
)
from stages.engine import epoch_log, fit, seed_everything, steps_per_epoch
from stages.files import sha256_file
from stages.model import MLP, MLPConfig
from stages.optim import build_loss, build_optimizer, build_scheduler, current_lr, stepper
from stages.params import Params
from stages.paths import (
    SPLIT_MANIFEST,
    TRAIN_DATA,
    TRAIN_LIVE,
    TRAIN_MODEL,
    TRAIN_RESOURCES,
    TRAIN_RESUME,
    VAL_DATA,
)


def main() -> None:
    run_data_parallel("stages.train", train)


def train(params: Params, device: torch.device) -> None:
    cfg = params.train
    seed_everything(cfg.seed, device)
    train_data, val_data = load_split(TRAIN_DATA, device), load_split(VAL_DATA, device)

    config = MLPConfig.from_params(params.model, *read_pixel_statistics(SPLIT_MANIFEST))
    model = MLP(config).to(device)
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    steps = steps_per_epoch(len(train_data), cfg.batch_size)
    scheduler, per_batch = build_scheduler(optimizer, cfg, steps)
    step = stepper(scheduler, cfg.epochs * steps if per_batch else cfg.epochs)

    # Rank 0's state, whichever machine the other ranks are on: every rank resumes after the
    # same epoch, or all stop (a rank whose params, data or code differ finds no match)
    fingerprint = run_fingerprint(params)
    state = broadcast_bytes(read_training_state(TRAIN_RESUME) if is_main() else None, device)
    resumed = load_training_state(state, fingerprint, model, optimizer, scheduler)
    require_same(int(fingerprint[:15], 16), "params, data and code (their fingerprint)", device)
    require_same(resumed.epoch if resumed else 0, "the epoch training resumes after", device)

    if is_main():
        processes = f" in {world_size()} processes" if world_size() > 1 else ""
        print(f"train: {len(train_data)} images, {cfg.epochs} epochs on {device}{processes}, "
              f"{cfg.optimizer} (lr {cfg.learning_rate:g}), {cfg.scheduler}")  # fmt: skip
        for note in cfg.unused_params():
            print(f"train: note: {note}")
    with epoch_log(TRAIN_LIVE, TRAIN_RESOURCES, "train", cfg.epochs) as log:

        def save_state(epoch: int) -> None:
            state = TrainingState(epoch, log.history)
            save_training_state(TRAIN_RESUME, fingerprint, state, model, optimizer, scheduler)

        if resumed is not None:
            if is_main():
                print(f"train: resuming after epoch {resumed.epoch} from {TRAIN_RESUME}")
            log.replay(resumed.history)
        fit(
            wrap(model, device), train_data, val_data, loss_fn, optimizer, log,
            epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, stage="train",
            lr_key=f"train.lr, or train.optimizers.{cfg.optimizer}.lr", augmentation=cfg.augment,
            bf16=cfg.bf16,
            after_step=step if per_batch else None, after_epoch=None if per_batch else step,
            first_epoch=resumed.epoch + 1 if resumed else 1,
            logged=save_state if is_main() else None,
        )  # fmt: skip
    if not is_main():
        return
    save_model(model, TRAIN_MODEL, {"final_lr": current_lr(optimizer)})
    TRAIN_RESUME.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # kept if an interrupted write left a staging file in it
        TRAIN_RESUME.parent.rmdir()
    print(f"wrote {TRAIN_MODEL}")


def run_fingerprint(params: Params) -> str:
    """What a saved training state must match: the params train reads, the process count, its
    data, all stage code."""
    digest = hashlib.sha256()
    config = [params.model.model_dump(), params.train.model_dump(), world_size()]
    digest.update(json.dumps(config).encode())
    for path in (TRAIN_DATA, VAL_DATA, SPLIT_MANIFEST, *sorted(Path(__file__).parent.glob("*.py"))):
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


if __name__ == "__main__":
    run_stage(main)
