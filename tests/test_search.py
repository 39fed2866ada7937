"""The search's study: its sampler's seed per worker and per start, one space per study, and a
storage password that no message shows; values refused together judged on the search's baseline,
and a trial that fails no matter where; a trial's experiment stopped as Ctrl-C would stop it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.tools.search import open_study, refused, search, workspace_baseline
from fashion_mnist_mlp.tools.space import Space
from fashion_mnist_mlp.tools.trial_runner import heartbeats, running, stop
from fashion_mnist_mlp.tools.workers import counted, push_experiment, retrying, stale_trials_found

from .conftest import Workdir
from .test_trials import PASSWORD, unreachable

SPACE = {
    "sampler": "random",
    "seed": 0,
    "pruner": "median",
    "startup_trials": 1,
    "warmup_epochs": 1,
    "params": {"train.lr": {"low": 0.001, "high": 0.01, "log": True}},
}
ANNEALING = {
    **SPACE,
    "params": {"swa.epochs": {"low": 0, "high": 4}, "swa.anneal_epochs": {"low": 1, "high": 2}},
}
REFUSED = {"swa.epochs": 1, "swa.anneal_epochs": 2}
"""Inside ANNEALING's ranges, each valid alone; together, an annealing longer than swa's run."""


def asked(storage: str, worker: int, space: dict = SPACE, trials: int = 2) -> list[float]:
    study = open_study("s", storage, Space.model_validate(space), worker)
    values = []
    for _ in range(trials):
        trial = study.ask(Space.model_validate(space).distributions())
        values.append(trial.params["train.lr"])
        study.tell(trial, 0.5)
    return values


def test_workers_and_restarts_ask_for_new_values_and_a_fresh_study_repeats_itself(
    tmp_path: Path,
) -> None:
    first = asked(f"sqlite:///{tmp_path / 'a.db'}", worker=0)
    other_worker = asked(f"sqlite:///{tmp_path / 'b.db'}", worker=1)
    restarted = asked(f"sqlite:///{tmp_path / 'a.db'}", worker=0)  # the same study, again
    again = asked(f"sqlite:///{tmp_path / 'c.db'}", worker=0)  # a new study, same seed
    assert len({*first, *other_worker, *restarted}) == 6
    assert again == first


def test_a_study_refuses_another_search_space(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'a.db'}"
    asked(storage, worker=0)
    wider = {**SPACE, "params": {"train.lr": {"low": 0.0001, "high": 0.01, "log": True}}}
    with pytest.raises(StageError, match="was searched with another search space"):
        asked(storage, worker=0, space=wider)
    asked(storage, worker=0, space={**SPACE, "seed": 5})  # the sampler's settings may change


@pytest.mark.parametrize("plots", [False, True], ids=["search", "plots"])
def test_the_search_names_a_storage_it_cannot_open_without_its_password(
    tmp_path: Path, plots: bool
) -> None:
    work = Workdir.with_project_params(tmp_path)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    url = unreachable()
    args = ("--storage", url, "--space", "space.yaml", "--trials", "1")
    result = work.run("search", args=(*args, "--plots", "plots") if plots else args)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out, out
    # psycopg is locked: the driver loads, and the server that is not there is named, masked
    assert result.stderr.startswith(
        "error: cannot use the study's storage postgresql://alice:***@127.0.0.1:"
    ), out
    assert "Connection refused. Check that the database is reachable" in out, out
    assert PASSWORD not in out
    assert not [
        f for f in tmp_path.rglob("*") if f.is_file() and PASSWORD.encode() in f.read_bytes()
    ]


@pytest.mark.parametrize("on_disk", ["", "train:\n  lr: 0.0\n"], ids=["empty", "half-written"])
def test_values_refused_together_are_judged_on_the_baseline_not_on_a_file_being_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_disk: str
) -> None:
    """Another worker's `dvc exp run --temp -S` rewrites params.yaml for a moment: read then,
    the file raised KeyError, the worker died, and its trial stayed RUNNING."""
    Workdir.with_project_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    base = workspace_baseline().raw_params()
    (tmp_path / "params.yaml").write_text(on_disk)
    study = optuna.create_study()
    first, second = study.ask(), study.ask()
    assert refused(first, "s-0", REFUSED, base)
    assert "swa.anneal_epochs = 2 is longer than the run" in first.user_attrs["refused"]
    assert not refused(second, "s-1", {"swa.epochs": 2, "swa.anneal_epochs": 1}, base)


def a_search_asked_for(values: dict, work: Path) -> tuple[optuna.study.Study, Callable[[], None]]:
    """A study in `work` whose first trial asks for `values`, and its search of one trial."""
    storage = f"sqlite:///{work / 's.db'}"
    space = Space.model_validate(ANNEALING)
    study = open_study("s", storage, space, worker=0)
    study.enqueue_trial(values)
    return study, lambda: search(study, space, trials=1, storage=storage)


def test_values_refused_together_end_their_trial_pruned_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Workdir.with_project_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    study, run_search = a_search_asked_for(REFUSED, tmp_path)
    run_search()  # nothing runs: no `dvc exp run` here
    (trial,) = study.get_trials()
    assert trial.state == TrialState.PRUNED
    log = (tmp_path / "search" / "logs" / "s-0.log").read_text()
    assert log.startswith("search: trial 0: pruned before it ran: params.yaml refuses these")


def test_a_trial_whose_refusal_check_raises_is_failed_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker stops on the error, and a RUNNING trial would count towards --trials forever.
    Here the refusal's log cannot be written: search/logs is a file."""
    Workdir.with_project_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "logs").write_text("not a folder")
    study, run_search = a_search_asked_for(REFUSED, tmp_path)
    with pytest.raises(FileExistsError):
        run_search()
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]


