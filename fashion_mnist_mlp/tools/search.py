"""Hyperparameter search: an Optuna study whose every trial is one DVC experiment.

    python -m fashion_mnist_mlp.tools.search --trials 20              # search/space.yaml, SQLite study
    python -m fashion_mnist_mlp.tools.search --trials 20 --worker 1   # a second worker joins the same study

Each trial: the study asks for values in the search space, `dvc exp run --temp -n
<study>-<number> -S key=value ...` runs the pipeline on them in a temporary copy of the
workspace (yours is untouched, and several workers run side by side), and the trial's value is
the validation accuracy of the model export writes (metrics/calibration.json:
validation.accuracy), never a test score (fashion_mnist_mlp/tools/trial_runner.py). While train
runs it reports each epoch's validation accuracy (fashion_mnist_mlp/tools/trials.py); the
pruner interrupts a trial that trails the others at the same epoch, and an interrupted trial
leaves no experiment. Trials that finish are experiments like any other: `dvc exp show`,
`dvc exp apply <study>-<number>`.

The space is checked before the first trial (fashion_mnist_mlp/tools/space.py); values it could not try (inside
its ranges) that params.yaml refuses end their trial as pruned before it runs, with the reason in
its log: not a failure, as the study asked for them.

The study lives in any SQLAlchemy URL (`--storage`): SQLite in search/ by default, PostgreSQL
for workers on several machines (docs/search.md); messages show its password masked. `--plots
DIR` draws the study's history and parameter importances as PNGs and runs nothing.

Workers on several machines: each sends a heartbeat while its trial runs (`--heartbeat`); a
trial whose worker died (killed, its machine gone) is failed by the next worker that asks, and
asked again with its values, so the study still reaches --trials. `--push GIT_REMOTE` sends
each finished trial's experiment to that git remote and its outputs to the DVC remote (`dvc exp
push`); a push that fails is said, and the experiment stays in this clone.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from fashion_mnist_mlp.cli import StageError, run_stage
from fashion_mnist_mlp.config.loader import parse_raw_params
from fashion_mnist_mlp.config.paths import PARAMS_FILE
from fashion_mnist_mlp.tools.space import SPACE_FILE, Space, decode, load_space, refusal
from fashion_mnist_mlp.tools.study_summary import shown, summary, write_plots
from fashion_mnist_mlp.tools.trial_runner import forget_dead_runs, heartbeats, run_trial
from fashion_mnist_mlp.tools.trials import connect, masked, storage_errors
from fashion_mnist_mlp.tools.workers import (
    counted,
    ended_experiments,
    experiment_name,
    push_experiment,
    retrying,
    stale_trials_found,
)

# optuna calls its heartbeat and retry API experimental (since 2.8), and warns that heartbeats
# are meant for study.optimize: here each trial runs as a process, and the worker beats for it
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

SEARCH_DIR = Path("search")
DEFAULT_STORAGE = SEARCH_DIR / "study.db"
LOG_DIR = SEARCH_DIR / "logs"  # each trial's `dvc exp run` output
MAX_FAILURES_IN_A_ROW = 3


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
        study = open_study(args.study, storage, space, args.worker, args.heartbeat)
        search(study, space, args.trials, storage, args.push)
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
        "--heartbeat",
        type=positive,
        default=10,
        metavar="SECONDS",
        help="how often a worker says it still runs its trial; a trial silent for 3 of them is "
        "retried by another worker (default: %(default)s)",
    )
    parser.add_argument(
        "--push",
        metavar="GIT_REMOTE",
        help="send each finished trial's experiment to this git remote and its outputs to the "
        "DVC remote (dvc exp push)",
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


def open_study(
    name: str, storage: str, space: Space, worker: int, heartbeat_s: int | None = None
) -> optuna.study.Study:
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=space.startup_trials, n_warmup_steps=space.warmup_epochs
        )
        if space.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module says what happens
    study = optuna.create_study(
        study_name=name, storage=connect(storage, heartbeat_s), pruner=pruner, direction="maximize",
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


def search(
    study: optuna.study.Study, space: Space, trials: int, storage: str, push: str | None = None
) -> None:
    failures = 0
    baseline = stable_baseline()
    base = baseline.raw_params()  # what every trial starts from while the loop's check holds
    while counted(study) < trials or stale_trials_found(study, trials):
        if stable_baseline() != baseline:
            raise StageError(
                f"{PARAMS_FILE} or the checked-out commit changed while the search ran: the "
                "next trials would start from another baseline than the earlier ones. Restore "
                "them to go on with this study, or start a new one (--study NEW)"
            )
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, asked again
        for dead in forget_dead_runs(ended_experiments(study)):
            print(f"search: removed the temporary copy of {dead}, whose run was killed", flush=True)
        trial = study.ask(space.distributions())
        with heartbeats(trial):  # from ask to tell: a trial alive is never judged stale
            name = experiment_name(study, trial.number)
            values = decode(trial.params)
            print(
                f"search: trial {trial.number} ({name}): {shown(values)}{retrying(trial)}",
                flush=True,
            )
            try:
                if refused(trial, name, values, base):
                    study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                    continue  # the study asked for them: no failure, and failures keeps its count
                trial.set_user_attr("experiment", name)
                state, value = run_trial(trial, name, values, storage, LOG_DIR / f"{name}.log")
            except BaseException:  # Ctrl-C, the study's storage gone, a log not written: the
                # worker stops, and a trial left RUNNING would count towards --trials forever
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            study.tell(trial, value, state=state, skip_if_finished=True)
        if state == TrialState.COMPLETE:
            print(f"search: trial {trial.number}: validation accuracy {value:.4f}", flush=True)
            if push is not None:
                push_experiment(name, push)
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise StageError(f"{failures} trials in a row failed: see their logs in {LOG_DIR}/")


def refused(trial: Trial, name: str, values: dict[str, Any], base: dict) -> bool:
    """Whether params.yaml (`base`: the baseline's, not the file, which another worker may be
    rewriting) refuses the trial's values together: a combination inside the space's ranges,
    which its check before the first trial could not try. The reason goes to the output and
    the trial's log."""
    reason = refusal(base, values)
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


@dataclass(frozen=True)
class Baseline:
    """What every trial starts from: params.yaml's bytes (--temp copies the workspace's; None
    if there is none) and HEAD."""

    params: bytes | None
    head: str

    def raw_params(self) -> Any:
        """params.yaml as this reading holds it, unvalidated."""
        if self.params is None:
            raise StageError(f"{PARAMS_FILE} not found: run the search from the project root")
        return parse_raw_params(self.params, PARAMS_FILE)


def stable_baseline(tries: int = 10) -> Baseline:
    """Another worker's `dvc exp run` writes its -S values into params.yaml (and detaches HEAD)
    for a moment while it stashes them: a reading counts when the next one, 1 s on, agrees."""
    reading = workspace_baseline()
    for _ in range(tries):
        time.sleep(1)
        reading, before = workspace_baseline(), reading
        if reading == before:
            break
    return reading


def workspace_baseline() -> Baseline:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    try:
        params = PARAMS_FILE.read_bytes()
    except FileNotFoundError:
        params = None
    return Baseline(params, head.stdout.strip())


if __name__ == "__main__":
    run_stage(main, check_params=False)  # search() guards its own baseline
