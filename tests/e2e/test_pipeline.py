"""`dvc repro` of the whole pipeline on a small subset of the real data, in a temporary repo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.fashion_mnist import CLASSES
from stages.paths import EXPORT_CARD, EXPORT_ONNX, TEST_DATA, TEST_METRICS

from .conftest import STAGES, Project, lock_hashes, stages_run

pytestmark = pytest.mark.e2e


def test_repro_locks_all_six_stages(reproduced: Project) -> None:
    lock = yaml.safe_load(reproduced.read("dvc.lock"))
    assert list(lock["stages"]) == STAGES
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 2


def test_metrics_are_written_for_both_models(reproduced: Project) -> None:
    metrics = json.loads(reproduced.read(str(TEST_METRICS)))
    assert set(metrics) == {"train", "swa"}
    for model in metrics.values():
        assert 0.6 < model["accuracy"] <= 1 and 0.5 < model["f1_macro"] <= 1 and model["loss"] > 0
    shown = reproduced.run("dvc", "metrics", "show", "--json").stdout
    assert "f1_macro" in shown and "epoch_seconds" in shown


def test_plots_render(reproduced: Project, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    reproduced.run("dvc", "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "Confusion matrix (test, SWA model)" in html and "Loss (train vs validation" in html


def test_exported_onnx_model_predicts_like_the_evaluated_model(reproduced: Project) -> None:
    import onnxruntime as ort
    from safetensors.numpy import load_file

    card = json.loads(reproduced.read(str(EXPORT_CARD)))
    assert card["classes"] == list(CLASSES) and card["onnx_parity"]["predictions_equal"]
    test = load_file(reproduced.path / TEST_DATA)
    images = (test["images"].astype(np.float32) / 255)[:, None]
    session = ort.InferenceSession(
        str(reproduced.path / EXPORT_ONNX), providers=["CPUExecutionProvider"]
    )
    logits = session.run(None, {"images": images})[0]
    accuracy = float((logits.argmax(1) == test["labels"]).mean())
    assert accuracy == pytest.approx(card["test_metrics"]["swa"]["accuracy"], abs=1e-4)


def test_a_second_repro_runs_nothing(reproduced: Project) -> None:
    result = reproduced.run("dvc", "repro")
    assert "Running stage" not in result.stdout
    assert "up to date" in reproduced.run("dvc", "status").stdout
    reproduced.assert_clean()


def test_forced_rerun_gives_identical_outputs(reproduced: Project) -> None:
    before = lock_hashes(reproduced.read("dvc.lock"))
    result = reproduced.run("dvc", "repro", "--force")
    assert stages_run(result) == set(STAGES)
    assert lock_hashes(reproduced.read("dvc.lock")) == before
    reproduced.assert_clean()


def test_bad_params_stop_the_stage_and_keep_its_output(reproduced: Project) -> None:
    model = reproduced.path / "models/train.safetensors"
    before = model.read_bytes()
    reproduced.set_params({"train": {"lr": -1.0}})
    try:
        result = reproduced.run("python", "-m", "stages.train", check=False)
    finally:
        reproduced.run("git", "checkout", "-q", "params.yaml")
    assert result.returncode == 2
    assert (
        "train.lr = -1.0: Input should be 'auto' or a finite number greater than 0" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert model.read_bytes() == before