# a trial's process (as `dvc exp run`) and its child (as the stage), which says when it is ready;
# each notes the Ctrl-C it gets
TRIAL = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
try:
    child.wait()
except KeyboardInterrupt:
    child.wait()
    print("interrupted", flush=True)
    sys.exit(130)
"""
STAGE = """
import time
print("ready", flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    print("stage interrupted", flush=True)
"""
DEAF = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@contextlib.contextmanager
def started(command: list[str], out: Path) -> Iterator[subprocess.Popen]:
    """The command running in its own process group, once it has printed 'ready'."""
    with out.open("w") as log, running(command, log, {}) as proc:
        while "ready" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            time.sleep(0.05)
        yield proc


def test_stopping_a_trial_interrupts_its_whole_process_group_as_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "trial.log"
    with started([sys.executable, "-c", TRIAL, STAGE], out) as proc:
        stop(proc, grace_s=10)
        assert proc.returncode == 130
    assert out.read_text().splitlines() == ["ready", "stage interrupted", "interrupted"]


def test_a_trial_that_ignores_ctrl_c_is_terminated_after_the_grace_period(tmp_path: Path) -> None:
    with started([sys.executable, "-c", DEAF], tmp_path / "trial.log") as proc:
        begun = time.monotonic()
        stop(proc, grace_s=0.5)
        assert proc.returncode == -signal.SIGTERM
        assert time.monotonic() - begun < 5


def test_a_dead_workers_trial_is_failed_asked_again_and_counted_once(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = Space.model_validate(SPACE)
    study = open_study("s", storage, space, worker=0, heartbeat_s=1)
    done = study.ask(space.distributions())
    study.tell(done, 0.5)
    dead = study.ask(space.distributions())
    with heartbeats(dead):  # one heartbeat, then its worker dies
        pass
    assert counted(study) == 2
    time.sleep(4.5)  # 3 heartbeats missed (the database counts whole seconds)
    other = open_study("s", storage, space, worker=1, heartbeat_s=1)
    # at the count (2), a worker that waits finds the dead trial and its retry brings it to 1
    assert stale_trials_found(other, trials=2)
    assert other.trials[dead.number].state == TrialState.FAIL
    again = other.ask(space.distributions())
    assert again.params == dead.params
    assert retrying(again) == f" (trial {dead.number} again: its worker stopped)"
    assert counted(other) == 2  # the retry stands for the dead trial
    with heartbeats(again):  # the retry's worker dies too
        pass
    time.sleep(4.5)
    optuna.storages.fail_stale_trials(other)
    assert counted(other) == 1  # neither dead trial counts while their retry waits
    third = other.ask(space.distributions())
    assert third.params == dead.params
    assert retrying(third) == f" (trial {again.number} again: its worker stopped)"
    other.tell(third, 0.6)
    assert counted(other) == 2 and not stale_trials_found(other, trials=2)


def test_a_push_that_fails_keeps_the_experiment_and_says_how_to_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    push_experiment("s-3", "nowhere")
    out = capsys.readouterr().out
    assert out.startswith("search: could not push s-3 (")
    assert out.rstrip().endswith(
        "it stays in this clone; push it once the remote is back: dvc exp push nowhere s-3"
    )
