"""The validate stage's cleanup: what an interrupted run left and no run can use goes; a resume
state of the current params stays. Through real DVC: tests/e2e/test_interruption.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from stages.params import load_params
from stages.paths import PARAMS_FILE, RESUME_PARAMS_KEY, RESUME_SECTIONS, SWA_RESUME, TRAIN_RESUME

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
