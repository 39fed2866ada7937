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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fashion_mnist_mlp.cli import run_stage
from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import averaged_copy, build_optimizer, load_average
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.config.paths import (
    SPLIT_MANIFEST,
    TRAIN_DATA,
    TRAIN_LIVE,
    TRAIN_MODEL,
    TRAIN_RESOURCES,
    TRAIN_RESUME,
    VAL_DATA,
)
from fashion_mnist_mlp.config.train import Train
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
from fashion_mnist_mlp.training.engine import current_lr, seed_everything, steps_per_epoch
from fashion_mnist_mlp.training.epoch_log import EpochLog, epoch_log
from fashion_mnist_mlp.training.loop import Loop, Run, fit, require_same_run, resume
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.numerics import in_effect
from fashion_mnist_mlp.training.revisions import recorded_init
from fashion_mnist_mlp.training.schedule import Schedule, build_schedule
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
    report = epoch_reporter() if is_main() else None  # to the search running this trial

    key = train_key(params, init_commit)
    require_same_run(key, device)
    resumed = resume(TRAIN_RESUME, key, model, optimizer, schedule, device)
    if init_commit is not None and resumed is None and is_main():
        # DDP copies rank 0's weights to every process when it wraps the model
        warm_start(model, init_commit, cfg.init)

    if is_main():
        announce(cfg, len(train_data), device)
        if init_commit is not None and resumed is None:
            print(f"train: starting from the exported model of {cfg.init} ({init_commit[:12]})")
    with epoch_log(TRAIN_LIVE, TRAIN_RESOURCES, "train", cfg.epochs) as log:
        run = TrainingRun(cfg, key, model, optimizer, schedule, log, report)
        wrapped = wrap(model, device)
        run.load_average()  # after DDP's wrap: every rank has rank 0's (warm-started) weights
        if resumed is not None:
            run.resume_from(resumed, TRAIN_RESUME)
        last = fit(wrapped, (train_data, val_data), training_loop(cfg), run)
        run.record(last)
        if init_commit is not None:
            log.summarize(init_commit=init_commit)
    if not is_main():
        return
    written, final_lr = run.result()
    started = {"init_commit": init_commit} if init_commit else {}
    save_model(written, TRAIN_MODEL, {"final_lr": final_lr, **started})
    remove_training_state(TRAIN_RESUME)
    best = f" (epoch {run.watcher.best_epoch}, the best)" if run.kept and run.watcher else ""
    print(f"wrote {TRAIN_MODEL}{best}")


def training_loop(cfg: Train) -> Loop:
    return Loop(
        build_loss(cfg), cfg.epochs, cfg.batch_size, cfg.seed, stage="train",
        lr_key=f"train.lr, or train.optimizers.{cfg.optimizer}.lr", augmentation=cfg.augment,
        bf16=cfg.bf16,
    )  # fmt: skip


class TrainingRun(Run):
    """train's side of fit: the lr schedule's steps, ASGD's average of the weights, early
    stopping and the best epoch's weights it keeps, the search's reports, and the state saved
    after every epoch to resume from."""

    def __init__(
        self,
        cfg: Train,
        key: RunKey,
        model: MLP,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        log: EpochLog,
        report: Callable[[int, float], None] | None,
    ) -> None:
        # what is validated, ranked and written: the model, or ASGD's average of its weights
        self.averaged = averaged_copy(model, optimizer)
        super().__init__(optimizer, log, self.averaged if self.averaged is not None else model)
        self.cfg, self.key, self.model, self.schedule, self.report = (
            cfg, key, model, schedule, report
        )  # fmt: skip
        self.watcher = Watcher(cfg.early_stopping) if cfg.early_stopping is not None else None
        # the tagged model is a candidate for the best epoch; a random initialization is not
        self.watches_epoch_0 = cfg.init is not None
        self.kept: dict[str, Any] | None = None
        """The best epoch's weights and lr, with train.keep: best."""

    def resume_from(self, state: TrainingState, path: Path) -> None:
        super().resume_from(state, path)
        self.kept = state.kept
        if self.watcher is None:
            return
        for epoch, metrics in enumerate(state.history):
            if epoch > 0 or self.watches_epoch_0:
                self.watcher.improved(epoch, metrics)
        if self.watcher.should_stop:  # the killed run had stopped early: train no further
            self.first_epoch = self.cfg.epochs + 1

    def load_average(self) -> None:
        if self.averaged is not None:
            load_average(self.averaged, self.model, self.optimizer)

    def last_lr(self) -> float:
        """The lr the last batch used (the optimizer's may be one step ahead)."""
        return self.schedule.trace[-1] if self.schedule.trace else current_lr(self.optimizer)

    def after_step(self) -> None:
        self.schedule.after_batch()

    def after_epoch(self) -> None:
        self.load_average()

    def validated(self, epoch: int, metrics: dict[str, float]) -> bool:
        if self.report is not None:
            self.report(epoch, metrics["val/acc"])
        if epoch > 0:
            self.schedule.after_epoch(metrics)
        if self.watcher is None or (epoch == 0 and not self.watches_epoch_0):
            return False
        if self.watcher.improved(epoch, metrics) and self.cfg.keep == "best":
            self.kept = {"weights": clone_weights(self.scored), "lr": self.last_lr()}
        return self.watcher.should_stop

    def logged(self, epoch: int) -> None:
        if is_main():
            state = TrainingState(epoch, self.log.history, self.kept)
            save_training_state(TRAIN_RESUME, self.key, state, self.model, self.optimizer,
                                self.schedule)  # fmt: skip

    def record(self, last: int) -> None:
        """Into metrics/train: the epoch training stopped at and the best one (metrics.json,
        and a table the loss plot draws as markers), and the lr of every batch."""
        history, watcher = self.log.history, self.watcher
        last = min(last, len(history) - 1)
        self.log.summarize(stopped_epoch=last)
        markers = [{"step": last, "loss": history[last]["val/loss"], "event": "stopped"}]
        if watcher is not None:
            self.log.summarize(best_epoch=watcher.best_epoch)
            best = watcher.best_epoch
            markers.insert(0, {"step": best, "loss": history[best]["val/loss"], "event": "best"})
        self.log.write_table("stop.csv", markers)
        trace = self.schedule.trace
        per_batch = len(trace) / max(1, last)
        self.log.write_table(
            "lr_per_batch.csv",
            [{"epoch": round(i / per_batch, 4), "lr": lr} for i, lr in enumerate(trace)],
        )

    def result(self) -> tuple[torch.nn.Module, float]:
        """The model to write and the lr its last batch used: the best epoch's, when kept."""
        if self.kept is None:
            return self.scored, self.last_lr()
        self.scored.load_state_dict(self.kept["weights"])
        return self.scored, self.kept["lr"]


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


def train_key(params: Params, init_commit: str | None = None) -> RunKey:
    """The params train reads, the commit train.init resolved to (a tag can be moved), the
    process count, its data and code."""
    settings = [init_commit, world_size(), *in_effect()]
    return run_key(params, TRAIN_RESUME, settings, (TRAIN_DATA, VAL_DATA, SPLIT_MANIFEST))


if __name__ == "__main__":
    run_stage(main)
