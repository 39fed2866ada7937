"""Calibration: ECE and the reliability diagram on constructed data, and temperature scaling."""

from __future__ import annotations

import math

import pytest
import torch

from fashion_mnist_mlp.training.calibration import (
    BINS,
    calibration_error,
    calibration_report,
    fit_temperature,
    reliability_rows,
)


def logits_with_confidence(confidence: float, n: int, classes: int = 10) -> torch.Tensor:
    """Logits whose softmax puts `confidence` on class 0 and spreads the rest evenly."""
    rest = (1 - confidence) / (classes - 1)
    row = torch.full((classes,), math.log(rest))
    row[0] = math.log(confidence)
    return row.repeat(n, 1)


def test_ece_is_the_gap_between_confidence_and_accuracy() -> None:
    logits = logits_with_confidence(0.9, 1000)
    labels = torch.zeros(1000, dtype=torch.long)
    labels[:400] = 1  # 60 % right at 90 % confidence
    assert calibration_error(logits, labels) == pytest.approx(0.3, abs=1e-4)
    (row,) = reliability_rows(logits, labels)
    assert row == {"confidence": pytest.approx(0.9), "accuracy": 0.6, "share": 1.0}


def test_reliability_rows_cover_every_image_once() -> None:
    logits = torch.randn(5000, 10, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(1))
    rows = reliability_rows(logits, labels)
    assert 1 < len(rows) <= BINS + 1 and sum(r["share"] for r in rows) == pytest.approx(1, abs=1e-5)
    confidences = [r["confidence"] for r in rows]
    assert confidences == sorted(confidences)
    shares = torch.tensor([r["share"] for r in rows], dtype=torch.float64)
    gaps = torch.tensor([abs(r["accuracy"] - r["confidence"]) for r in rows], dtype=torch.float64)
    assert (shares * gaps).sum().item() == pytest.approx(
        calibration_error(logits, labels), abs=1e-5
    )


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at(
    true_temperature: float,
) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40_000, 10, generator=generator) * 4
    labels = torch.multinomial((logits / true_temperature).softmax(1), 1, generator=generator)[:, 0]
    temperature, fitted_on = fit_temperature(logits, labels)
    assert temperature == pytest.approx(true_temperature, rel=0.05)
    assert fitted_on == "validation split"


def test_temperature_scaling_lowers_the_nll_and_changes_no_prediction() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=generator) * 4
    labels = torch.multinomial((logits / 2).softmax(1), 1, generator=generator)[:, 0]
    val, test = (logits[:10_000], labels[:10_000]), (logits[10_000:], labels[10_000:])
    report = calibration_report(val, test, fit=True)
    assert report["temperature"] == pytest.approx(2, rel=0.05)
    for split in ("validation", "test"):
        before, after = report[split]["before"], report[split]["after"]
        assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 3
    assert torch.equal((logits / report["temperature"]).argmax(1), logits.argmax(1))
    unfitted = calibration_report(val, test, fit=False)
    assert unfitted["temperature"] == 1.0
    assert unfitted["test"]["before"] == unfitted["test"]["after"]


def test_the_diagram_bins_are_the_eces_even_for_confident_models() -> None:
    """torchmetrics bins float32 confidences: 1 - 1e-9 is exactly 1.0, a bin of its own."""
    logits = torch.cat([logits_with_confidence(0.95, 1000), logits_with_confidence(1 - 1e-9, 1000)])
    labels = torch.zeros(2000, dtype=torch.long)
    labels[1000:1050] = 1  # 95 % right at (almost) 100 % confidence
    rows = reliability_rows(logits, labels)
    gaps = sum(r["share"] * abs(r["accuracy"] - r["confidence"]) for r in rows)
    assert len(rows) == 2 and gaps == pytest.approx(calibration_error(logits, labels), abs=1e-5)
    assert calibration_error(logits, labels) == pytest.approx(0.05, abs=1e-4)


@pytest.mark.parametrize("case", ["all right", "wrong", "constant", "nan"])
def test_a_temperature_at_the_edge_of_its_range_is_not_used(case: str) -> None:
    """A validation split the model gets all right pushes T to its lower bound (an export 20
    times more confident than the model), an untrained model to its upper one: T stays 1, and
    the report says why."""
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0)) * 5
    labels = logits.argmax(1) if case != "wrong" else (logits.argmax(1) + 1) % 10
    if case == "constant":
        logits = torch.zeros(50, 10)
    if case == "nan":
        logits[3, 2] = float("nan")
    temperature, fitted_on = fit_temperature(logits, labels)
    assert temperature == 1.0 and fitted_on.startswith("not fitted: ")
