"""A train stage killed with SIGKILL at random points: nothing half-written appears under an
output's name, `dvc status` reports the stage as changed, and the rerun resumes from the last
epoch's state and ends with the same bytes as a run that was never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from stages.paths import TRAIN_LIVE, TRAIN_MODEL, TRAIN_RESUME

from .conftest import SMALL, Project, lock_hashes, make_project, merged

pytestmark = pytest.mark.e2e

EPOCHS = 30  # a few seconds of training on the subset, so there is time to kill it mid-run
KILLS = 2  # one killed `dvc repro`, then a killed forced rerun


FORCED = ("--force", "--no-run-cache", "--single-item")


def kill_mid_training(project: Project, rng: random.Random, *flags: str) -> None:
    """Start `dvc repro train` and SIGKILL DVC and the stage together (as the OOM killer or a
    lost machine would) at a random moment after some epoch's state was saved."""
    proc = subprocess.Popen(
        ["dvc", "repro", *flags, "train"],
        cwd=project.path, env=project.env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (project.path / TRAIN_RESUME).exists():
        assert proc.poll() is None, "train finished or failed before any state was saved"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 1.0))
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill: lengthen EPOCHS"


def assert_nothing_half_written(project: Project) -> None:
    # DVC removed the outputs before the run, and the stage writes each under a temporary name
    # first: an output is whole under its name or not there.
    assert not (project.path / TRAIN_MODEL).exists()
    assert not (project.path / TRAIN_LIVE).exists()
    status = project.run("dvc", "status", "train").stdout
    assert "train:" in status, status


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path, raw_dir: Path) -> None:
    project = make_project(tmp_path, merged(SMALL, {"train": {"epochs": EPOCHS}}))
    project.run("dvc", "repro", "split")
    rng = random.Random(0)

    # A first run killed, then `dvc repro` as a user would type it.
    kill_mid_training(project, rng)
    assert_nothing_half_written(project)
    rerun = project.run("dvc", "repro", "train")
    assert "train: resuming after epoch" in rerun.stdout, rerun.stdout
    resumed = lock_hashes(project.read("dvc.lock"))
    assert not (project.path / TRAIN_RESUME).exists()  # removed once the model is written
    assert "up to date" in project.run("dvc", "status", "train").stdout

    # More kills at other points of forced reruns; each resumed run ends with the same bytes.
    for _ in range(KILLS - 1):
        kill_mid_training(project, rng, *FORCED)
        assert_nothing_half_written(project)
        rerun = project.run("dvc", "repro", *FORCED, "train")
        assert "train: resuming after epoch" in rerun.stdout, rerun.stdout
        assert lock_hashes(project.read("dvc.lock")) == resumed

    # And a run never interrupted gives those bytes too.
    straight = project.run("dvc", "repro", *FORCED, "train")
    assert "resuming" not in straight.stdout
    assert lock_hashes(project.read("dvc.lock")) == resumed
