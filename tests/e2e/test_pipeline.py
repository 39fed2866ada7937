"""`dvc repro` of the whole pipeline on a small subset of the real data, in a temporary repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fashion_mnist_mlp.config.paths import (
    CALIBRATION_METRICS,
    EXPORT_CARD,
    EXPORT_DIR,
    EXPORT_ONNX,
    TEST_DATA,
    TEST_METRICS,
)
from fashion_mnist_mlp.training.fashion_mnist import CLASSES
from fashion_mnist_mlp.training.numerics import cpu_flags, portable_unsupported

from ..toolbox import LESSON_CLASS
from .conftest import STAGES, Project, lock_hashes, stages_run

pytestmark = pytest.mark.e2e


def test_repro_locks_all_six_stages(reproduced: Project) -> None:
    lock = yaml.safe_load(reproduced.read("dvc.lock"))
    assert list(lock["stages"]) == STAGES
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 2


def test_metrics_are_written_for_both_models(reproduced: Project) -> None:
    metrics = json.loads(reproduced.read(str(TEST_METRICS)))
    assert set(metrics) == {"trained_model", "swa_model"}
    for model in metrics.values():
        assert 0.6 < model["accuracy"] <= 1 and 0.5 < model["f1_macro"] <= 1 and model["loss"] > 0
        assert model["accuracy"] < model["top2_accuracy"] <= 1 and model["nll"] == model["loss"]
        assert 0 < model["ece"] < 0.5
    shown = reproduced.run("dvc", "metrics", "show", "--json").stdout
    assert "f1_macro" in shown and "ece" in shown
    assert "epoch_seconds" not in shown and "error" not in shown  # no unversioned file listed


def test_plots_render(reproduced: Project, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    reproduced.run("dvc", "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "Confusion matrix (test, SWA model)" in html and "Loss (train vs validation" in html
    assert "Reliability diagram" in html


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
    assert accuracy == pytest.approx(card["test_metrics"]["swa_model"]["accuracy"], abs=1e-4)


REFERENCE = Path(__file__).with_name("reference_hashes.json")


@pytest.mark.skipif(portable_unsupported(cpu_flags()) is not None, reason="no x86-64 AVX2 CPU")
@pytest.mark.skipif(torch.cuda.is_available(), reason="train.device auto trains on the GPU here")
def test_the_small_pipeline_writes_the_reference_bytes_on_any_x86_cpu(reproduced: Project) -> None:
    """numerics.cpu = portable promises the same bytes on every x86-64 CPU with AVX2 and FMA:
    this run's outs are those in REFERENCE (which names the machine that recorded them). CI runs this
    on whatever machine it gets, so a CPU that computes other bytes shows up here."""
    reference = json.loads(REFERENCE.read_text())
    outs = lock_hashes(reproduced.run("git", "show", "HEAD:dvc.lock").stdout)
    outs.pop("params.schema.json")  # the schema's text, not a computation
    outs.pop("models/init.json")  # validate's record of train.init: null here
    expected = reference["outs"]
    differ = sorted(path for path in {*expected, *outs} if outs.get(path) != expected.get(path))
    assert not differ, (
        f"{len(differ)} of {len(reference['outs'])} outputs differ from those recorded on "
        f"{reference['recorded_on']}: {differ}. On this CPU ({cpu_model()}) the portable "
        "numerics give other bytes: see docs/reproducibility.md. If a change to the stages is "
        f"meant to change what they compute, record these in {REFERENCE.name}: "
        + json.dumps(outs, indent=2)
    )


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def test_a_second_repro_runs_nothing_but_validate(reproduced: Project) -> None:
    """validate runs on every repro (always_changed: it resolves train.init's tag again)."""
    result = reproduced.run("dvc", "repro")
    assert stages_run(result) == {"validate"} and "Updating lock file" not in result.stdout
    assert reproduced.run("dvc", "status").stdout == "validate:\n\talways changed\n"
    reproduced.assert_clean()


def test_forced_rerun_gives_identical_outputs_and_the_same_lock(reproduced: Project) -> None:
    before = reproduced.read("dvc.lock")
    result = reproduced.run("dvc", "repro", "--force")
    assert stages_run(result) == set(STAGES)
    assert reproduced.read("dvc.lock") == before  # byte for byte: no wall-clock out in it
    reproduced.assert_clean()
    assert json.loads(reproduced.read("metrics/resources/train.json"))["seconds"] > 0


def test_bad_params_stop_the_stage_and_keep_its_output(reproduced: Project) -> None:
    model = reproduced.path / "models/train.safetensors"
    before = model.read_bytes()
    reproduced.set_params({"train": {"lr": -1.0}})
    try:
        result = reproduced.run("python", "-m", "fashion_mnist_mlp.stages.train", check=False)
    finally:
        reproduced.run("git", "checkout", "-q", "params.yaml")
    assert result.returncode == 2
    assert (
        "train.lr = -1.0: Input should be 'auto' or a finite number greater than 0" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert model.read_bytes() == before


LESSON_SNIPPET = (
    LESSON_CLASS
    + """
model = NeuralNetwork()
model.load_state_dict(torch.load('model_weights.pth'))
model.eval()
"""
)


def test_the_lessons_own_code_loads_the_exported_model(reproduced: Project) -> None:
    """The lesson's class and its load_state_dict(torch.load(...)) call, verbatim, in the export
    folder; fed the test images in [0, 1] as ToTensor gives them, it scores what the card says."""
    from safetensors.numpy import load_file

    test = load_file(reproduced.path / TEST_DATA)
    np.save(reproduced.path / "images.npy", (test["images"].astype(np.float32) / 255)[:, None])
    score = LESSON_SNIPPET + (
        "import numpy as np\n"
        "with torch.no_grad():\n"
        "    logits = model(torch.from_numpy(np.load('../../images.npy')))\n"
        "np.save('../../lesson_logits.npy', logits.numpy())\n"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", score], cwd=reproduced.path / EXPORT_DIR, check=True, timeout=120
        )
        logits = np.load(reproduced.path / "lesson_logits.npy")
    finally:
        for name in ("images.npy", "lesson_logits.npy"):
            (reproduced.path / name).unlink(missing_ok=True)
    card = json.loads(reproduced.read(str(EXPORT_CARD)))
    accuracy = float((logits.argmax(1) == test["labels"]).mean())
    assert accuracy == pytest.approx(card["test_metrics"]["swa_model"]["accuracy"], abs=1e-4)
    assert card["lesson_layout"]["parity"]["max_abs_logit_diff"] <= 1e-4


def test_calibration_is_fitted_on_validation_and_reported(reproduced: Project) -> None:
    calibration = json.loads(reproduced.read(str(CALIBRATION_METRICS)))
    assert calibration["fitted_on"] == "validation split" and calibration["temperature"] > 0
    val = calibration["validation"]
    assert val["after"]["nll"] <= val["before"]["nll"]
    shown = reproduced.run("dvc", "metrics", "show", "--json").stdout
    assert "temperature" in shown
