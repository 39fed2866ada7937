"""The Optuna search through real DVC experiments in the small pipeline: a trial pruned by the
study's pruner, values params.yaml refuses together (pruned before they run), Ctrl-C and a
killed worker. Two workers sharing one study: docs/search.md's `make search` block, which
test_readme.py runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..conftest import ROOT
from .conftest import Project, experiments
from .studies import output_until

pytestmark = pytest.mark.e2e

SPACE = {
    "sampler": "random",
    "seed": 0,
    "pruner": "none",
    "startup_trials": 0,
    "warmup_epochs": 0,
    "params": {
        "train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "model.dropout": {"low": 0.1, "high": 0.5},
    },
}


def search(
    project: Project, tmp_path: Path, study: str, space: dict, *args: str, **popen: Any
) -> subprocess.Popen:
    space_file = tmp_path / f"{study}.yaml"
    space_file.write_text(yaml.safe_dump(space))
    command = [sys.executable, "-m", "fashion_mnist_mlp.tools.search", "--study", study, "--space", str(space_file),
               "--storage", f"sqlite:///{tmp_path / 'study.db'}", *args]  # fmt: skip
    return subprocess.Popen(
        command, cwd=project.path, env=project.env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    return out


def remove_experiments(project: Project, names: list[str]) -> None:
    if names:
        project.run("dvc", "exp", "remove", *names)


def test_a_trial_the_pruner_stops_leaves_no_experiment(reproduced: Project, tmp_path: Path) -> None:
    """A finished trial whose every epoch scored 0.99 makes the median: the next trial trails it
    after its first judged epoch and is interrupted."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"train.lr": 0.004}, distributions={"train.lr": FloatDistribution(1e-3, 1e-2, log=True)},
        value=0.99, intermediate_values={0: 0.99, 1: 0.99, 2: 0.99},
    ))  # fmt: skip
    space = {**SPACE, "pruner": "median", "startup_trials": 1, "warmup_epochs": 1,
             "params": {"train.lr": SPACE["params"]["train.lr"]}}  # fmt: skip
    out = finish(search(reproduced, tmp_path, "prune", space, "--trials", "2"))

    trial = optuna.load_study(study_name="prune", storage=storage).trials[1]
    assert trial.state == TrialState.PRUNED, out
    assert re.search(r"search: trial 1: pruned after epoch [12] ", out), out  # judged from 1
    assert "prune-1" not in experiments(reproduced)
    assert "1 pruned" in out
    reproduced.assert_clean()


