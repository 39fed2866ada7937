"""A train or swa stage killed with SIGKILL at a random point (train under a per-batch schedule,
and under ReduceLROnPlateau with early stopping that keeps the best epoch; swa with equal
averages, and with EMA and BatchNorm), and killed after its last epoch, as it puts its outputs
in place: nothing half-written appears under an output's name, `dvc status` reports the stage
as changed, and the rerun resumes from the last epoch's state and ends with the same bytes as a
run that was never interrupted (so the schedule, the average, BatchNorm's statistics and the
stopping decision, too, continue where they stopped). tests/test_checkpoints.py resumes every
optimizer and scheduler, and a warm-up, in-process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fashion_mnist_mlp.config.paths import (
    SWA_LIVE,
    SWA_MODEL,
    SWA_RESUME,
    TRAIN_LIVE,
    TRAIN_MODEL,
    TRAIN_RESUME,
)

from .conftest import SMALL, Project, lock_hashes, make_project

pytestmark = pytest.mark.e2e

EPOCHS = 12  # a second or two of training on the subset, so there is time to kill it mid-run
# each changes the lr after the first epochs, where a kill lands
CASES = {
    "train: onecycle": {"train": {"scheduler": "onecycle"}},
    "train: plateau + early stopping, keep best": {"train": {
        "scheduler": "plateau", "schedulers": {"plateau": {"patience": 0}}, "keep": "best",
        "early_stopping": {"metric": "val/acc", "mode": "max", "patience": 4, "min_delta": 0.0},
    }},
    # SWALR anneals over the first epochs; the averages and BatchNorm's statistics carry over
    "swa: equal averages": {"swa": {"strategy": "swa", "anneal_epochs": 4}},
    "swa: ema, batch norm": {"swa": {"strategy": "ema", "anneal_epochs": 4},
                             "model": {"batch_norm": True}},
}  # fmt: skip
OUTPUTS = {
    "train": (TRAIN_MODEL, TRAIN_LIVE, TRAIN_RESUME),
    "swa": (SWA_MODEL, SWA_LIVE, SWA_RESUME),
}
FORCED = ("--force", "--no-run-cache", "--single-item")
KILL_HOOK = Path(__file__).with_name("kill_hook")
"""On PYTHONPATH, it SIGKILLs DVC and the stage as the stage renames onto a given path."""


def start_repro(project: Project, stage: str, **env: str) -> subprocess.Popen[bytes]:
    """`dvc repro <stage>`, as the leader of a process group that holds the stage too."""
    return subprocess.Popen(
        ["dvc", "repro", stage],
        cwd=project.path, env={**project.env, **env}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def kill_mid_training(project: Project, stage: str, rng: random.Random) -> None:
    """Start `dvc repro <stage>` and SIGKILL DVC and the stage together (as the OOM killer or
    a lost machine would) at a random moment after some epoch's state was saved."""
    resume = OUTPUTS[stage][2]
    proc = start_repro(project, stage)
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
    # the log is whole or absent; what may stand at its place is the progress copy of the last
    # finished epoch's summary (fashion_mnist_mlp/training/engine.py epoch_log), a whole file the next run replaces
    progress = project.path / live / "metrics.json"
    if (project.path / live).exists():
        assert [p.name for p in (project.path / live).iterdir()] == ["metrics.json"]
        assert json.loads(progress.read_text())["step"] >= 1
    status = project.run("dvc", "status", stage).stdout
    assert f"{stage}:" in status, status


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Project:
    project = make_project(tmp_path_factory.mktemp("interrupted"), SMALL)
    project.run("dvc", "repro", "split")
    return project


@pytest.mark.parametrize("case", list(CASES))
def test_killed_training_resumes_to_the_uninterrupted_result(project: Project, case: str) -> None:
    stage = case.split(":")[0]
    project.run("git", "checkout", "-q", "params.yaml")
    project.set_params({**CASES[case], stage: {"epochs": EPOCHS, **CASES[case][stage]}})
    project.run("dvc", "repro", *(["train"] if stage == "swa" else ["split"]))  # its inputs
    # A first run killed, then `dvc repro` as a user would type it.
    kill_mid_training(project, stage, random.Random(case))
    assert_resumed_to_the_uninterrupted_bytes(project, stage, "")


def assert_resumed_to_the_uninterrupted_bytes(project: Project, stage: str, epoch: str) -> None:
    """After a killed run: nothing half-written; `dvc repro` resumes after `epoch` ("": any),
    and a run never interrupted writes the same bytes."""
    assert_nothing_half_written(project, stage)
    rerun = project.run("dvc", "repro", stage)
    assert f"{stage}: resuming after epoch {epoch}" in rerun.stdout, rerun.stdout
    resumed = lock_hashes(project.read("dvc.lock"))
    assert not (project.path / OUTPUTS[stage][2]).exists()  # removed once the model is written

    straight = project.run("dvc", "repro", *FORCED, stage)
    assert "resuming" not in straight.stdout
    assert lock_hashes(project.read("dvc.lock")) == resumed


@pytest.mark.parametrize("stage", ["train", "swa"])
def test_killed_after_its_last_epoch_the_rerun_writes_the_uninterrupted_bytes(
    project: Project, stage: str
) -> None:
    """Killed once its last epoch's state is saved, as it puts its first output in place (after
    all it computes, swa's BatchNorm statistics included), a stage reruns no epoch: what it
    still computes must not depend on the random generators' state, which is not the
    uninterrupted run's. The default model (dropout, BatchNorm) and swa strategy."""
    project.run("git", "checkout", "-q", "params.yaml")
    epochs = 3  # recorded in dvc.lock by no other test here: the rerun runs, not restores
    project.set_params({stage: {"epochs": epochs}})
    project.run("dvc", "repro", "train" if stage == "swa" else "split")  # its inputs
    live = project.path / OUTPUTS[stage][1]
    path = os.pathsep.join(filter(None, [str(KILL_HOOK), project.env.get("PYTHONPATH")]))
    killed = start_repro(project, stage, PYTHONPATH=path, KILL_BEFORE_REPLACING=str(live))
    assert killed.wait(timeout=300) == -signal.SIGKILL, "the stage was not killed"
    assert_resumed_to_the_uninterrupted_bytes(project, stage, f"{epochs} ")


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
    # the state and every staging file are gone (a state of another stage whose params still
    # match may stay: it can resume; one CI run out of four kept its folder for such a file)
    left = sorted(str(p.relative_to(project.path)) for p in (project.path / "models").rglob("*"))
    assert not (project.path / TRAIN_RESUME).exists() and not leftover.exists(), left
    assert not [name for name in left if name.endswith(".partial")], left
    assert "Running stage 'train'" not in rerun  # its outputs restored from the cache
    assert (project.path / TRAIN_MODEL).is_file()
