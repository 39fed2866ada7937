"""The per-epoch log of the train and swa stages: metrics to dvclive (for `dvc plots`), a
progress line or bar to the user, a copy of the latest summary where `dvc exp show` finds it while
the stage runs, and the run's time and peak memory beside the outputs.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from fashion_mnist_mlp.training.distributed import is_main, world_size
from fashion_mnist_mlp.training.files import atomic_dir, copy_file, write_csv, write_json

if TYPE_CHECKING:
    from fashion_mnist_mlp.training.engine import Stats


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
    compute the same numbers (fashion_mnist_mlp/training/distributed.py) and get a log that
    keeps them to itself."""
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
