"""The training and evaluation loops, shared by the train and swa stages.

The whole split lives in memory as one float tensor (on the GPU when there is one); a batch is
an index into it, so the loop does no per-sample Python work and no DataLoader copying. Under
torchrun each process takes its share of every batch and of the validation set (see
fashion_mnist_mlp/training/distributed.py); the numbers logged are those of the whole batch and set.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import random
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.losses import LossFn
from fashion_mnist_mlp.config.optimizers import needs_closure
from fashion_mnist_mlp.config.params import Augment
from fashion_mnist_mlp.training.checkpoints import (
    RunKey,
    Stateful,
    TrainingState,
    load_training_state,
    read_training_state,
)
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.distributed import (
    all_reduce_sum,
    broadcast_buffers,
    broadcast_bytes,
    is_main,
    rank,
    require_same,
    shard,
    unwrap,
    world_size,
)
from fashion_mnist_mlp.training.files import atomic_dir, copy_file, write_csv, write_json
from fashion_mnist_mlp.training.model import predict_logits


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every RNG a run touches; see PyTorch's notes on randomness for the limits."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        # The CPU kernels used here are deterministic already; on CUDA, indexing's backward
        # and cuBLAS need this. (It costs ~1 s of imports, so CPU runs skip it.)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


class Stream(enum.IntEnum):
    """The independent random streams of a run. Each is the first key of its seed: SeedSequence
    pads keys with trailing zeros, so (seed, epoch) and (seed, epoch, 0) would be one stream."""

    TRAIN_SHUFFLE = 1
    TRAIN_DROPOUT = 2
    SWA_SHUFFLE = 3
    SWA_DROPOUT = 4


STREAMS = {  # the stage's (shuffle and augmentation, dropout) streams
    "train": (Stream.TRAIN_SHUFFLE, Stream.TRAIN_DROPOUT),
    "swa": (Stream.SWA_SHUFFLE, Stream.SWA_DROPOUT),
}


def seed_epoch(seed: int, epoch: int, stage: str = "train") -> torch.Generator:
    """Seed one epoch's randomness from (stage, seed, epoch) alone, so a resumed run needs no
    saved RNG state. Returns the shuffle and augmentation generator, the same in every process;
    the global RNG (dropout) is seeded per process too, so processes draw different masks."""
    shuffle, dropout = STREAMS[stage]
    torch.manual_seed(stream_seed(dropout, seed, epoch, rank()))
    return torch.Generator().manual_seed(stream_seed(shuffle, seed, epoch))


def stream_seed(stream: Stream, *keys: int) -> int:
    return int(np.random.SeedSequence((int(stream), *keys)).generate_state(1)[0])


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def augment(
    x: torch.Tensor, cfg: Augment, generator: torch.Generator, batch_size: int | None = None
) -> torch.Tensor:
    """Random horizontal flips and shifts of up to cfg.max_shift pixels, per image, batched.
    With both off, `x` comes back untouched and `generator` is not drawn from.

    Given `batch_size` (the whole batch, of which `x` is this process's share), draws for the
    whole batch and uses this process's share, so every process's generator stays in step."""
    b, h, w = x.shape
    n = b if batch_size is None else batch_size
    mine = (lambda t: t) if batch_size is None else shard
    if cfg.hflip:
        flip = mine(torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None], x.flip(-1), x)
    if cfg.max_shift == 0:
        return x
    s = cfg.max_shift
    shifts = mine(torch.randint(-s, s + 1, (n, 2), generator=generator) + s)
    dy, dx = shifts.T.to(x.device)
    padded = F.pad(x, (s,) * 4)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    return padded[
        torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]
    ]


@dataclass(frozen=True)
class Stats:
    loss: float
    """Plain cross-entropy, the same measure on every split and in metrics/test.json."""
    accuracy: float
    objective: float | None = None
    """What training minimizes (with label smoothing, say); None for validation."""

    def metrics(self, split: str) -> dict[str, float]:
        """As logged: `{split}/loss`, `{split}/acc` (and `{split}/objective`)."""
        logged = {f"{split}/loss": self.loss, f"{split}/acc": self.accuracy}
        if self.objective is not None:
            logged[f"{split}/objective"] = self.objective
        return logged


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def train_epoch(
    model: nn.Module,
    data: Images,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    *,
    augmentation: Augment | None = None,
    bf16: bool = False,
    after_step: Callable[[], object] | None = None,
) -> Stats:
    """One pass over `data` in a seeded random order; returns the running plain cross-entropy,
    objective and accuracy."""
    model.train()
    device = data.labels.device
    order = torch.randperm(len(data), generator=generator).to(device)
    totals = torch.zeros(3, device=device)  # summed over images: cross-entropy, objective, right
    for start in range(0, len(data), batch_size):
        batch = order[start : start + batch_size]
        idx = shard(batch)
        # index_select gathers a batch twice as fast as x[idx] on CPU
        x, y = data.images.index_select(0, idx), data.labels.index_select(0, idx)
        if augmentation is not None:
            x = augment(x, augmentation, generator, len(batch))
        # DDP averages gradients over processes: weight each share by its size (in one
        # process the weight is exactly 1.0)
        weight = len(y) * world_size() / len(batch)
        logits, loss = step(model, x, y, loss_fn, optimizer, weight, bf16)
        if after_step is not None:
            after_step()
        totals[0] += F.cross_entropy(logits, y, reduction="sum")
        totals[1] += loss * len(y)
        totals[2] += (logits.argmax(1) == y).sum()
    loss_sum, objective_sum, right = (v / len(data) for v in all_reduce_sum(totals).tolist())
    return Stats(loss_sum, right, objective_sum)


def step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    weight: float,
    bf16: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns the logits and loss from before the update."""
    first: list[tuple[torch.Tensor, torch.Tensor]] = []
    closing = needs_closure(optimizer)
    # LBFGS evaluates the closure several times per step: each evaluation must see the same
    # function, so the dropout masks are redrawn from the same RNG state every time, and
    # BatchNorm's running statistics take one update per step, from the first evaluation
    replay_dropout = _rng_replayer(x.device) if closing else None
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)] if closing else []
    momenta = [m.momentum for m in norms]

    def closure() -> torch.Tensor:
        if replay_dropout is not None:
            replay_dropout()
        if first:
            for norm in norms:
                norm.momentum = 0.0  # running = (1 - 0) x running: unchanged
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = loss_fn(logits, y) if len(y) else logits.sum()  # a share can be empty
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        if not first:
            first.append((logits.detach().float(), loss.detach()))
        # every process must see the same loss, or their line searches would part ways
        return all_reduce_sum((loss * weight / world_size()).detach()) if closing else loss

    if closing:
        optimizer.step(closure)
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
    else:
        closure()
        optimizer.step()
    return first[0]


