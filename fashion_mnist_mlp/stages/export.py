"""Stage 6: export the chosen model (`export.model`) as safetensors and ONNX, in the lesson's
own layout (`model_weights.pth`), with a model card.

With `export.calibrate`, a temperature fitted on the validation split is folded into the last
layer first (fashion_mnist_mlp/training/calibration.py), so the exported probabilities are calibrated and every
prediction is unchanged. The ONNX graph takes images in [0, 1] shaped (batch, 1, 28, 28), as
torchvision's ToTensor gives them, with a dynamic batch axis. Before anything is written, ONNX
Runtime and the lesson's NeuralNetwork class loading `model_weights.pth` must each reproduce
PyTorch's logits on the whole test set (within `export.atol` + `export.rtol` x the largest
|logit|) and give identical predictions; otherwise the stage fails and reports the largest
difference.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from fashion_mnist_mlp.cli import StageError, run_stage
from fashion_mnist_mlp.config.loader import load_sections, read_raw_params
from fashion_mnist_mlp.config.paths import (
    CALIBRATION_METRICS,
    EXPORT_CARD,
    EXPORT_DIR,
    EXPORT_LESSON_PTH,
    EXPORT_LESSON_WEIGHTS,
    EXPORT_ONNX,
    EXPORT_WEIGHTS,
    MODELS,
    PARAMS_FILE,
    SPLIT_MANIFEST,
    TEST_DATA,
    TEST_METRICS,
    VAL_DATA,
)
from fashion_mnist_mlp.config.sections import Export, Model, Numerics, Split, Swa
from fashion_mnist_mlp.training.calibration import calibration_report
from fashion_mnist_mlp.training.checkpoints import load_checkpoint, save_model
from fashion_mnist_mlp.training.data import Images, load_split
from fashion_mnist_mlp.training.fashion_mnist import CLASSES, IMAGE_SIDE
from fashion_mnist_mlp.training.files import (
    atomic_dir,
    atomic_path,
    copy_file,
    read_json,
    sha256_file,
    write_json,
)
from fashion_mnist_mlp.training.lesson_model import (
    STACK,
    NeuralNetwork,
    lesson_state_dict,
    stack_code,
    torch_save_bytes,
)
from fashion_mnist_mlp.training.model import MLP, MLPConfig, fold_temperature, predict_logits
from fashion_mnist_mlp.training.numerics import pin

INPUT_NAME, OUTPUT_NAME = "images", "logits"

SECTIONS = {"split": Split, "model": Model, "swa": Swa, "export": Export, "numerics": Numerics}
"""The sections export validates itself: what it reads (export, numerics) and what its card
records. Not train, whose schema imports every option table: an edit to an optimizer or a
scheduler would rerun export for a card that records only the chosen ones."""
CARD_SECTIONS = ("split", "model", "train", "swa", "export", "numerics")
OPTION_TABLES = {"optimizer": "optimizers", "loss": "losses", "scheduler": "schedulers"}
"""train's choices, each naming a block of its table (scheduler `none` names none)."""


