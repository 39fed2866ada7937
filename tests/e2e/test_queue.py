"""The experiment queue: two workers at once, a refused value failing only its own experiment,
and the bytes the workers made equal to the same experiment run alone."""

from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import METRIC_FILES, SMALL, Project, experiments, measured

pytestmark = pytest.mark.e2e
SMALL_EPOCHS = SMALL["train"]["epochs"]


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
    assert "train.lr = -1" in log and "> python -m fashion_mnist_mlp.stages.train" not in log, log
    # make exps: the failed one listed apart with what it tried, none of its baseline's scores
    table, failed = reproduced.run("python", "-m", "fashion_mnist_mlp.tools.exps").stdout.split(
        "\nFailed", 1
    )
    assert "bad-lr" not in table
    assert ["bad-lr", "train.lr=-1"] in [line.split() for line in failed.splitlines()], failed

    # the same experiment alone, in a temporary copy, computed again from swa on (forced: not
    # restored from the run-cache the workers filled): the bytes the parallel workers made
    run = reproduced.run(
        "dvc", "exp", "run", "--temp", "-f", "--downstream", "swa",
        "-n", "alone", "-S", "swa.lr=0.0005",
    )  # fmt: skip
    assert all(
        f"> python -m fashion_mnist_mlp.stages.{s}" in run.stdout
        for s in ("swa", "evaluate", "export")
    )
    alone = experiments(reproduced)["alone"]
    (queued,) = (e for e in done if e["params"]["swa"]["lr"] == 0.0005)
    assert alone["outs"] and alone["outs"] == queued["outs"]
    assert alone["metrics"] == queued["metrics"]
    reproduced.assert_clean()


@pytest.mark.slow
def test_a_running_queued_experiment_shows_its_latest_epoch(reproduced: Project) -> None:
    """While train runs, `dvc exp show` has the latest epoch's metrics of the running
    experiment and `dvc queue logs` its epoch lines; at the end, the finished ones."""
    reproduced.run("dvc", "exp", "run", "--queue", "-n", "live", "-S", "train.epochs=80")
    # the worker inherits the output of `dvc queue start`: captured, it would wait for the queue
    subprocess.run(
        ["dvc", "queue", "start", "--jobs", "1"], cwd=reproduced.path, env=reproduced.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    seen_steps: list[int] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        live = experiments(reproduced).get("live", {})
        if live.get("state") not in ("running", "queued", None):
            break  # finished
        step = live.get("metrics", {}).get("metrics/train/metrics.json", {}).get("step")
        # before train starts, the executor's copy holds the baseline's outputs (2 epochs)
        if live.get("state") == "running" and step is not None and step > SMALL_EPOCHS:
            seen_steps.append(step)
            log = reproduced.run("dvc", "queue", "logs", "live").stdout
            assert f"train epoch {step}/80" in log, log  # the log is at least as far
        time.sleep(1)
    assert len(set(seen_steps)) >= 2 and min(seen_steps) < 80, seen_steps  # it moved, mid-run
    finished = experiments(reproduced)["live"]
    assert finished["state"] == "success"
    assert finished["metrics"]["metrics/train/metrics.json"]["step"] == 80
    reproduced.run("dvc", "exp", "remove", "live")
    reproduced.assert_clean()
