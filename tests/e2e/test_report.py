"""`make report`: what an experiment changed against main, as a reviewer reads it."""

from __future__ import annotations

import re
import shutil
import sys

import optuna
import pytest
from optuna.distributions import FloatDistribution

from .conftest import Project, restore_workspace

pytestmark = pytest.mark.e2e
PNG = b"\x89PNG\r\n\x1a\n"


def report(project: Project, *args: str) -> str:
    return project.run(sys.executable, "-m", "fashion_mnist_mlp.tools.report", *args).stdout


def test_the_report_shows_an_experiments_params_metrics_changed_plots_and_best_trial(
    reproduced: Project,
) -> None:
    (reproduced.path / "search").mkdir(exist_ok=True)
    study = optuna.create_study(
        study_name="lr", storage=f"sqlite:///{reproduced.path / 'search' / 'study.db'}",
        direction="maximize",
    )  # fmt: skip
    for number, (lr, value) in enumerate([(0.002, 0.81), (0.0055, 0.84)]):
        study.add_trial(optuna.trial.create_trial(
            params={"train.lr": lr}, distributions={"train.lr": FloatDistribution(1e-3, 1e-2)},
            value=value, user_attrs={"experiment": f"lr-{number}"},
        ))  # fmt: skip
    try:
        reproduced.run("dvc", "exp", "run", "-q", "-S", "train.lr=0.0055")
        report(reproduced, "--rev", "main")
        text = reproduced.read("report.md")
        assert text.startswith("# workspace vs main")
        assert re.search(r"\| params.yaml +\| train.lr +\| auto +\| 0.0055 +\|", text), text
        assert "| metrics/test.json" in text and "swa_model.accuracy" in text
        # the curves changed, so each is an image; the misclassified grids of both revisions
        assert "### Loss (train vs validation, overfitting)\n\n![" in text
        assert "### metrics/eval/misclassified_swa.png (main)" in text
        assert (
            "best: trial 1, experiment lr-1, validation accuracy 0.8400: train.lr=0.0055 (dvc exp apply lr-1)"
            in text
        )
        images = [
            line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")
        ]
        assert len(images) >= 10
        for image in images:
            assert (reproduced.path / image).read_bytes()[:8] == PNG, image
    finally:
        (reproduced.path / "search" / "study.db").unlink()
        (reproduced.path / "report.md").unlink(missing_ok=True)
        shutil.rmtree(reproduced.path / "report", ignore_errors=True)
        restore_workspace(reproduced)


def test_the_report_says_when_nothing_changed_and_never_overwrites_foreign_files(
    reproduced: Project,
) -> None:
    report(reproduced, "--rev", "main")
    text = reproduced.read("report.md")
    assert "No param changed." in text and "No metric changed." in text
    assert "Unchanged: Loss (train vs validation, overfitting), " in text

    report(reproduced, "--rev", "main")  # a report replaces its own folder
    (reproduced.path / "report.md").unlink()
    shutil.rmtree(reproduced.path / "report")

    mine = reproduced.path / "report" / "figure.png"  # someone's own folder of the same name
    mine.parent.mkdir()
    mine.write_bytes(PNG)
    result = reproduced.run(sys.executable, "-m", "fashion_mnist_mlp.tools.report", check=False)
    assert (
        result.returncode == 2 and "report/ exists and was not written by a report" in result.stderr
    )
    assert mine.read_bytes() == PNG and not (reproduced.path / "report.md").exists()
    shutil.rmtree(mine.parent)
    reproduced.assert_clean()
