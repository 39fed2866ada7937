"""One trial of the search as a DVC experiment: `dvc exp run --temp` on the trial's values,
watched while it runs so that the study's pruner can interrupt it (as Ctrl-C would: the stage
writes nothing and DVC saves no experiment), and scored by the validation accuracy of the model
its export stage wrote. fashion_mnist_mlp/tools/search.py asks the study for the trials.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.trial import Trial, TrialState

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import CALIBRATION_METRICS
from fashion_mnist_mlp.tools.trials import trial_env

POLL_S = 1.0


def run_trial(
    trial: Trial, name: str, values: dict[str, Any], storage: str, log: Path
) -> tuple[TrialState, float | None]:
    """Run the trial's experiment, its output into `log`, pruning it when the study says so;
    its state and value."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name]
    for key, value in values.items():
        command += ["-S", f"{key}={json.dumps(value)}"]
    pruned_after = None
    with log.open("w") as out, running(command, out, trial_env(storage, trial._trial_id)) as proc:
        reported = 0
        while proc.poll() is None:
            time.sleep(POLL_S)
            # as the stage reported it: `trial` itself knows only what this process reported
            frozen = trial.study._storage.get_trial(trial._trial_id)
            epochs = frozen.intermediate_values
            for epoch in sorted(epochs)[reported:]:
                print(
                    f"search: trial {trial.number}: epoch {epoch} val acc {epochs[epoch]:.4f}",
                    flush=True,
                )
            # judged when an epoch arrives only: after train, the others' medians move on
            new_epoch, reported = len(epochs) > reported, len(epochs)
            if new_epoch and trial.study.pruner.prune(trial.study, frozen):
                pruned_after = max(epochs)
                stop(proc)  # as Ctrl-C: the stage writes nothing, DVC saves no experiment
    if pruned_after is not None and proc.returncode != 0:
        print(f"search: trial {trial.number}: pruned after epoch {pruned_after} (val acc "
              f"{epochs[pruned_after]:.4f} trails the study's median)", flush=True)  # fmt: skip
        return TrialState.PRUNED, None
    text = log.read_text()
    if proc.returncode != 0:
        if "conflicts with existing experiment" in text:
            raise StageError(
                f"an experiment named {name} exists already (from an earlier study named "
                f"{trial.study.study_name!r} whose storage is gone?): start a new study "
                f"(--study NEW), or remove those experiments (dvc exp remove)"
            )
        tail = "".join(text.splitlines(keepends=True)[-5:])
        print(
            f"search: trial {trial.number} failed (exit {proc.returncode}); {log}:\n{tail}",
            flush=True,
        )
        return TrialState.FAIL, None
    try:
        return TrialState.COMPLETE, objective(name)
    except Exception as e:  # an experiment without the metric: this trial failed, not the search
        print(f"search: trial {trial.number}: no objective in {name} ({e})", flush=True)
        return TrialState.FAIL, None


def forget_dead_runs(ended: set[str]) -> list[str]:
    """The `dvc exp run --temp` of a worker killed outright never cleaned up: DVC keeps its
    temporary copy and lists it in `dvc exp show` as running, for good. Remove this clone's
    copies of runs still marked running whose trial the study has ended (`ended`: their
    experiment names), as no live run's trial is; their names. (A run that ended normally
    has no copy left.) The killed run's stage may still be finishing in it: it writes nothing
    DVC keeps."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc.repo.experiments.executor.base import ExecutorInfo, TaskStatus

    forgotten: list[str] = []
    try:
        repo = Repo(".")
    except NotDvcRepoError:  # no DVC project here: its trials will say so
        return forgotten
    with repo:
        runs = repo.experiments.tempdir_queue
        for rev in os.listdir(runs.pid_dir) if os.path.isdir(runs.pid_dir) else []:
            try:
                info = ExecutorInfo.load_json(runs.get_infofile_path(rev))
            except (OSError, ValueError, KeyError):
                continue
            running = info.status < TaskStatus.SUCCESS and os.path.isdir(info.root_dir)
            if running and info.name in ended:
                shutil.rmtree(info.root_dir, ignore_errors=True)
                shutil.rmtree(os.path.join(runs.pid_dir, rev), ignore_errors=True)
                forgotten.append(info.name)
    return forgotten


@contextlib.contextmanager
def heartbeats(trial: Trial) -> Iterator[None]:
    """Tell the study, every heartbeat interval, that this worker still runs `trial` (where
    the storage keeps heartbeats): from a thread, so that no pause of the worker (a pruned run
    shutting down, the objective read, a push) makes a live trial look dead."""
    storage = trial.study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    storage.record_heartbeat(trial._trial_id)
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.wait(interval):
            with contextlib.suppress(Exception):  # the storage away for a moment: beat again
                storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


def _die_with_this_worker() -> None:
    """In the trial's process, before it starts: a worker killed outright (SIGKILL, its
    machine gone) takes its `dvc exp run` along, which saves no experiment; the study runs the
    trial again elsewhere (search.py)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def running(command: list[str], out: Any, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """The command in its own process group, stopped (and waited for) if this worker is."""
    proc = subprocess.Popen(
        command,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
        preexec_fn=_die_with_this_worker if sys.platform == "linux" else None,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop(proc)


def stop(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGINT to the trial's process group, as Ctrl-C (DVC and the stage clean up); SIGTERM if
    it has not ended after `grace_s`, SIGKILL after as long again."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def objective(experiment: str) -> float:
    """The validation accuracy of the model the experiment exported."""
    import dvc.api

    metrics = json.loads(dvc.api.read(str(CALIBRATION_METRICS), repo=".", rev=experiment))
    return float(metrics["validation"]["accuracy"])
