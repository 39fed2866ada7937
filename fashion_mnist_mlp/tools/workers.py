"""What the workers of one study keep straight between them (fashion_mnist_mlp/tools/search.py):
which trials count towards --trials when a dead worker's trial is asked again, waiting at the
count for such a trial, and sending each finished trial to the team's remotes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
from optuna.trial import Trial, TrialState

from fashion_mnist_mlp.tools.trials import GRACE_HEARTBEATS

RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback
ASKED = tuple(s for s in TrialState if s != TrialState.WAITING)
"""A trial enqueued (study.enqueue_trial) counts once a worker asks for it: --trials runs it."""


def experiment_name(study: optuna.study.Study, number: int) -> str:
    """The DVC experiment of the study's trial `number`: `<study>-<number>` (search-7)."""
    return f"{study.study_name}-{number}"


def counted(study: optuna.study.Study) -> int:
    """The trials that count towards --trials: all asked, but those of dead workers that were
    asked again (a retry, even one still waiting to be asked, stands for the whole chain)."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in RETRY.retry_history(t)}
    return sum(t.state in ASKED and t.number not in retried for t in trials)


def ended_experiments(study: optuna.study.Study) -> set[str]:
    ended = study.get_trials(
        deepcopy=False, states=(TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED)
    )
    return {experiment_name(study, t.number) for t in ended}


def stale_trials_found(study: optuna.study.Study, trials: int) -> bool:
    """At the count with trials still running: wait until a dead worker's trial would be stale
    (GRACE_HEARTBEATS heartbeats), fail it, and say whether its retry (waiting to be asked)
    brought the count back below --trials. A worker dying later leaves its trial to the next
    search (any worker's)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return False
    # one heartbeat more than the grace: the database's clock may count whole seconds
    time.sleep((GRACE_HEARTBEATS + 1) * (study._storage.get_heartbeat_interval() or 0))
    optuna.storages.fail_stale_trials(study)
    return counted(study) < trials


def retrying(trial: Trial) -> str:
    history = RETRY.retry_history(trial.study._storage.get_trial(trial._trial_id))
    return f" (trial {history[-1]} again: its worker stopped)" if history else ""


PUSH_TIMEOUT_S = 1800


def push_experiment(name: str, remote: str) -> None:
    """`dvc exp push`: the experiment's commit to the git remote, its outputs to the DVC remote.
    A failed push loses nothing: the experiment stays here, and the command to retry is said.
    It never waits for a prompt (a password, a host key): that is a failed push too."""
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
    }
    command = [sys.executable, "-m", "dvc", "exp", "push", remote, name]
    try:
        run = subprocess.run(
            command, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env,
            timeout=PUSH_TIMEOUT_S,
        )  # fmt: skip
        reason = (
            None if run.returncode == 0 else ((run.stderr or run.stdout).strip() or "no output")
        )
    except subprocess.TimeoutExpired:
        reason = f"no answer in {PUSH_TIMEOUT_S} s"
    if reason is None:
        print(f"search: {name} pushed to {remote} and the DVC remote", flush=True)
        return
    print(
        f"search: could not push {name} ({reason.splitlines()[-1]}): it stays in this clone; "
        f"push it once the remote is back: dvc exp push {remote} {name}",
        flush=True,
    )
