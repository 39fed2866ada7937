"""What a study found: its trial counts and best trial, with how to reach it, and its plots
(the optimization history and the parameter importances). `python -m
fashion_mnist_mlp.tools.search --plots DIR` and the report (fashion_mnist_mlp/tools/report.py)
show them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fashion_mnist_mlp.tools.space import decode
from fashion_mnist_mlp.tools.workers import experiment_name
from fashion_mnist_mlp.training.files import atomic_path


def summary(study: optuna.study.Study) -> list[str]:
    """The study's trial counts and its best trial, with how to reach it."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s.name.lower()}" for s in TrialState if s in states)
    lines = [f"study {study.study_name!r}: {len(states)} trials ({counts or 'none'})"]
    if TrialState.COMPLETE in states:
        best = study.best_trial
        name = best.user_attrs.get("experiment", experiment_name(study, best.number))
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
