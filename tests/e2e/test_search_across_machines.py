"""The search across machines, on real services, as docs/search.md types it: two worker clones
run its `search-machines` block (each its own machine's line, at once) on a PostgreSQL server
and push every finished trial to a bare git remote and an SSH DVC remote; one worker is killed
mid-trial and its trial is run again; a third clone runs the `search-fetch` block, sees every
finished trial in `dvc exp show` with the study's values, and loads the best model."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from .conftest import Project, experiments, remote_storage
from .postgres import postgres_server
from .studies import assert_each_trial_is_its_experiment, leaks, output_until
from .test_team import clone, team
from .workflows import run_script, script, shim_uv

pytestmark = pytest.mark.e2e

TRIALS = 3


def machines(storage: str) -> dict[str, str]:
    """Each machine's script ("A", "B") of the documented recipe, for the server at `storage`:
    its password in PGPASSWORD as the page exports it, 3 trials instead of 40, a heartbeat
    every second instead of 10 (a dead worker's trial is taken over within seconds)."""
    url = urllib.parse.urlsplit(storage)
    assert url.path == "/optuna", "the page names the database optuna"
    lines = script("search-machines", {
        "<password>": urllib.parse.unquote(url.password),
        "<user>@<db-host>": f"{url.username}@{url.hostname}:{url.port}",
        "--trials 40": f"--trials {TRIALS}",
        "--heartbeat 10": "--heartbeat 1",
    }).splitlines()  # fmt: skip
    shared = [line for line in lines if "# machine" not in line]
    own = {line.rsplit("# machine ", 1)[1].strip(): line for line in lines if "# machine" in line}
    for line in own.values():  # each machine's line got the test's counts, not the page's
        assert f"--trials {TRIALS} " in line and "--heartbeat 1 " in line, line
    return {machine: "\n".join([*shared, line]) for machine, line in own.items()}


def worker(project: Project, commands: str) -> subprocess.Popen[str]:
    """`commands` started as run_script runs them, in the background, in a session of their own
    (to kill the worker and all it started)."""
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", commands], cwd=project.path, env=project.env,
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def workstation(origin: Path, path: Path, env: dict[str, str]) -> Project:
    """A clone as a team member has it: `uv run` works in it."""
    project = clone(origin, path, env)
    shim_uv(project.env, path.parent / f"{path.name}-bin")
    return project


@pytest.mark.slow
def test_two_workers_on_postgresql_push_every_trial_and_a_third_clone_sees_them_all(
    reproduced: Project, tmp_path: Path
) -> None:
    start = time.monotonic()
    with postgres_server(tmp_path / "pg") as storage, remote_storage("ssh", tmp_path) as remote:
        scripts = machines(storage)
        assert sorted(scripts) == ["A", "B"]
        origin, alice = team(reproduced, tmp_path, storage=remote)
        clones = [workstation(origin, tmp_path / f"machine-{m}", alice.env) for m in scripts]
        for project in clones:
            project.run("dvc", "pull", "-q")  # main's outputs, from the SSH remote

        survivor, victim = (worker(p, s) for p, s in zip(clones, scripts.values(), strict=True))
        seen = output_until(victim, ": epoch 1 val acc")
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and all it started
        victim.wait(timeout=30)
        victim.stdout.close()
        out = survivor.communicate(timeout=900)[0]
        assert survivor.returncode == 0, out

        study = optuna.load_study(study_name="search", storage=storage)
        trials = study.get_trials()
        killed = next(t for t in trials if f"search: trial {t.number} (search-" in seen)
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
            assert f"search: search-{trial.number} pushed to origin and the DVC remote" in out

        # a third clone: one command fetches every trial, with its outputs
        carol = workstation(origin, tmp_path / "carol", alice.env)
        best = f"search-{study.best_trial.number}"
        fetched = run_script(carol, script("search-fetch", {"search-7": best}))
        found = experiments(carol)
        dropout = found[best]["params"]["model"]["dropout"]
        assert f"Dropout(p={dropout}," in fetched.stdout, fetched.stdout  # the best one, loaded
        for trial in finished:  # pulled: each trial's model in carol's cache, not only the remote
            md5 = found[f"search-{trial.number}"]["outs"]["models/swa.safetensors"]
            assert (carol.path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()
        # the study's params and validation accuracy, each epoch's from the trial's copy
        assert_each_trial_is_its_experiment(carol, finished)
        assert f"search-{killed.number}" not in found  # the killed run saved nothing

        # the password, exported as the page does: in no output or trial's log (that masking
        # covers a password in the URL: test_search_postgres.py)
        logs = [p for c in clones for p in (c.path / "search" / "logs").rglob("*") if p.is_file()]
        assert {f"search-{t.number}.log" for t in finished} <= {p.name for p in logs}
        texts = {
            "machine A's output": out,
            "machine B's output": seen,
            "fetch": fetched.stdout + fetched.stderr,
        }
        texts |= {str(p): p.read_text(errors="replace") for p in logs}
        assert leaks(urllib.parse.unquote(urllib.parse.urlsplit(storage).password), texts) == []
    print(f"the across-machines search test took {time.monotonic() - start:.0f} s")
