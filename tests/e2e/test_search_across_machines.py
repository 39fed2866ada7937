"""The search across machines, on real services: two worker clones share one study on a
PostgreSQL server and push every finished trial to a bare git remote and an SSH DVC remote; one
worker is killed mid-trial and its trial is run again; a third clone fetches everything with
one command, sees every finished trial in `dvc exp show` with the study's values, and loads the
best model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from fashion_mnist_mlp.training.versions import load_model

from .conftest import Project, experiments, remote_storage
from .postgres import postgres_server
from .test_search import SPACE
from .test_team import clone, team

pytestmark = pytest.mark.e2e

TRIALS = 3


def worker(project: Project, space: Path, storage: str, number: int) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "fashion_mnist_mlp.tools.search", "--study", "team", "--space",
        str(space), "--storage", storage, "--trials", str(TRIALS), "--worker", str(number),
        "--push", "origin", "--heartbeat", "1",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=project.path, env=project.env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def first_lines_until(proc: subprocess.Popen[str], marker: str) -> str:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)


@pytest.mark.slow
def test_two_workers_on_postgresql_push_every_trial_and_a_third_clone_sees_them_all(
    reproduced: Project, tmp_path: Path
) -> None:
    start = time.monotonic()
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "params": {"train.lr": SPACE["params"]["train.lr"]}}))
    with postgres_server(tmp_path / "pg") as storage, remote_storage("ssh", tmp_path) as remote:
        origin, alice = team(reproduced, tmp_path, storage=remote)
        clones = [clone(origin, tmp_path / f"worker{n}", alice.env) for n in (0, 1)]
        for project in clones:
            project.run("dvc", "pull", "-q")  # main's outputs, from the SSH remote

        survivor, victim = (worker(p, space, storage, n) for n, p in enumerate(clones))
        seen = first_lines_until(victim, ": epoch 1 val acc")
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and all it started
        victim.wait(timeout=30)
        out = survivor.communicate(timeout=900)[0]
        assert survivor.returncode == 0, out

        study = optuna.load_study(study_name="team", storage=storage)
        trials = study.get_trials()
        killed = next(t for t in trials if f"search: trial {t.number} (team-" in seen)
        assert killed.state == TrialState.FAIL
        retried = [
            t
            for t in trials
            if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number
        ]
        assert len(retried) == 1 and retried[0].params == killed.params
        finished = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(finished) == TRIALS, [(t.number, t.state) for t in trials]
        for trial in finished:
            assert f"search: team-{trial.number} pushed to origin and the DVC remote" in out

        # a third clone: one command fetches every trial, with its outputs
        carol = clone(origin, tmp_path / "carol", alice.env)
        carol.run("dvc", "exp", "pull", "-A", "origin")
        found = experiments(carol)
        for trial in finished:
            exp = found[f"team-{trial.number}"]
            assert exp["params"]["train"]["lr"] == pytest.approx(trial.params["train.lr"])
            calibration = exp["metrics"]["metrics/calibration.json"]
            assert calibration["validation"]["accuracy"] == trial.value
        assert f"team-{killed.number}" not in found  # the killed run saved nothing
        best = load_model(rev=f"team-{study.best_trial.number}", repo=str(carol.path))
        assert list(best.config.hidden) == [512, 512]
    print(f"the across-machines search test took {time.monotonic() - start:.0f} s")
