"""Experiments: `dvc exp run -S`, the queue, and comparing them with exp show/diff, plots diff."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import Project

pytestmark = pytest.mark.e2e

METRIC_FILES = {"metrics/test.json", "metrics/calibration.json", "metrics/train/metrics.json"}


def experiments(project: Project) -> dict[str, dict]:
    """Name -> {state, params, metrics, outs (their md5)} of every experiment of the current commit; `state` is
    the queue executor's ("success", "failed", ...) or, for a workspace run, "success"."""
    rows = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    found = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                found[rev.get("name") or exp["name"]] = {
                    "state": (exp.get("executor") or {}).get(
                        "state", "success" if not rev.get("error") else "failed"
                    ),
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "metrics": {k: v.get("data", {}) for k, v in data.get("metrics", {}).items()},
                    "outs": {k: v.get("hash") for k, v in (data.get("outs") or {}).items()},
                }
    return found


def measured(exp: dict) -> set[str]:
    """The metrics files an experiment holds values of (dvc.yaml also lists the git-ignored
    wall-clock files, which no experiment commit contains)."""
    return {path for path, data in exp["metrics"].items() if data}


def restore_workspace(project: Project) -> None:
    project.run("git", "checkout", "-q", "--", ".")
    project.run("dvc", "checkout", "-q")
    project.assert_clean()


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
    assert 0 < exp["metrics"]["metrics/test.json"]["swa"]["accuracy"] <= 1
    # wall-clock figures stay in the workspace that ran them, out of the experiment's commit
    resources = json.loads(reproduced.read("metrics/resources/train.json"))
    assert resources["seconds"] > 0 and resources["peak_rss_mb"] > 100  # torch alone is more


def test_exp_diff_and_plots_diff_compare_with_the_baseline(
    reproduced: Project, sgd_experiment: str, tmp_path: Path
) -> None:
    diff = json.loads(reproduced.run("dvc", "exp", "diff", "HEAD", sgd_experiment, "--json").stdout)
    assert "swa.accuracy" in diff["metrics"]["metrics/test.json"]
    assert diff["params"]["params.yaml"]["train.optimizer"] == {"old": "adamw", "new": "sgd"}
    reproduced.run("dvc", "plots", "diff", "HEAD", sgd_experiment, "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert sgd_experiment in html and "Confusion matrix (test, SWA model)" in html


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
    assert exp["metrics"]["metrics/test.json"]["train"]["accuracy"] > 0.5  # chance is 0.1
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


@pytest.mark.slow
def test_queued_experiments_run_in_parallel_workers_as_they_would_alone(
    reproduced: Project,
) -> None:
    reproduced.run("dvc", "exp", "run", "--queue", "-S", "swa.lr=0.0005,0.002")
    # a refused value fails its own experiment in the validate stage, not the others
    reproduced.run("dvc", "exp", "run", "--queue", "-n", "bad-lr", "-S", "train.lr=-1")
    reproduced.run("dvc", "queue", "start", "--jobs", "2")
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        status = reproduced.run("dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    else:
        pytest.fail(f"queue did not finish:\n{status}")
    done = [
        e
        for e in experiments(reproduced).values()
        if e["params"].get("swa", {}).get("lr") in (0.0005, 0.002)
    ]
    assert len(done) == 2, status
    assert all(e["state"] == "success" for e in done), done
    assert all(measured(e) == METRIC_FILES for e in done)
    assert experiments(reproduced)["bad-lr"]["state"] == "failed"
    log = reproduced.run("dvc", "queue", "logs", "bad-lr").stdout
    assert "train.lr = -1" in log and "> python -m stages.train" not in log, log

    # the same experiment alone, in a temporary copy, computed again from swa on (forced: not
    # restored from the run-cache the workers filled): the bytes the parallel workers made
    run = reproduced.run(
        "dvc", "exp", "run", "--temp", "-f", "--downstream", "swa",
        "-n", "alone", "-S", "swa.lr=0.0005",
    )  # fmt: skip
    assert all(f"> python -m stages.{s}" in run.stdout for s in ("swa", "evaluate", "export"))
    alone = experiments(reproduced)["alone"]
    (queued,) = (e for e in done if e["params"]["swa"]["lr"] == 0.0005)
    assert alone["outs"] and alone["outs"] == queued["outs"]
    assert alone["metrics"] == queued["metrics"]
    reproduced.assert_clean()
