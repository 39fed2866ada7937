"""Faults during a stage, through the real stage commands: a full disk (a file-size limit) and
Ctrl-C / SIGTERM. Each must end the stage with one clear message, leave no temporary file and
every earlier output as it was; once the fault is gone, a rerun gives the same bytes."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import pytest

from fashion_mnist_mlp.config.paths import TRAIN_MODEL

from .conftest import ROOT, Workdir


def stage_command(work: Workdir, stage: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("STAGES_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", f"fashion_mnist_mlp.stages.{stage}"], cwd=work.path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )  # fmt: skip


@pytest.mark.parametrize("stage", ["split", "evaluate"])
def test_a_file_size_limit_fails_the_stage_cleanly_and_a_rerun_gives_the_same_bytes(
    work_with_models: Workdir, stage: str
) -> None:
    work = work_with_models
    before = work.snapshot()
    limit = 32 * 1024  # bytes: each stage writes larger files than this

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = stage_command(work, stage, preexec_fn=limited)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 2, stderr
    assert stderr.startswith(f"error: {stage}: File too large while writing its outputs"), stderr
    assert "rerun (dvc repro)" in stderr and "Traceback" not in stderr
    assert work.snapshot() == before  # no temporary file, no earlier output changed

    assert work.run(stage).returncode == 0
    assert work.snapshot() == before


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_stage_leaves_its_earlier_outputs_and_no_temporary_file(
    work_with_models: Workdir, sent: signal.Signals
) -> None:
    work = work_with_models
    work.set("train.epochs", 1000)
    before = work.snapshot()
    run = stage_command(work, "train")
    for line in run.stdout:
        if line.startswith("train epoch 1/"):  # the resume state of epoch 0 was written
            break
    run.send_signal(sent)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + sent, stderr
    assert f"interrupted ({sent.name}): no output of this stage was written" in stderr
    after = work.snapshot()
    assert not [p for p in after if ".partial" in p], after
    assert after[str(TRAIN_MODEL)] == before[str(TRAIN_MODEL)]
    assert {p for p in after if p not in before} <= {"models/resume/train.safetensors"}
