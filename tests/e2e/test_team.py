"""Two people, one project: a bare git repository as the shared git remote and a directory as
the shared DVC remote. What one of them computed, the other restores from the run-cache
without running a stage."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Project, lock_hashes, stages_run

pytestmark = pytest.mark.e2e


def clone(origin: Path, path: Path, env: dict[str, str]) -> Project:
    subprocess.run(["git", "clone", "-q", str(origin), str(path)], check=True, env=env)
    return Project(path)


def test_a_colleagues_pushed_run_cache_restores_her_experiment_without_running_it(
    reproduced: Project, tmp_path: Path
) -> None:
    origin = tmp_path / "origin.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(reproduced.path), str(origin)],
        check=True, env=reproduced.env,
    )  # fmt: skip
    alice = clone(origin, tmp_path / "alice", reproduced.env)
    shutil.copytree(reproduced.path / ".dvc" / "cache", alice.path / ".dvc" / "cache")
    alice.run("dvc", "checkout", "-q")
    alice.run("dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))
    alice.run("git", "commit", "-qam", "a shared DVC remote")
    alice.run("git", "push", "-q", "origin", "main")
    alice.run("dvc", "push", "-q")  # main's outputs

    alice.run("dvc", "exp", "run", "-S", "train.lr=0.0055")
    alice.run("dvc", "push", "--run-cache")  # her experiment's outputs and how they were made
    computed = lock_hashes(alice.read("dvc.lock"))

    bob = clone(origin, tmp_path / "bob", reproduced.env)
    bob.run("dvc", "pull", "-q", "--run-cache")
    bob.set_params({"train": {"lr": 0.0055}})
    result = bob.run("dvc", "repro", "--pull")
    assert stages_run(result) == {"validate"}, result.stdout  # validate is never run-cached
    for stage in ("train", "swa", "evaluate", "export"):
        assert f"Stage '{stage}' is cached - skipping run" in result.stdout, result.stdout
    assert lock_hashes(bob.read("dvc.lock")) == computed
