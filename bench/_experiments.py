"""Shared by the benchmarks that run real DVC experiments: a fresh clone of HEAD, named
experiments queued with their -S overrides, one worker (`--jobs 1`, so times compare), and each
experiment's `dvc exp show` data as it finishes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.pipeline import ENV, ROOT

BENCHMARKS_PAGE = ROOT / "docs" / "benchmarks.md"


def write_between_markers(name: str, text: str, page: Path = BENCHMARKS_PAGE) -> None:
    """Put `text` between the page's `<!-- NAME:begin -->` and `<!-- NAME:end -->` lines, where
    the docs quote this benchmark's table."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = page.read_text()
    if begin not in content or end not in content:
        sys.exit(f"{page} has no {begin} ... {end} markers: the table is not written there")
    head, rest = content.split(begin, 1)
    page.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def dvc(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["dvc", *args], cwd=repo, env=ENV, check=True, capture_output=True, text=True
    ).stdout


@contextmanager
def fresh_clone(prefix: str) -> Iterator[Path]:
    """A clone of HEAD with download and split reproduced (shared by every run through the
    run-cache), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        repo = Path(tmp) / "project"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        dvc(repo, "repro", "split")
        yield repo


def finished(repo: Path, names: set[str]) -> dict[str, dict]:
    """The named experiments that have finished: name -> their dvc exp show data."""
    done = {}
    for row in json.loads(dvc(repo, "exp", "show", "--json")):
        for exp in row.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            for rev in exp["revs"]:
                name = rev.get("name") or exp.get("name")
                if name in names and state in (None, "success", "failed"):
                    # a failed run's row holds its baseline's scores, not its own
                    done[name] = {} if state == "failed" else rev.get("data") or {}
    return done


def run_queued(
    repo: Path,
    runs: dict[str, dict[str, object]],
    on_done: Callable[[str, dict], None] = lambda name, data: None,
    options: tuple[str, ...] = (),
) -> dict[str, dict]:
    """Queue each named experiment with its -S overrides (and `dvc exp run` options), run the
    queue with one worker, and return name -> dvc exp show data (`on_done` sees each as it
    finishes)."""
    for name, overrides in runs.items():
        flags = [a for k, v in overrides.items() for a in ("-S", f"{k}={v}")]
        dvc(repo, "exp", "run", "--queue", "-n", name, *options, *flags)
    # the worker it starts inherits its stdout: capturing it would wait for the whole queue
    subprocess.run(
        ["dvc", "queue", "start", "--jobs", "1"], cwd=repo, env=ENV, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    done: dict[str, dict] = {}
    while len(done) < len(runs):
        time.sleep(20)
        for name, data in finished(repo, set(runs) - set(done)).items():
            done[name] = data
            on_done(name, data)
    return done


def metrics_of(data: dict) -> dict[str, dict]:
    """An experiment's metrics files: path -> their content ({} for a failed run)."""
    return {path: m.get("data", {}) for path, m in data.get("metrics", {}).items()}
