from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.loader import read_raw_params
from fashion_mnist_mlp.config.params import load_params
from fashion_mnist_mlp.stages.export import (
    CARD_SECTIONS,
    check_finite,
    check_parity,
    chosen_options,
    export_onnx,
    load_export_params,
    onnx_logits,
)
from fashion_mnist_mlp.training.model import MLP, MLPConfig, predict_logits

from .conftest import Workdir


@pytest.mark.parametrize("batch_norm", [False, True])
def test_onnx_matches_pytorch_for_any_batch_size(tmp_path: Path, small_data, batch_norm) -> None:
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(64, 32), dropout=0.3, batch_norm=batch_norm))
    with torch.no_grad():  # running statistics far from BatchNorm's initial 0 and 1
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    model.eval()
    export_onnx(model, tmp_path / "m.onnx", opset=18)
    for n in (1, 7, 200):  # the batch axis is dynamic
        images = small_data[1].images[:n].unsqueeze(1)
        reference = predict_logits(model, images).numpy()
        result = check_parity(
            reference, onnx_logits(tmp_path / "m.onnx", images.numpy()), atol=1e-4, rtol=0
        )
        assert result["predictions_equal"] and result["max_abs_logit_diff"] <= 1e-4


def test_parity_failure_reports_the_largest_difference() -> None:
    reference = np.zeros((4, 10), np.float32)
    reference[:, 0] = 1.0
    other = reference.copy()
    other[2, 5] = 0.25
    with pytest.raises(
        StageError,
        match=r"max \|logit difference\| 0\.25 \(allowed: export\.atol 0\.0001 \+ export\.rtol "
        r"1e-05 x max \|logit\| 1 = 0\.00011\), 0 of 4 .* the runtimes disagree",
    ):
        check_parity(reference, other, atol=1e-4, rtol=1e-5)
    other[3, 9] = 2.0
    with pytest.raises(StageError, match="1 of 4 predictions differ"):
        check_parity(reference, other, atol=10.0, rtol=0)


def test_parity_scales_with_the_logits() -> None:
    # large logits (a high-lr model) carry float32 rounding in proportion: 1.2e-4 on logits
    # near 100 is 1 ulp-scale noise, not a broken export
    reference = np.zeros((4, 10), np.float32)
    reference[:, 0] = 100.0
    other = reference.copy()
    other[1, 3] = 1.2e-4
    assert check_parity(reference, other, atol=1e-4, rtol=1e-5)["allowed_diff"] == pytest.approx(
        1.1e-3
    )
    with pytest.raises(StageError, match=r"a float32 rounding difference: raise export\.atol"):
        check_parity(reference, other, atol=1e-4, rtol=0)


def test_the_graph_is_the_same_bytes_from_any_checkout_at_any_opset(
    tmp_path: Path, small_data
) -> None:
    """Three hidden layers, BatchNorm and dropout, at the schema's newest opset: ONNX Runtime
    matches PyTorch, and a second export (another path) writes the same bytes."""
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(24, 16, 8), dropout=0.2, batch_norm=True)).eval()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    export_onnx(model, tmp_path / "a" / "m.onnx", opset=28)
    export_onnx(model, tmp_path / "b" / "m.onnx", opset=28)
    content = (tmp_path / "a" / "m.onnx").read_bytes()
    assert content == (tmp_path / "b" / "m.onnx").read_bytes()
    assert b"stages/" not in content and str(tmp_path).encode() not in content
    images = small_data[1].images[:50].unsqueeze(1)
    onnx = onnx_logits(tmp_path / "a" / "m.onnx", images.numpy())
    reference = predict_logits(model, images).numpy()
    assert check_parity(reference, onnx, atol=1e-4, rtol=0)["predictions_equal"]


def test_parity_check_counts_nan_as_a_difference() -> None:
    reference = np.full((4, 10), np.nan, np.float32)
    with pytest.raises(StageError, match=r"max \|logit difference\| inf"):
        check_parity(reference, reference.copy(), atol=1e-4, rtol=1e-5)


def test_a_diverged_model_is_not_exported(tmp_path: Path, small_data) -> None:
    model = MLP(MLPConfig(hidden=(8,)))
    with torch.no_grad():
        model.net[1].weight[0, 0] = float("nan")
    logits = predict_logits(model, small_data[1].images).numpy()
    with pytest.raises(StageError, match=r"non-finite weights \(net\.1\.weight\): it diverged"):
        check_finite(model, logits, "the swa model")
    with pytest.raises(StageError, match="non-finite outputs"):
        check_finite(MLP(MLPConfig(hidden=(8,))), logits, "the swa model")


@pytest.mark.parametrize("scheduler", ["lambda", "none"])
def test_the_card_records_the_chosen_options_blocks_and_every_other_value(
    tmp_path: Path, scheduler: str
) -> None:
    """Only the chosen optimizer's, loss's and scheduler's blocks, as params.yaml spells them
    (`lambda`, not the schema's attribute `lambda_`); every other value as the whole schema
    reads it, so the card keeps its bytes without importing the option tables."""
    work = Workdir.with_project_params(tmp_path)
    work.set("train.optimizer", "sgd")
    work.set("train.scheduler", scheduler)
    path = tmp_path / "params.yaml"
    raw, validated = read_raw_params(path)["train"], load_params(path)
    sections, recorded = load_export_params(path)

    assert list(recorded) == list(CARD_SECTIONS) and sections.export == validated.export
    train = recorded["train"]
    assert train["optimizers"] == {"sgd": raw["optimizers"]["sgd"]}
    assert train["losses"] == {"cross_entropy": raw["losses"]["cross_entropy"]}
    expected = {"lambda": {"formula": "0.95 ** epoch"}} if scheduler == "lambda" else {}
    assert train["schedulers"] == expected
    tables = {"optimizers", "losses", "schedulers"}
    assert {k: v for k, v in train.items() if k not in tables} == {
        k: v for k, v in validated.train.model_dump().items() if k not in tables
    }
    assert list(train) == list(raw)  # params.yaml's order
    for name in set(CARD_SECTIONS) - {"train"}:
        assert recorded[name] == getattr(validated, name).model_dump(), name


def test_a_train_section_the_schema_refuses_is_sent_to_validate() -> None:
    with pytest.raises(StageError, match=r"the train section .* run `dvc repro validate`"):
        chosen_options({"optimizer": "sgd", "loss": "nll", "scheduler": "none"})
    with pytest.raises(StageError, match="dvc repro validate"):
        chosen_options(None)