def test_values_refused_together_inside_the_space_are_pruned_and_the_search_goes_on(
    reproduced: Project, tmp_path: Path
) -> None:
    """swa.anneal_epochs may not exceed swa.epochs unless swa is off (0 epochs). The space's
    check passes at its ends (0 and 4 epochs, 1 and 2 of annealing); inside, 1 epoch with 2 of
    annealing is refused. The study asks for it three times (enqueued, as the sampler may draw
    it): each trial is pruned before it runs, with the reason in its log, and the search goes
    on to a trial that completes (params.yaml's own values: quick, from the run-cache), where
    three failures in a row would have stopped it."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="inside", storage=storage, direction="maximize")
    refused = {"swa.epochs": 1, "swa.anneal_epochs": 2}
    for params in (refused, refused, refused, {"swa.epochs": 2, "swa.anneal_epochs": 1}):
        study.enqueue_trial(params)
    space = {**SPACE, "params": {"swa.epochs": {"low": 0, "high": 4},
                                 "swa.anneal_epochs": {"low": 1, "high": 2}}}  # fmt: skip
    out = finish(search(reproduced, tmp_path, "inside", space, "--trials", "4"))

    trials = optuna.load_study(study_name="inside", storage=storage).trials
    names = [t.user_attrs["experiment"] for t in trials if t.state == TrialState.COMPLETE]
    try:
        assert [t.state for t in trials] == [TrialState.PRUNED] * 3 + [TrialState.COMPLETE], out
        for trial in trials[:3]:
            assert "swa.anneal_epochs = 2 is longer than the run" in trial.user_attrs["refused"]
            log = reproduced.read(f"search/logs/inside-{trial.number}.log")
            assert log.startswith(f"search: trial {trial.number}: pruned before it ran: "), log
            assert log.strip() in out and "swa.anneal_epochs = 2" in log
        assert "(1 complete, 3 pruned)" in out, out
        assert {n for n in experiments(reproduced) if n.startswith("inside-")} == {"inside-3"}
        reproduced.assert_clean()
    finally:
        remove_experiments(reproduced, names)


def test_a_bad_space_stops_before_any_trial(reproduced: Project, tmp_path: Path) -> None:
    space = {**SPACE, "params": {"train.lr": {"low": -1.0, "high": 0.01}}}
    proc = search(reproduced, tmp_path, "bad", space, "--trials", "2")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out
    assert out.startswith("error: ") and "train.lr = -1.0 is refused" in out, out
    assert "Traceback" not in out and not (tmp_path / "study.db").exists()


def test_the_study_plots_are_pngs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="drawn", storage=storage, direction="maximize")
    study.optimize(
        lambda t: 1 - (t.suggest_float("x", 0, 1) - 0.3) ** 2 + 0 * t.suggest_int("n", 1, 4),
        n_trials=8,
    )
    result = subprocess.run(
        [sys.executable, "-m", "fashion_mnist_mlp.tools.search", "--study", "drawn", "--storage", storage, "--plots", str(tmp_path / "plots")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("optimization_history.png", "param_importances.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_stops_a_background_worker_and_its_trial_and_leaves_nothing(
    reproduced: Project, tmp_path: Path
) -> None:
    """Started as make search starts it (`&`: SIGINT ignored), Ctrl-C still stops the worker
    and the trial's run; the trial is marked failed and no experiment or temporary copy stays."""
    space = {**SPACE, "params": {"train.epochs": {"choices": [200]}}}
    proc = search(
        reproduced, tmp_path, "stopped", space, "--trials", "1",
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    seen = output_until(proc, ": epoch 3 val acc")
    proc.send_signal(signal.SIGINT)
    out = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "interrupted (SIGINT)" in out and "Traceback" not in out
    trial = optuna.load_study(
        study_name="stopped", storage=f"sqlite:///{tmp_path / 'study.db'}"
    ).trials[0]
    assert trial.state == TrialState.FAIL
    assert "stopped-0" not in experiments(reproduced)
    assert not list((reproduced.path / ".dvc" / "tmp" / "exps").glob("tmp*"))  # no temp copy
    reproduced.assert_clean()


def processes_under(path: Path) -> list[int]:
    """The processes whose working directory lies under `path`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(path):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_killed_workers_trial_is_run_again_and_the_study_reaches_its_count(
    reproduced: Project, tmp_path: Path
) -> None:
    """A worker SIGKILLed while its trial trains takes its `dvc exp run` along (no experiment);
    the next worker fails the silent trial after 3 missed heartbeats and runs its values again,
    and the study ends with --trials finished trials."""
    space = {**SPACE, "params": {"train.lr": SPACE["params"]["train.lr"]}}
    victim = search(reproduced, tmp_path, "kill", space, "--trials", "2", "--heartbeat", "1")
    seen = output_until(victim, ": epoch 1 val acc")
    victim.kill()
    victim.wait(timeout=30)
    killed_at = time.monotonic()
    killed = int(re.search(r"search: trial (\d+) \(kill-", seen).group(1))
    temp = reproduced.path / ".dvc" / "tmp" / "exps"
    deadline = time.monotonic() + 120  # the stage itself runs on, alone, to its end
    while processes_under(temp) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(max(0.0, killed_at + 4.5 - time.monotonic()))  # 3 heartbeats missed: stale
    survivor = search(
        reproduced, tmp_path, "kill", space, "--trials", "2", "--heartbeat", "1", "--worker", "1"
    )
    out = finish(survivor)
    trials = optuna.load_study(
        study_name="kill", storage=f"sqlite:///{tmp_path / 'study.db'}"
    ).trials
    names = [t.user_attrs["experiment"] for t in trials if t.state == TrialState.COMPLETE]
    try:
        assert trials[killed].state == TrialState.FAIL
        retries = [
            t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed
        ]
        assert len(retries) == 1, trials
        assert retries[0].state == TrialState.COMPLETE
        assert retries[0].params == trials[killed].params
        assert f"search: trial {retries[0].number} (kill-{retries[0].number}): " in out
        assert f"(trial {killed} again: its worker stopped)" in out
        assert f"search: removed the temporary copy of kill-{killed}, whose run was killed" in out
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
        found = experiments(reproduced)
        assert f"kill-{killed}" not in found  # its dvc exp run died with the worker
        assert all(f"kill-{t.number}" in found for t in trials if t.state == TrialState.COMPLETE)
    finally:
        remove_experiments(reproduced, names)
        for leftover in temp.glob("tmp*"):  # the killed run's copy: DVC never got to remove it
            shutil.rmtree(leftover, ignore_errors=True)
    reproduced.assert_clean()
