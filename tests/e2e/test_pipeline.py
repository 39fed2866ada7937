"""`dvc repro` of the whole pipeline on a small subset of the real data, in a temporary repo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from stages.data import CLASSES
from stages.paths import EXPORT_CARD, EXPORT_ONNX, TEST_DATA, TEST_METRICS

from .conftest import Project

pytestmark = pytest.mark.e2e
STAGES = ["download", "split", "train", "swa", "evaluate", "export"]


def lock_hashes(project: Project) -> dict[str, str]:
    lock = yaml.safe_load(project.read("dvc.lock"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage["outs"]}


@pytest.fixture(scope="module")
def reproduced(small_project: Project) -> Project:
    result = small_project.run("dvc", "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout
    return small_project


def test_repro_locks_all_six_stages(reproduced: Project) -> None:
    lock = yaml.safe_load(reproduced.read("dvc.lock"))
    assert list(lock["stages"]) == STAGES
    assert (
        lock["stages"]["train"]["params"]["params.yaml"]["train.epochs" if False else "train"][
            "epochs"
        ]
        == 2
    )


def test_metrics_are_written_for_both_models(reproduced: Project) -> None:
    metrics = json.loads(reproduced.read(str(TEST_METRICS)))
    assert set(metrics) == {"train", "swa"}
    for model in metrics.values():
        assert 0.6 < model["accuracy"] <= 1 and 0.5 < model["f1_macro"] <= 1 and model["loss"] > 0
    shown = reproduced.run("dvc", "metrics", "show", "--json").stdout
    assert "f1_macro" in shown and "val" in shown


def test_plots_render(reproduced: Project) -> None:
    out = reproduced.path / "plots-html"
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


def test_forced_rerun_gives_identical_outputs(reproduced: Project) -> None:
    before = lock_hashes(reproduced)
    reproduced.run(
        "dvc", "repro", "--force", "split", "train", "swa", "evaluate", "export", "--single-item"
    )
    for stage in ["split", "train", "swa", "evaluate", "export"]:
        reproduced.run("dvc", "repro", "--force", "--single-item", stage)
    assert lock_hashes(reproduced) == before


def test_bad_params_stop_the_stage_and_keep_its_output(reproduced: Project) -> None:
    model = reproduced.path / "models/train.safetensors"
    before = model.read_bytes()
    reproduced.set_params({"train": {"lr": -1.0}})
    try:
        result = reproduced.run("python", "-m", "stages.train", check=False)
    finally:
        reproduced.set_params({"train": {"lr": 0.002}})
    assert result.returncode == 2
    assert "train.lr = -1.0: Input should be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert model.read_bytes() == before
