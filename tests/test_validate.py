"""The validate stage's cleanup: what an interrupted run left and no run can use goes; a resume
state of the current params stays; a folder's interrupted write is finished or undone. And its
record of the commit train.init names. Through real DVC: tests/e2e/test_interruption.py and
tests/e2e/test_versions.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from fashion_mnist_mlp.config.params import load_params
from fashion_mnist_mlp.config.paths import (
    PARAMS_FILE,
    RESUME_PARAMS_KEY,
    RESUME_SECTIONS,
    SWA_RESUME,
    TRAIN_INIT,
    TRAIN_RESUME,
)
from fashion_mnist_mlp.training.files import PARTIAL_SUFFIX

from .conftest import Workdir


def write_state(work: Workdir, path: Path, params_digest: str | None) -> None:
    metadata = {RESUME_PARAMS_KEY: params_digest} if params_digest is not None else None
    (work.path / path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.zeros(3, np.float32)}, work.path / path, metadata=metadata)


def test_resume_states_of_other_params_and_staging_leftovers_are_removed(tmp_path: Path) -> None:
    work = Workdir.with_project_params(tmp_path)
    params = load_params(work.path / PARAMS_FILE)
    write_state(work, TRAIN_RESUME, params.digest(RESUME_SECTIONS[TRAIN_RESUME]))  # resumable
    write_state(work, SWA_RESUME, params.digest(("swa",)))  # of other params
    leftovers = [
        work.path / "models" / ".swa.safetensors.0123abcd.partial",
        work.path / "metrics" / "eval.partial" / "confusion.csv",
        work.path / ".params.schema.json.89abcdef.partial",
    ]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_text("half")
    kept = work.path / "metrics" / "test.json"
    kept.write_text("{}")

    result = work.run("validate")
    assert result.returncode == 0, result.stderr
    assert (work.path / TRAIN_RESUME).is_file()
    assert not (work.path / SWA_RESUME).exists()
    assert f"removed {SWA_RESUME}, saved by a run of other params" in result.stdout
    assert not any(p.exists() for p in leftovers) and kept.is_file()
    assert not (work.path / "metrics" / "eval.partial").exists()

    work.set("split.seed", 7)  # train's state, too, depends on the split
    result = work.run("validate")
    assert result.returncode == 0, result.stderr
    assert f"removed {TRAIN_RESUME}, saved by a run of other params" in result.stdout
    assert not (work.path / TRAIN_RESUME.parent).exists()


def test_an_unreadable_resume_state_is_removed(tmp_path: Path) -> None:
    work = Workdir.with_project_params(tmp_path)
    (work.path / TRAIN_RESUME).parent.mkdir(parents=True)
    (work.path / TRAIN_RESUME).write_bytes(bytes(100))
    (work.path / SWA_RESUME).mkdir()  # a folder where a state would be: left alone, no crash
    result = work.run("validate")
    assert result.returncode == 0, result.stderr
    assert f"removed {TRAIN_RESUME}, not a readable resume state" in result.stdout
    assert not (work.path / TRAIN_RESUME).exists() and (work.path / SWA_RESUME).is_dir()


def git(work: Workdir, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(
        command, cwd=work.path, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_and_tag(work: Workdir, *tag_args: str) -> str:
    git(work, "commit", "-q", "--allow-empty", "-m", "a version")
    git(work, "tag", *tag_args, "v1")
    return git(work, "rev-parse", "HEAD")


def test_the_commit_train_init_names_is_recorded_and_rewritten_only_when_it_changes(
    tmp_path: Path,
) -> None:
    """models/init.json, train's dep: a moved tag changes it (so DVC reruns train); a run that
    finds the same commit leaves the file untouched; a refused value leaves it as it was."""
    work = Workdir.with_project_params(tmp_path)
    git(work, "init", "-q")
    first = commit_and_tag(work)
    record = work.path / TRAIN_INIT

    assert work.run("validate").returncode == 0
    assert json.loads(record.read_text()) == {"train.init": None, "commit": None}
    work.set("train.init", "v1")
    result = work.run("validate")
    assert f"recorded in {TRAIN_INIT} the commit train.init = 'v1' names now" in result.stdout
    assert json.loads(record.read_text()) == {"train.init": "v1", "commit": first}

    inode = record.stat().st_ino  # a rewrite is a new file (atomic_path)
    result = work.run("validate")
    assert result.returncode == 0 and "recorded" not in result.stdout
    assert record.stat().st_ino == inode

    moved = commit_and_tag(work, "-f")  # git tag -f v1: the same name, another commit
    result = work.run("validate")
    assert f"recorded in {TRAIN_INIT}" in result.stdout
    assert json.loads(record.read_text()) == {"train.init": "v1", "commit": moved} != first

    before = record.read_bytes()
    work.set("train.init", "v2")
    result = work.run("validate")
    assert result.returncode == 2 and "'v2' is not a tag or commit" in result.stderr
    assert record.read_bytes() == before


def test_an_interrupted_folder_write_is_finished_or_undone_never_lost(tmp_path: Path) -> None:
    """What a kill in the middle of atomic_dir's renames can leave (tests/test_writes.py kills
    it at each point): a complete new copy is put in place, an old copy moved aside comes
    back, an unfinished staging folder goes; an output standing whole is kept."""
    work = Workdir.with_project_params(tmp_path)
    folders = {
        "metrics/eval.ready.partial": "new",  # complete: renamed so once its files were flushed
        "metrics/eval.old.partial": "old",
        "models/export.old.partial": "old",  # moved aside; its replacement never came
        "data/raw": "kept",
        "data/raw.partial": "unfinished",
    }
    for folder, text in folders.items():
        (work.path / folder).mkdir(parents=True)
        (work.path / folder / "file.txt").write_text(text)

    result = work.run("validate")
    assert result.returncode == 0, result.stderr
    assert {
        folder: (work.path / folder / "file.txt").read_text()
        for folder in ("metrics/eval", "models/export", "data/raw")
    } == {"metrics/eval": "new", "models/export": "old", "data/raw": "kept"}
    assert not [*work.path.rglob(f"*{PARTIAL_SUFFIX}")]
    assert "restored models/export" in result.stdout