def export_onnx(model: MLP, path: Path, opset: int) -> None:
    """`model` as an ONNX graph of the lesson's layers (its normalization, BatchNorm and any
    temperature folded in: fashion_mnist_mlp/training/lesson_model.py): Flatten, then Gemm and Relu. Built with onnx's
    own graph helpers rather than traced by torch.onnx.export, which took 10 s a model here
    (torch.export, then onnxscript) and whose graphs change with its version."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    state = lesson_state_dict(model)
    depth = len(state) // 2
    nodes = [helper.make_node("Flatten", [INPUT_NAME], ["layer0.input"], axis=1)]
    weights = []
    for i in range(depth):
        prefix, last = f"{STACK}.{2 * i}", i == depth - 1
        weights += [numpy_helper.from_array(state[f"{prefix}.{k}"].numpy(), f"{prefix}.{k}")
                    for k in ("weight", "bias")]  # fmt: skip
        output = OUTPUT_NAME if last else f"layer{i}.output"
        nodes.append(
            helper.make_node(
                "Gemm",
                [f"layer{i}.input", f"{prefix}.weight", f"{prefix}.bias"],
                [output],
                transB=1,
            )
        )
        if not last:
            nodes.append(helper.make_node("Relu", [output], [f"layer{i + 1}.input"]))
    shape = ["batch", 1, IMAGE_SIDE, IMAGE_SIDE]
    graph = helper.make_graph(
        nodes,
        "fashion_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(CLASSES)])],
        weights,
    )
    opsets = [helper.make_opsetid("", opset)]
    onnx_model = helper.make_model(graph, opset_imports=opsets, producer_name="fashion-mlp")
    onnx_model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(onnx_model, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save(onnx_model, tmp)


def onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own classes (Fail, InvalidGraph, ...), no common base
        raise StageError(
            f"ONNX Runtime {ort.__version__} cannot load the exported graph ({e}): choose an "
            "export.opset it supports (18 works everywhere). Nothing was exported"
        ) from None
    return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def check_finite(model: MLP, logits: np.ndarray, name: str) -> None:
    """A model with inf or nan in its weights or outputs is no model to ship (and its card
    could not be JSON)."""
    bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v).all()]
    if bad or not np.isfinite(logits).all():
        where = f"weights ({', '.join(bad[:3])})" if bad else "outputs on the test set"
        raise StageError(
            f"{name} has non-finite {where}: it diverged. Nothing was exported; retrain with a "
            "lower learning rate (train.optimizers.<name>.lr or train.lr; swa.lr)"
        )


def check_parity(
    torch_logits: np.ndarray,
    ort_logits: np.ndarray,
    atol: float,
    rtol: float,
    what: str = "ONNX",
    disagree_hint: str = "the runtimes disagree: check export.opset and the onnx/onnxruntime versions",
) -> dict[str, object]:
    """`what` (ONNX Runtime, or the lesson's class) must give PyTorch's predictions, and logits
    within atol + rtol x the largest |logit|: float32 rounding grows with the logits' size, so a
    model with large logits is held to a proportionally larger difference. StageError naming
    the largest difference otherwise."""
    # nan > allowed is false: a nan anywhere must count as the largest difference, not the scale
    scale = float(np.abs(np.nan_to_num(torch_logits, nan=0, posinf=0, neginf=0)).max(initial=0))
    allowed = atol + rtol * scale
    max_diff = float(np.nan_to_num(np.abs(torch_logits - ort_logits), nan=np.inf).max(initial=0.0))
    mismatched = int((torch_logits.argmax(1) != ort_logits.argmax(1)).sum())
    if max_diff > allowed or mismatched:
        if not mismatched and max_diff <= 10 * allowed:
            hint = "a float32 rounding difference: raise export.atol or export.rtol"
        else:
            hint = disagree_hint
        raise StageError(
            f"{what} parity check failed: max |logit difference| {max_diff:.3g} (allowed: "
            f"export.atol {atol:g} + export.rtol {rtol:g} x max |logit| {scale:.3g} = "
            f"{allowed:.3g}), {mismatched} of {len(torch_logits)} predictions differ. Nothing "
            f"was exported. Likely {hint}."
        )
    return {
        "images": len(torch_logits),
        "max_abs_logit": scale,
        "max_abs_logit_diff": max_diff,
        "allowed_diff": allowed,
        "predictions_equal": True,
    }


def write_lesson_layout(
    model: MLP, staging: Path, images: torch.Tensor, reference: np.ndarray, cfg: Export
) -> dict[str, object]:
    """The lesson's `NeuralNetwork` weights as torch.save's state_dict and as safetensors, after
    checking that the lesson's class, loading them as the lesson does, computes `reference`."""
    config = model.config
    state = lesson_state_dict(model)
    data = torch_save_bytes(state)
    lesson = NeuralNetwork(config.hidden, config.in_features, config.num_classes).eval()
    lesson.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    parity = check_parity(
        reference, predict_logits(lesson, images).numpy(), cfg.atol, cfg.rtol,
        what="The lesson's NeuralNetwork (model_weights.pth)",
        disagree_hint="a bug in folding the model into the lesson's layers (fashion_mnist_mlp/training/lesson_model.py)",
    )  # fmt: skip
    (staging / EXPORT_LESSON_PTH.name).write_bytes(data)
    with atomic_path(staging / EXPORT_LESSON_WEIGHTS.name) as tmp:  # 0644, as the others
        save_file(state, tmp)
    return {
        "files": [EXPORT_LESSON_PTH.name, EXPORT_LESSON_WEIGHTS.name],
        "load": "model = NeuralNetwork(); model.load_state_dict(torch.load('model_weights.pth'))",
        "linear_relu_stack": stack_code(config.hidden, config.in_features, config.num_classes),
        "input": "ToTensor() images in [0, 1]: the input normalization, any BatchNorm and the "
        "calibration temperature are folded into the linear layers",
        "parity": parity,
    }


def chosen_options(train: Any) -> dict[str, Any]:
    """The train section as params.yaml states it, with each option table cut to the chosen
    option's block: what made this model, not every option it could have used."""
    try:
        cut = {
            table: {name: block for name, block in train[table].items() if name == train[choice]}
            for choice, table in OPTION_TABLES.items()
        }
    except (TypeError, KeyError, AttributeError):
        raise StageError(
            f"{PARAMS_FILE}: the train section is not one the schema accepts: run `dvc repro "
            "validate`, which names what to fix"
        ) from None
    return {**train, **cut}


def load_export_params(path: Path = PARAMS_FILE) -> tuple[Any, dict[str, Any]]:
    """export's sections, validated, and the params its model card records, in params.yaml's
    order: the validate stage, first in the pipeline, has checked the train section."""
    sections = load_sections(path, **SECTIONS)
    recorded = {
        **sections.model_dump(),
        "train": chosen_options(read_raw_params(path).get("train")),
    }
    return sections, {name: recorded[name] for name in CARD_SECTIONS}


def model_card(
    cfg: Export,
    params: dict[str, Any],
    config: MLPConfig,
    calibration: dict,
    parity: dict,
    lesson: dict,
    files: dict[str, str],
) -> dict:
    return {
        "name": "fashion-mnist-mlp",
        "source_model": cfg.model,
        "architecture": {"type": "MLP", **config.to_dict()},
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 1, IMAGE_SIDE, IMAGE_SIDE],
            "dtype": "float32",
            "range": [0.0, 1.0],
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(CLASSES)], "dtype": "float32"},
        "classes": list(CLASSES),
        "test_metrics": read_json(TEST_METRICS, "dvc repro evaluate"),
        "calibration": calibration,
        # ONNX Runtime picks its kernels by the CPU's instruction set, and the last digits of
        # its rounding with them: the card, a versioned output, keeps the bound it was held to
        "onnx_parity": {k: v for k, v in parity.items() if k != "max_abs_logit_diff"},
        "lesson_layout": lesson,
        "params": params,
        "data": read_json(SPLIT_MANIFEST, "dvc repro split"),
        "files_sha256": files,
    }


