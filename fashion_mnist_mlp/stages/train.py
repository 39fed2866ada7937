"""Stage 3: train the MLP on the training split, validating every epoch.

Logs train/validation loss and accuracy and the learning rate per epoch with dvclive, so
`dvc plots show` draws the overfitting picture, and writes the weights as safetensors.

After every epoch the full training state goes to models/resume/; a run that was killed resumes
from it when params, data and code are unchanged, and ends with the bytes an uninterrupted run
would have written. The state file is removed once the model is written.

With `train.nproc` > 1 the stage runs itself as that many DistributedDataParallel processes
(torchrun); `torchrun --nproc-per-node=N -m fashion_mnist_mlp.stages.train` works too (fashion_mnist_mlp/training/distributed.py).
"""

from __future__ import annotations

import torch

from fashion_mnist_mlp.cli import run_stage
from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import averaged_copy, build_optimizer, load_average
from fashion_mnist_mlp.config.params import Params, Train
from fashion_mnist_mlp.config.paths import (
    SPLIT_MANIFEST,
    TRAIN_DATA,
    TRAIN_LIVE,
    TRAIN_MODEL,
    TRAIN_RESOURCES,
    TRAIN_RESUME,
    VAL_DATA,
)
from fashion_mnist_mlp.config.schedulers import Schedule, build_schedule
from fashion_mnist_mlp.tools.trials import epoch_reporter
from fashion_mnist_mlp.training.checkpoints import (
    RunKey,
    TrainingState,
    remove_training_state,
    run_key,
    save_model,
    save_training_state,
)
from fashion_mnist_mlp.training.data import load_split, read_pixel_statistics
from fashion_mnist_mlp.training.distributed import (
    broadcast_bytes,
    is_main,
    run_data_parallel,
    world_size,
    wrap,
)
from fashion_mnist_mlp.training.early_stopping import Watcher
from fashion_mnist_mlp.training.engine import (
    EpochLog,
    current_lr,
    epoch_log,
    fit,
    require_same_run,
    resume,
    seed_everything,
    steps_per_epoch,
)
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.numerics import in_effect
from fashion_mnist_mlp.training.revisions import recorded_init
from fashion_mnist_mlp.training.versions import warm_start


def main() -> None:
    run_data_parallel(__spec__.name, train)  # fashion_mnist_mlp.stages.train, or as installed


