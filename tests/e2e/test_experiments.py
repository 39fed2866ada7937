"""Experiments: `dvc exp run -S`, and comparing them with exp show/diff, plots diff. The queue:
test_queue.py."""

from __future__ import annotations

import json
import sys
from itertools import takewhile
from pathlib import Path

import pytest

from ..conftest import ROOT
from .conftest import (
    METRIC_FILES,
    STAGES,
    Project,
    experiments,
    measured,
    restore_workspace,
    stages_reproduced,
    stages_run,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sgd_experiment(reproduced: Project) -> str:
    reproduced.assert_clean()
    reproduced.run(
        "dvc", "exp", "run", "-n", "sgd-fast", "-S", "train.optimizer=sgd", "-S", "train.lr=0.05"
    )
    restore_workspace(reproduced)
    return "sgd-fast"


def test_exp_run_with_set_params_records_params_and_metrics(
    reproduced: Project, sgd_experiment: str
) -> None:
    exp = experiments(reproduced)[sgd_experiment]
    assert exp["params"]["train"]["optimizer"] == "sgd" and exp["params"]["train"]["lr"] == 0.05
    assert measured(exp) == METRIC_FILES
    assert 0 < exp["metrics"]["metrics/test.json"]["swa_model"]["accuracy"] <= 1
    # wall-clock figures stay in the workspace that ran them, out of the experiment's commit
    resources = json.loads(reproduced.read("metrics/resources/train.json"))
    assert resources["seconds"] > 0 and resources["peak_rss_mb"] > 100  # torch alone is more


def test_exp_diff_and_plots_diff_compare_with_the_baseline(
    reproduced: Project, sgd_experiment: str, tmp_path: Path
) -> None:
    diff = json.loads(reproduced.run("dvc", "exp", "diff", "HEAD", sgd_experiment, "--json").stdout)
    assert "swa_model.accuracy" in diff["metrics"]["metrics/test.json"]
    assert diff["params"]["params.yaml"]["train.optimizer"] == {"old": "adamw", "new": "sgd"}
    reproduced.run("dvc", "plots", "diff", "HEAD", sgd_experiment, "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert sgd_experiment in html and "Confusion matrix (test, SWA model)" in html


@pytest.mark.parametrize("columns", [80, 120])
def test_make_exps_compares_experiments_in_the_terminals_width(
    reproduced: Project, sgd_experiment: str, columns: int
) -> None:
    """The table `make exps` prints fits the terminal and shows the param that differs
    (train.optimizer: adamw in the commit, sgd in the experiment) and the scores."""
    result = reproduced.run(
        "env", f"COLUMNS={columns}", "python", "-m", "fashion_mnist_mlp.tools.exps"
    )
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= columns and "train.optimizer" in result.stdout, result.stdout
    main, experiment = (shown_row(lines, name) for name in ("main", sgd_experiment))
    assert "adamw" in main and "sgd" in experiment, result.stdout
    metrics = experiments(reproduced)[sgd_experiment]["metrics"]
    test, calibration = metrics["metrics/test.json"], metrics["metrics/calibration.json"]
    for score in (test["trained_model"]["accuracy"], test["swa_model"]["accuracy"],
                  test["swa_model"]["f1_macro"], calibration["validation"]["accuracy"]):  # fmt: skip
        assert f"{score:.4f}" in experiment, result.stdout


def shown_row(lines: list[str], name: str) -> set[str]:
    """The words and param values of the table row named `name`, with the lines its params
    wrap onto (indented) when they do not fit as columns."""
    start = next(i for i, line in enumerate(lines) if name in line.split())
    block = [lines[start]]
    block += takewhile(lambda line: line.startswith(" ") and line.strip(), lines[start + 1 :])
    return {word.rpartition("=")[2] for word in " ".join(block).split()}


def test_make_quick_runs_the_pipeline_briefly_and_a_rerun_replaces_it_from_the_run_cache(
    reproduced: Project,
) -> None:
    """`make quick` (its dvc commands, the environment already set up): a named experiment in a
    temporary copy, accepted by validate; run again, it replaces the last one of this commit,
    and the stages the change leaves alone are restored from DVC's run-cache, not run again."""
    make = ["env", f"VIRTUAL_ENV={sys.prefix}", "make", "-f", str(ROOT / "Makefile"), "-o", "setup"]
    first = reproduced.run(*make, "quick", "ARGS=-S evaluate.batch_size=512")  # uv run, no project
    assert stages_run(first) == set(STAGES) - {"download"}, first.stdout  # download: as committed
    second = reproduced.run(*make, "quick")
    assert stages_run(second) <= {"validate", "evaluate", "export"}, second.stdout
    assert stages_reproduced(second) >= {"split", "train", "swa"}, second.stdout  # restored
    quick = experiments(reproduced)["quick"]
    assert quick["params"]["split"]["subset"] == 5000 and quick["params"]["train"]["epochs"] == 3
    assert quick["params"]["evaluate"]["batch_size"] == 2048  # the first 'quick' was replaced
    assert measured(quick) == METRIC_FILES
    assert quick["metrics"]["metrics/test.json"]["swa_model"]["accuracy"] > 0.6
    reproduced.assert_clean()


def test_the_lessons_lbfgs_and_lambda_schedule_run_as_an_experiment(reproduced: Project) -> None:
    """LBFGS with a LambdaLR formula and early stopping that keeps the best epoch, BatchNorm and
    an EMA finalization, all by -S."""
    early = "{metric: val/acc, mode: max, patience: 1, min_delta: 0.5}"  # stops after epoch 2
    result = reproduced.run(
        "dvc", "exp", "run", "-n", "lbfgs-lambda",
        "-S", "train.optimizer=lbfgs", "-S", "train.scheduler=lambda",
        "-S", "train.schedulers.lambda.formula=0.5 ** epoch", "-S", "train.epochs=3",
        "-S", f"train.early_stopping={early}", "-S", "train.keep=best",
        "-S", "model.batch_norm=true", "-S", "swa.strategy=ema",
    )  # fmt: skip
    lr_lines = [line for line in result.stdout.splitlines() if line.startswith("train epoch")]
    try:
        exp = experiments(reproduced)["lbfgs-lambda"]
        lrs = reproduced.read("metrics/train/lr_per_batch.csv").splitlines()[1:]
        card = json.loads(reproduced.read("models/export/model_card.json"))
    finally:
        restore_workspace(reproduced)
    # BatchNorm, folded into the lesson's layers, still matches ONNX and the lesson's class
    assert card["architecture"]["batch_norm"] and card["params"]["swa"]["strategy"] == "ema"
    assert card["onnx_parity"]["predictions_equal"] and card["lesson_layout"]["parity"]
    assert exp["params"]["train"]["optimizer"] == "lbfgs"
    assert exp["metrics"]["metrics/test.json"]["trained_model"]["accuracy"] > 0.5  # chance is 0.1
    summary = exp["metrics"]["metrics/train/metrics.json"]
    assert (summary["stopped_epoch"], summary["best_epoch"]) == (2, 1)
    assert len(lr_lines) == 3  # epochs 0, 1 and 2: stopped before the third
    steps = len(lrs) // 2  # batches per epoch: the lr halves from epoch to epoch
    assert float(lrs[steps].split(",")[1]) == float(lrs[0].split(",")[1]) / 2


def test_warm_start_from_a_tag_records_its_commit_and_refuses_a_branch(
    reproduced: Project,
) -> None:
    reproduced.run("git", "tag", "warm-base")
    commit = reproduced.run("git", "rev-parse", "HEAD").stdout.strip()
    try:
        result = reproduced.run("dvc", "exp", "run", "-n", "warm", "-S", "train.init=warm-base")
        summary = json.loads(reproduced.read("metrics/train/metrics.json"))
        restore_workspace(reproduced)
        branch = reproduced.run("dvc", "exp", "run", "-S", "train.init=main", check=False)
    finally:
        restore_workspace(reproduced)
        reproduced.run("git", "tag", "-d", "warm-base")
    assert f"starting from the exported model of warm-base ({commit[:12]})" in result.stdout
    assert summary["init_commit"] == commit
    # the warm-started model begins where the tagged one ended: far above chance at epoch 0
    assert "train epoch 0/2" in result.stdout
    epoch0 = next(line for line in result.stdout.splitlines() if "train epoch 0/2" in line)
    assert float(epoch0.split("acc ")[-1].split()[0]) > 0.5
    assert branch.returncode != 0
    assert "train.init = 'main' is a moving name" in branch.stdout + branch.stderr