def calibrate(
    model: MLP, cfg: Export, test: Images, test_logits: torch.Tensor
) -> tuple[np.ndarray, dict]:
    """Fold export.calibrate's temperature into `model` (whose test logits are `test_logits`);
    the model's test logits then, and the calibration report (the temperature, NLL and ECE
    before and after)."""
    val = load_split(VAL_DATA)
    report = calibration_report(
        (predict_logits(model, val.images), val.labels),
        (test_logits, test.labels),
        fit=cfg.calibrate,
    )
    fold_temperature(model, report["temperature"])
    return predict_logits(model, test.images).numpy(), report


def main() -> None:
    params, recorded = load_export_params()
    pin(params.numerics)
    cfg = params.export
    source = MODELS[cfg.model]
    model, info = load_checkpoint(source)
    test = load_split(TEST_DATA)
    images = test.images.unsqueeze(1)  # the ONNX input's shape
    logits = predict_logits(model, images)
    check_finite(model, logits.numpy(), f"the {cfg.model} model ({source})")
    reference, calibration = calibrate(model, cfg, test, logits)
    temperature = calibration["temperature"]

    with atomic_dir(EXPORT_DIR) as staging:
        weights, onnx_file = staging / EXPORT_WEIGHTS.name, staging / EXPORT_ONNX.name
        if cfg.calibrate:
            save_model(model, weights, {**info, "temperature": temperature})
        else:
            copy_file(source, weights)
        export_onnx(model, onnx_file, cfg.opset)
        parity = check_parity(reference, onnx_logits(onnx_file, images.numpy()), cfg.atol, cfg.rtol)
        lesson = write_lesson_layout(model, staging, images, reference, cfg)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        write_json(
            staging / EXPORT_CARD.name,
            model_card(cfg, recorded, model.config, calibration, parity, lesson, files),
        )
    write_json(CALIBRATION_METRICS, calibration)
    print(
        f"exported the {cfg.model} model to {EXPORT_DIR}/ (temperature {temperature:g}, "
        f"{calibration['fitted_on']}): "
        f"ONNX and the lesson's NeuralNetwork match PyTorch on {parity['images']} test images "
        f"(max |diff| {max(parity['max_abs_logit_diff'], lesson['parity']['max_abs_logit_diff']):.2e})"
    )


if __name__ == "__main__":
    run_stage(main)
