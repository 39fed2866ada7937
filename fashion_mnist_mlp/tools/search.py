"""Hyperparameter search: an Optuna study whose every trial is one DVC experiment.

    python -m fashion_mnist_mlp.tools.search --trials 20              # search/space.yaml, SQLite study
    python -m fashion_mnist_mlp.tools.search --trials 20 --worker 1   # a second worker joins the same study

Each trial: the study asks for values in the search space, `dvc exp run --temp -n
<study>-<number> -S key=value ...` runs the pipeline on them in a temporary copy of the
workspace (yours is untouched, and several workers run side by side), and the trial's value is
the validation accuracy of the model export writes (metrics/calibration.json:
validation.accuracy), never a test score. While train runs it reports each epoch's validation
accuracy (fashion_mnist_mlp/tools/trials.py); the pruner interrupts a trial that trails the others at the same
epoch, and an interrupted trial leaves no experiment. Trials that finish are experiments like
any other: `dvc exp show`, `dvc exp apply <study>-<number>`.

The space is checked before the first trial (fashion_mnist_mlp/tools/space.py); values it could not try (inside
its ranges) that params.yaml refuses end their trial as pruned before it runs, with the reason in
its log: not a failure, as the study asked for them.

The study lives in any SQLAlchemy URL (`--storage`): SQLite in search/ by default, PostgreSQL
for workers on several machines (README, Search); messages show its password masked. `--plots
DIR` draws the study's history and parameter importances as PNGs and runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from fashion_mnist_mlp.cli import StageError, file_digest, run_stage
from fashion_mnist_mlp.config.params import read_raw_params
from fashion_mnist_mlp.config.paths import CALIBRATION_METRICS, PARAMS_FILE
from fashion_mnist_mlp.tools.space import SPACE_FILE, Space, decode, load_space, refusal
from fashion_mnist_mlp.tools.trials import connect, masked, storage_errors, trial_env
from fashion_mnist_mlp.training.files import atomic_path

SEARCH_DIR = Path("search")
DEFAULT_STORAGE = SEARCH_DIR / "study.db"
LOG_DIR = SEARCH_DIR / "logs"  # each trial's `dvc exp run` output
POLL_S = 1.0
MAX_FAILURES_IN_A_ROW = 3
ASKED = tuple(s for s in TrialState if s != TrialState.WAITING)
"""A trial enqueued (study.enqueue_trial) counts once a worker asks for it: --trials runs it."""


def main(argv: list[str] | None = None) -> None:
    # started in the background (make search: `&`), a process begins with SIGINT ignored, and
    # so would every trial it starts: Ctrl-C and the pruner could not stop them
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.getsignal(signal.SIGTERM))  # a closed terminal: as kill
    args = parse_args(argv)
    storage = storage_url(args.storage)
    with storage_errors(storage):
        if args.plots is not None:
            write_plots(load_study(args.study, storage), args.plots)
            return
        space = load_space(args.space)
        study = open_study(args.study, storage, space, args.worker)
        search(study, space, args.trials, storage)
        print("\n".join(f"search: {line}" for line in summary(study)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fashion_mnist_mlp.tools.search", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--trials",
        type=positive,
        default=20,
        help="stop asking once the study holds this many trials (all workers together)",
    )
    parser.add_argument("--space", type=Path, default=SPACE_FILE, help=f"default: {SPACE_FILE}")
    parser.add_argument(
        "--study",
        type=study_name,
        default="search",
        help="the study's name; its experiments are named <study>-<trial number>",
    )
    parser.add_argument(
        "--storage",
        default=f"sqlite:///{DEFAULT_STORAGE}",
        help="SQLAlchemy URL of the study (default: %(default)s)",
    )
    parser.add_argument(
        "--worker",
        type=int,
        default=0,
        help="this worker's number: give each worker of one study its own",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write the study's plots as PNGs into DIR and run nothing",
    )
    return parser.parse_args(argv)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def study_name(text: str) -> str:
    # it names experiments, which are git refs
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use letters, digits, '-' and '_' (it names the experiments)"
        )
    return text


def storage_url(url: str) -> str:
    """The URL with a relative SQLite path made absolute: the trials' stages run in a
    temporary copy of the project, and must reach the same file."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        path = Path(url.removeprefix(prefix)).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return url


def open_study(name: str, storage: str, space: Space, worker: int) -> optuna.study.Study:
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=space.startup_trials, n_warmup_steps=space.warmup_epochs
        )
        if space.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module says what happens
    study = optuna.create_study(
        study_name=name, storage=connect(storage), pruner=pruner, direction="maximize",
        load_if_exists=True,
    )  # fmt: skip
    digest = space.digest()
    if study.user_attrs.setdefault("space", digest) != digest:
        raise StageError(
            f"the study {name!r} in {masked(storage)} was searched with another search space: its "
            f"trials would not compare. Start a new study (--study NEW), or restore the space"
        )
    study.set_user_attr("space", digest)
    # A seed of its own for each worker (--worker) and each start of one: the same seed would
    # ask again for the values it asked for before. The constant liar keeps TPE from asking
    # for the values a running trial has.
    seed = derived_seed(space.seed, worker, len(study.get_trials(deepcopy=False)))
    study.sampler = (
        optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=space.startup_trials, constant_liar=True
        )
        if space.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    return study