def _rng_replayer(device: torch.device) -> Callable[[], None]:
    """A function that puts the RNGs dropout draws from back to where they are now."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def replay() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)

    return replay


def evaluate(model: nn.Module, data: Images) -> Stats:
    """Plain cross-entropy and accuracy, comparable with the test metrics of the evaluate stage.
    Every process scores its share with rank 0's model, buffers included."""
    broadcast_buffers(model)
    images, labels = shard(data.images), shard(data.labels)
    logits = predict_logits(model, images)
    totals = torch.stack([
        F.cross_entropy(logits, labels, reduction="sum"),
        (logits.argmax(1) == labels).sum().float(),
    ])  # fmt: skip
    loss_sum, right = all_reduce_sum(totals).tolist()
    return Stats(loss_sum / len(data), right / len(data))


def check_finite(stage: str, epoch: int, lr: float, lr_key: str, *stats: Stats) -> None:
    """Stop a run whose loss became inf or nan: nothing after it would be worth writing."""
    values = [v for s in stats for v in (s.loss, s.objective) if v is not None]
    if all(math.isfinite(v) for v in values):
        return
    raise StageError(
        f"{stage}: the loss became {next(v for v in values if not math.isfinite(v))} in epoch "
        f"{epoch} (lr {lr:.3g}): the model diverged and nothing was written. Lower the learning "
        f"rate ({lr_key}) and rerun"
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


def fit(
    model: nn.Module,
    train_data: Images,
    val_data: Images,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    log: EpochLog,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    stage: str,
    lr_key: str,
    augmentation: Augment | None,
    bf16: bool = False,
    after_step: Callable[[], object] | None = None,
    after_epoch: Callable[[], object] | None = None,
    scored: nn.Module | None = None,
    first_epoch: int = 1,
    validated: Callable[[int, dict[str, float]], bool] | None = None,
    logged: Callable[[int], object] | None = None,
) -> int:
    """Train epochs `first_epoch`..`epochs`, logging the validation score of `scored` (default:
    `model`) before the first epoch (epoch 0) and after each one. After each log, in every
    process, `validated(epoch, validation metrics)` may ask to stop (early stopping) by
    returning True; then, for epochs from 1, `logged(epoch)` runs. Returns the last epoch
    trained.

    Each epoch's randomness comes from (`stage`, `seed`, epoch), so starting at `first_epoch`
    continues a run exactly. A non-finite loss stops the run with an error naming `lr_key`."""
    scored = scored or unwrap(model)
    check_batch_norm_batches(unwrap(model), len(train_data), batch_size)
    if first_epoch == 1:
        start = evaluate(scored, val_data)
        log.log(0, current_lr(optimizer), None, start)
        if validated is not None:
            validated(0, start.metrics("val"))
    for epoch in range(first_epoch, epochs + 1):
        lr = current_lr(optimizer)
        stats = train_epoch(
            model, train_data, loss_fn, optimizer, batch_size, seed_epoch(seed, epoch, stage),
            augmentation=augmentation, bf16=bf16, after_step=after_step,
        )  # fmt: skip
        if after_epoch is not None:
            after_epoch()
        val = evaluate(scored, val_data)
        check_finite(stage, epoch, lr, lr_key, stats, val)
        log.log(epoch, lr, stats, val)
        stop = validated is not None and validated(epoch, val.metrics("val"))
        if logged is not None:
            logged(epoch)
        if stop:
            return epoch
    return epochs


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


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class EpochLog:
    """Per-epoch metrics to dvclive (for `dvc plots`) and a progress line or bar to the user."""

    def __init__(self, live, name: str, epochs: int, progress: Path | None = None) -> None:
        """With `live` None, the log records history and prints nothing (DDP ranks but 0).
        `progress`: where a copy of the latest epoch's summary goes while the stage runs."""
        self.live, self.name, self.epochs, self.progress = live, name, epochs, progress
        self.quiet = live is None
        self.bar = tqdm(
            total=epochs, desc=name, unit="epoch", disable=self.quiet or not sys.stderr.isatty()
        )
        self.started = self.last = time.perf_counter()
        self.epoch_seconds: list[float] = []
        self.history: list[dict[str, float]] = []
        """Every step's metrics, so a resumed run can replay what the killed one logged."""

    def replay(self, history: list[dict[str, float]]) -> None:
        for metrics in history:
            self._log_to_live(metrics)
        self.bar.update(max(0, len(history) - 1))

    def _log_to_live(self, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        if self.quiet:
            return
        for key, value in metrics.items():
            self.live.log_metric(key, value)
        self.live.next_step()  # writes the summary, metrics.json, in the staging directory
        if self.progress is not None:
            copy_file(Path(self.live.dir) / "metrics.json", self.progress)

    def log(self, epoch: int, lr: float, train: Stats | None, val: Stats) -> None:
        metrics = {"lr": lr} | val.metrics("val") | (train.metrics("train") if train else {})
        self._log_to_live(metrics)
        if self.quiet:
            return

        now = time.perf_counter()
        if train is not None:
            self.epoch_seconds.append(now - self.last)
        seen = f"train loss {train.loss:.4f} acc {train.accuracy:.4f} | " if train else ""
        line = (
            f"{self.name} epoch {epoch}/{self.epochs}  lr {lr:.2e}  {seen}"
            f"val loss {val.loss:.4f} acc {val.accuracy:.4f}  ({now - self.last:.2f} s)"
        )
        self.last = now
        if self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line)
            self.bar.update()

    def summarize(self, **values: float | str) -> None:
        """Extra keys for the stage's metrics.json (`dvc exp show`, `dvc metrics`)."""
        if not self.quiet:
            self.live.summary.update(values)

    def write_table(self, name: str, rows: list[dict[str, object]]) -> None:
        """A CSV file beside the logged metrics, for a plot that is not one value per epoch."""
        if not self.quiet and rows:
            write_csv(Path(self.live.dir) / name, rows)

    def resources(self) -> dict[str, float]:
        """Wall-clock time and peak memory: they differ run to run, so they are printed and
        written beside the outputs, never versioned (dvc.yaml)."""
        epochs = self.epoch_seconds
        median = statistics.median(epochs) if epochs else 0.0
        return {
            "seconds": round(time.perf_counter() - self.started, 2),
            "epoch_seconds": round(median, 3),
            "processes": world_size(),
            "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),  # of rank 0
        }

    def close(self) -> None:
        self.bar.close()
        if not self.quiet:
            used = self.resources()
            print(
                f"{self.name}: {used['seconds']:.1f} s, {used['epoch_seconds']:.2f} s per epoch "
                f"(median), peak RSS {used['peak_rss_mb']:.0f} MB",
                flush=True,
            )


@contextlib.contextmanager
def epoch_log(live_dir: Path, resources_file: Path, name: str, epochs: int) -> Iterator[EpochLog]:
    """dvclive logging into a staging directory that replaces `live_dir` only on success, then
    the run's time and peak memory to `resources_file`. Only rank 0 logs: the other processes
    compute the same numbers (fashion_mnist_mlp/training/distributed.py) and get a log that keeps them to itself."""
    if not is_main():
        yield EpochLog(None, name, epochs)
        return
    from dvclive import Live  # imports dvc: pay for it only in the stages that log

    # Under DVC, which deleted the out before the run, the latest epoch's summary also stands
    # at its final place while the stage runs, so `dvc exp show` shows a running experiment's
    # progress; the finished log replaces it, a failed run removes it. Run by hand over an
    # earlier output, the stage leaves that output alone until it succeeds.
    progress = live_dir / "metrics.json" if not live_dir.exists() else None
    try:
        with atomic_dir(live_dir) as staging:
            live = Live(str(staging), dvcyaml=False, save_dvc_exp=False, report=None)
            log = EpochLog(live, name, epochs, progress)
            try:
                yield log
            finally:
                log.close()
            live.end()
    except BaseException:
        if progress is not None:
            shutil.rmtree(live_dir, ignore_errors=True)  # only the progress copy was there
        raise
    write_json(resources_file, log.resources())
