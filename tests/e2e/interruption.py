"""Shared by the interruption tests (test_interruption*.py): kill a training stage under DVC,
check that nothing is half-written, and that the rerun resumes to an uninterrupted run's bytes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from stages.paths import SWA_LIVE, SWA_MODEL, SWA_RESUME, TRAIN_LIVE, TRAIN_MODEL, TRAIN_RESUME

from .conftest import SMALL, Project, lock_hashes, make_project

EPOCHS = 12  # a second or two of training on the subset, so there is time to kill it mid-run
# each changes the lr after the first epochs, where a kill lands
OUTPUTS = {
    "train": (TRAIN_MODEL, TRAIN_LIVE, TRAIN_RESUME),
    "swa": (SWA_MODEL, SWA_LIVE, SWA_RESUME),
}
FORCED = ("--force", "--no-run-cache", "--single-item")


def kill_mid_training(project: Project, stage: str, rng: random.Random) -> None:
    """Start `dvc repro <stage>` and SIGKILL DVC and the stage together (as the OOM killer or
    a lost machine would) at a random moment after some epoch's state was saved."""
    resume = OUTPUTS[stage][2]
    proc = subprocess.Popen(
        ["dvc", "repro", stage],
        cwd=project.path, env=project.env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (project.path / resume).exists():
        assert proc.poll() is None, f"{stage} finished or failed before any state was saved"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.3))
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill: lengthen EPOCHS"


def assert_nothing_half_written(project: Project, stage: str) -> None:
    # DVC removed the outputs before the run, and the stage writes each under a temporary name
    # first: an output is whole under its name or not there.
    model, live, _ = OUTPUTS[stage]
    assert not (project.path / model).exists()
    assert not (project.path / live).exists()
    status = project.run("dvc", "status", stage).stdout
    assert f"{stage}:" in status, status


def interrupted_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = make_project(tmp_path_factory.mktemp("interrupted"), SMALL)
    project.run("dvc", "repro", "split")
    return project


def assert_killed_run_resumes(project: Project, case: str, override: dict) -> None:
    """`case` ("train: ...", "swa: ...") with params `override`: killed, then rerun."""
    stage = case.split(":")[0]
    project.run("git", "checkout", "-q", "params.yaml")
    project.set_params({**override, stage: {"epochs": EPOCHS, **override[stage]}})
    project.run("dvc", "repro", *(["train"] if stage == "swa" else ["split"]))  # its inputs
    # A first run killed, then `dvc repro` as a user would type it.
    kill_mid_training(project, stage, random.Random(case))
    assert_nothing_half_written(project, stage)
    rerun = project.run("dvc", "repro", stage)
    assert f"{stage}: resuming after epoch" in rerun.stdout, rerun.stdout
    resumed = lock_hashes(project.read("dvc.lock"))
    assert not (project.path / OUTPUTS[stage][2]).exists()  # removed once the model is written

    # A run never interrupted gives those bytes too.
    straight = project.run("dvc", "repro", *FORCED, stage)
    assert "resuming" not in straight.stdout
    assert lock_hashes(project.read("dvc.lock")) == resumed