def derived_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def load_study(name: str, storage: str) -> optuna.study.Study:
    try:
        return optuna.load_study(study_name=name, storage=connect(storage))
    except KeyError:
        raise StageError(
            f"no study named {name!r} in {masked(storage)}: run a search first"
        ) from None


def search(study: optuna.study.Study, space: Space, trials: int, storage: str) -> None:
    failures = 0
    baseline = stable_baseline()
    while len(study.get_trials(deepcopy=False, states=ASKED)) < trials:
        if stable_baseline() != baseline:
            raise StageError(
                f"{PARAMS_FILE} or the checked-out commit changed while the search ran: the "
                "next trials would start from another baseline than the earlier ones. Restore "
                "them to go on with this study, or start a new one (--study NEW)"
            )
        trial = study.ask(space.distributions())
        name = f"{study.study_name}-{trial.number}"
        values = decode(trial.params)
        print(f"search: trial {trial.number} ({name}): {shown(values)}", flush=True)
        if refused(trial, name, values):
            study.tell(trial, state=TrialState.PRUNED)
            continue  # the study asked for these values: no failure, the count goes on as it was
        trial.set_user_attr("experiment", name)
        try:
            state, value = run_trial(trial, name, values, storage)
        except BaseException:  # Ctrl-C, or the study's storage went away: not a running trial
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value, state=state)
        if state == TrialState.COMPLETE:
            print(f"search: trial {trial.number}: validation accuracy {value:.4f}", flush=True)
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise StageError(f"{failures} trials in a row failed: see their logs in {LOG_DIR}/")


def refused(trial: Trial, name: str, values: dict[str, Any]) -> bool:
    """Whether params.yaml refuses the trial's values together: a combination inside the
    space's ranges, which its check before the first trial could not try. The reason goes to
    the output and the trial's log."""
    reason = refusal(read_raw_params(PARAMS_FILE), values)
    if reason is None:
        return False
    message = (
        f"search: trial {trial.number}: pruned before it ran: {PARAMS_FILE} refuses these "
        f"values together ({reason}). The study asked for them: not a failure of the search"
    )
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / f"{name}.log").write_text(message + "\n")
    trial.set_user_attr("refused", reason)
    print(message, flush=True)
    return True


def stable_baseline(tries: int = 10) -> tuple[str | None, str]:
    """What every trial starts from: params.yaml (--temp copies the workspace's) and HEAD.
    Another worker's `dvc exp run` writes its -S values into params.yaml (and detaches HEAD)
    for a moment while it stashes them: a reading counts when the next one, 1 s on, agrees."""
    reading = workspace_baseline()
    for _ in range(tries):
        time.sleep(1)
        reading, before = workspace_baseline(), reading
        if reading == before:
            break
    return reading


def workspace_baseline() -> tuple[str | None, str]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return file_digest(PARAMS_FILE), head.stdout.strip()


def run_trial(
    trial: Trial, name: str, values: dict[str, Any], storage: str
) -> tuple[TrialState, float | None]:
    """Run the trial's experiment, pruning it when the study says so; its state and value."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{name}.log"
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


@contextlib.contextmanager
def running(command: list[str], out: Any, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """The command in its own process group, stopped (and waited for) if this worker is."""
    proc = subprocess.Popen(
        command,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
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


def summary(study: optuna.study.Study) -> list[str]:
    """The study's trial counts and its best trial, with how to reach it."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s.name.lower()}" for s in TrialState if s in states)
    lines = [f"study {study.study_name!r}: {len(states)} trials ({counts or 'none'})"]
    if TrialState.COMPLETE in states:
        best = study.best_trial
        name = best.user_attrs.get("experiment", f"{study.study_name}-{best.number}")
        lines.append(
            f"best: trial {best.number}, experiment {name}, validation accuracy "
            f"{best.value:.4f}: {shown(decode(best.params))} (dvc exp apply {name})"
        )
    return lines


def shown(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def write_plots(study: optuna.study.Study, directory: Path) -> list[Path]:
    """The optimization history and the parameter importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as plots

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    drawings = {}
    if done:
        drawings["optimization_history.png"] = lambda: plots.plot_optimization_history(study)
    if len(done) >= 2:
        drawings["param_importances.png"] = lambda: plots.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator()
        )
    for file, draw in drawings.items():
        with warnings_quiet():
            axes = draw()
        axes.figure.set_size_inches(9, 5)  # room for the long params.yaml keys and the title
        axes.figure.tight_layout()
        with atomic_path(directory / file) as staging:
            axes.figure.savefig(staging, dpi=100, format="png")
        plt.close(axes.figure)
        written.append(directory / file)
    return written


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


if __name__ == "__main__":
    run_stage(main, check_params=False)  # search() guards its own baseline
