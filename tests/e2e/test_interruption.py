"""A train or swa stage killed with SIGKILL at a random point (train under a per-batch schedule,
and under ReduceLROnPlateau with early stopping that keeps the best epoch; swa with equal
averages, and with EMA and BatchNorm): nothing half-written appears under an output's name,
`dvc status` reports the stage as changed, and the rerun resumes from the last epoch's state
and ends with the same bytes as a run that was never interrupted (so the schedule, the average
and the stopping decision, too, continue where they stopped). tests/test_checkpoints.py
resumes every optimizer and scheduler, and a warm-up, in-process."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stages.paths import TRAIN_MODEL, TRAIN_RESUME

from .conftest import Project
from .interruption import (
    EPOCHS,
    assert_killed_run_resumes,
    interrupted_project,
    kill_mid_training,
)

pytestmark = pytest.mark.e2e

# each changes the lr after the first epochs, where a kill lands
CASES = {
    "train: onecycle": {"train": {"scheduler": "onecycle"}},
    "train: plateau + early stopping, keep best": {"train": {
        "scheduler": "plateau", "schedulers": {"plateau": {"patience": 0}}, "keep": "best",
        "early_stopping": {"metric": "val/acc", "mode": "max", "patience": 4, "min_delta": 0.0},
    }},
}  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Project:
    return interrupted_project(tmp_path_factory)  # raw_dir: fails at once without the data


@pytest.mark.parametrize("case", list(CASES))
def test_killed_training_resumes_to_the_uninterrupted_result(project: Project, case: str) -> None:
    assert_killed_run_resumes(project, case, CASES[case])


def test_what_a_reverted_run_left_is_removed_before_anything_runs(project: Project) -> None:
    """A run killed, then its params reverted to what dvc.lock records: train never runs again
    to replace its resume state, so the validate stage removes it, and staging leftovers."""
    project.run("git", "checkout", "-q", "params.yaml")
    project.set_params({"train": {"epochs": EPOCHS}})
    project.run("dvc", "repro", "train")
    recorded = project.read("params.yaml")
    project.set_params({"train": {"lr": 0.003}})
    kill_mid_training(project, "train", random.Random("reverted"))
    # a change to what train does not read keeps the state train would resume
    project.set_params({"evaluate": {"misclassified_grid": 2}})
    kept = project.run("dvc", "repro", "validate").stdout
    assert (project.path / TRAIN_RESUME).is_file() and f"removed {TRAIN_RESUME}" not in kept, kept
    (project.path / "params.yaml").write_text(recorded)
    leftover = project.path / TRAIN_MODEL.with_name(f".{TRAIN_MODEL.name}.0123abcd.partial")
    leftover.write_bytes(b"half a model")

    rerun = project.run("dvc", "repro", "train").stdout
    assert f"validate: removed {TRAIN_RESUME}, saved by a run of other params" in rerun, rerun
    assert f"validate: removed {leftover.relative_to(project.path)}" in rerun
    assert not (project.path / TRAIN_RESUME.parent).exists() and not leftover.exists()
    assert "Running stage 'train'" not in rerun  # its outputs restored from the cache
    assert (project.path / TRAIN_MODEL).is_file()