def train(params: Params, device: torch.device) -> None:
    cfg = params.train
    seed_everything(cfg.seed, device)
    train_data, val_data = load_split(TRAIN_DATA, device), load_split(VAL_DATA, device)

    config = MLPConfig.from_params(params.model, *read_pixel_statistics(SPLIT_MANIFEST))
    model = MLP(config).to(device)
    init_commit = resolve_init(cfg, device)
    optimizer = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    schedule = build_schedule(optimizer, cfg, steps_per_epoch(len(train_data), cfg.batch_size))
    watcher = Watcher(cfg.early_stopping) if cfg.early_stopping is not None else None
    report = epoch_reporter() if is_main() else None  # to the search running this trial

    key = train_key(params, init_commit)
    require_same_run(key, device)
    resumed = resume(TRAIN_RESUME, key, model, optimizer, schedule, device)
    kept = resumed.kept if resumed else None
    done = resumed.epoch if resumed else 0
    # the tagged model is a candidate for the best epoch; a random initialization is not
    watches_epoch_0 = cfg.init is not None
    if watcher is not None and resumed is not None:
        for epoch, metrics in enumerate(resumed.history):
            if epoch > 0 or watches_epoch_0:
                watcher.improved(epoch, metrics)
        if watcher.should_stop:  # the killed run had stopped early: train no further
            done = cfg.epochs
    if init_commit is not None and resumed is None and is_main():
        # DDP copies rank 0's weights to every process when it wraps the model
        warm_start(model, init_commit, cfg.init)

    if is_main():
        announce(cfg, len(train_data), device)
        if init_commit is not None and resumed is None:
            print(f"train: starting from the exported model of {cfg.init} ({init_commit[:12]})")
    with epoch_log(TRAIN_LIVE, TRAIN_RESOURCES, "train", cfg.epochs) as log:
        # what is validated, ranked and written: the model, or ASGD's average of its weights
        averaged = averaged_copy(model, optimizer)
        scored = averaged if averaged is not None else model

        def average() -> None:
            if averaged is not None:
                load_average(averaged, model, optimizer)

        wrapped = wrap(model, device)
        average()  # after DDP's wrap, which gives every rank rank 0's (warm-started) weights

        def last_lr() -> float:
            """The lr the last batch used (the optimizer's may be one step ahead)."""
            return schedule.trace[-1] if schedule.trace else current_lr(optimizer)

        def validated(epoch: int, metrics: dict[str, float]) -> bool:
            nonlocal kept
            if report is not None:
                report(epoch, metrics["val/acc"])
            if epoch > 0:
                schedule.after_epoch(metrics)
            if watcher is None or (epoch == 0 and not watches_epoch_0):
                return False
            if watcher.improved(epoch, metrics) and cfg.keep == "best":
                kept = {"weights": clone_weights(scored), "lr": last_lr()}
            return watcher.should_stop

        def save_state(epoch: int) -> None:
            state = TrainingState(epoch, log.history, kept)
            save_training_state(TRAIN_RESUME, key, state, model, optimizer, schedule)

        if resumed is not None:
            if is_main():
                print(f"train: resuming after epoch {resumed.epoch} from {TRAIN_RESUME}")
            log.replay(resumed.history)
        last = fit(
            wrapped, train_data, val_data, build_loss(cfg), optimizer, log,
            epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, stage="train",
            lr_key=f"train.lr, or train.optimizers.{cfg.optimizer}.lr", augmentation=cfg.augment,
            bf16=cfg.bf16, after_step=schedule.after_batch, first_epoch=done + 1,
            validated=validated, logged=save_state if is_main() else None,
            after_epoch=average, scored=scored,
        )  # fmt: skip
        record_the_run(log, schedule, watcher, min(last, len(log.history) - 1))
        if init_commit is not None:
            log.summarize(init_commit=init_commit)
        final_lr = last_lr()
    if not is_main():
        return
    if kept is not None:
        scored.load_state_dict(kept["weights"])
        final_lr = kept["lr"]
    started = {"init_commit": init_commit} if init_commit else {}
    save_model(scored, TRAIN_MODEL, {"final_lr": final_lr, **started})
    remove_training_state(TRAIN_RESUME)
    print(f"wrote {TRAIN_MODEL}" + (f" (epoch {watcher.best_epoch}, the best)" if kept else ""))


def resolve_init(cfg: Train, device: torch.device) -> str | None:
    """The commit train.init names, as validate recorded it in models/init.json, this stage's
    dep (a moved tag changes that file, and so reruns train); read by rank 0 (the others may
    have no workspace)."""
    if cfg.init is None:
        return None
    commit = recorded_init(cfg.init).encode() if is_main() else None
    return broadcast_bytes(commit, device).decode()


def announce(cfg: Train, images: int, device: torch.device) -> None:
    processes = f" in {world_size()} processes" if world_size() > 1 else ""
    warmup = f" after {cfg.warmup_epochs} warm-up epochs" if cfg.warmup_epochs else ""
    print(f"train: {images} images, {cfg.epochs} epochs on {device}{processes}, "
          f"{cfg.optimizer} (lr {cfg.learning_rate:g}), {cfg.loss}, {cfg.scheduler}{warmup}")  # fmt: skip
    for note in cfg.unused_params():
        print(f"train: note: {note}")


def clone_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def record_the_run(log: EpochLog, schedule: Schedule, watcher: Watcher | None, last: int) -> None:
    """Into metrics/train: the epoch training stopped at and the best one (metrics.json, and a
    table the loss plot draws as markers), and the lr of every batch."""
    log.summarize(stopped_epoch=last)
    markers = [{"step": last, "loss": log.history[last]["val/loss"], "event": "stopped"}]
    if watcher is not None:
        log.summarize(best_epoch=watcher.best_epoch)
        best = watcher.best_epoch
        markers.insert(0, {"step": best, "loss": log.history[best]["val/loss"], "event": "best"})
    log.write_table("stop.csv", markers)
    per_batch = len(schedule.trace) / max(1, last)
    log.write_table(
        "lr_per_batch.csv",
        [{"epoch": round(i / per_batch, 4), "lr": lr} for i, lr in enumerate(schedule.trace)],
    )


def train_key(params: Params, init_commit: str | None = None) -> RunKey:
    """The params train reads, the commit train.init resolved to (a tag can be moved), the
    process count, its data and code."""
    settings = [init_commit, world_size(), *in_effect()]
    return run_key(params, TRAIN_RESUME, settings, (TRAIN_DATA, VAL_DATA, SPLIT_MANIFEST))


if __name__ == "__main__":
    run_stage(main)
