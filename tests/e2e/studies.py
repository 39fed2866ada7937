"""What the search's end-to-end tests check of a study: each trial is its experiment, the workers
ran at once, and a password shows nowhere; and a worker's output read up to a point."""

from __future__ import annotations

import subprocess
import urllib.parse
from typing import Any

import pytest
from optuna.trial import FrozenTrial

from fashion_mnist_mlp.tools.space import decode

from .conftest import Project, experiments


def param(params: dict, key: str) -> Any:
    """A dotted key's value (`train.lr`: params.yaml's train: lr:)."""
    for part in key.split("."):
        params = params[part]
    return params


def assert_holds_the_trials_values(params: dict, trial: FrozenTrial) -> None:
    """params.yaml's values (as a dict) are the trial's, as params.yaml holds them."""
    for key, value in decode(trial.params).items():
        assert param(params, key) == pytest.approx(value), key


def assert_each_trial_is_its_experiment(project: Project, trials: list[FrozenTrial]) -> None:
    found = experiments(project)
    for trial in trials:
        exp = found[trial.user_attrs["experiment"]]
        assert_holds_the_trials_values(exp["params"], trial)
        # the objective: the exported model's validation accuracy, as the experiment holds it
        calibration = exp["metrics"]["metrics/calibration.json"]
        assert trial.value == calibration["validation"]["accuracy"]
        # each epoch's validation accuracy reached the study while train ran (from the
        # experiment's copy, through the storage URL)
        assert sorted(trial.intermediate_values) == [0, 1, 2]


def ran_at_once(trials: list[FrozenTrial]) -> bool:
    """Whether two of the trials ran at the same time (two workers, not one after the other)."""
    return any(
        a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
        for i, a in enumerate(trials)
        for b in trials[i + 1 :]
    )


def spellings(password: str) -> set[str]:
    """The password as a message or a log could show it: as is, and percent-encoded."""
    return {
        password,
        urllib.parse.quote(password, safe=""),
        urllib.parse.quote(password, safe=" +"),  # SQLAlchemy's URL.render_as_string
        urllib.parse.quote_plus(password),
    }


def leaks(password: str, texts: dict[str, str]) -> list[str]:
    """Where (the names of `texts`) the password shows, in any spelling."""
    forms = spellings(password)
    return [where for where, text in texts.items() if any(form in text for form in forms)]


def output_until(worker: subprocess.Popen[str], marker: str) -> str:
    """A running worker's output up to its first line holding `marker` (the rest left unread)."""
    lines = []
    for line in worker.stdout:
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)
