"""How far a model's probabilities can be trusted, and temperature scaling to make them so.

Expected calibration error (ECE): test images binned by their top probability (confidence),
the count-weighted mean |accuracy - confidence| over the bins (torchmetrics, 15 equal bins).
Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar T
dividing the logits, fitted to the validation split's negative log-likelihood. Dividing by T
changes no argmax, so no prediction and no accuracy change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
"""Where the fit looks: beyond it a model is broken, not miscalibrated."""


def calibration_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    probs = logits.double().softmax(1)
    return multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=BINS).item()


def reliability_rows(logits: torch.Tensor, labels: torch.Tensor) -> list[dict[str, float]]:
    """The reliability diagram's data: per non-empty confidence bin, the mean confidence, the
    accuracy and the share of images. The bins are torchmetrics' for the ECE: float32
    confidences, left-closed bins [k/15, (k+1)/15), and a bin of its own for exactly 1.0."""
    confidence, preds = logits.double().softmax(1).max(1)
    confidence = confidence.float()
    correct = (preds == labels).double()
    bins = torch.bucketize(confidence, torch.linspace(0, 1, BINS + 1), right=True) - 1
    rows = []
    for b in range(BINS + 1):
        members = bins == b
        if members.any():
            rows.append({
                "confidence": round(confidence[members].double().mean().item(), 6),
                "accuracy": round(correct[members].mean().item(), 6),
                "share": round(members.double().mean().item(), 6),
            })  # fmt: skip
    return rows


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, str]:
    """The T in TEMPERATURE_RANGE that minimizes the mean NLL of logits / T, and where it came
    from. The NLL is convex in 1/T, so a golden-section search over 1/T finds it; in float64,
    deterministic. A minimum at the range's edge (a validation split the model gets all right,
    an untrained model, degenerate logits) or non-finite logits leave T = 1 with the reason:
    such a fit would ship a model far more (or less) confident than it is."""
    if not torch.isfinite(logits).all():
        return 1.0, "not fitted: the validation logits are not all finite"

    def nll(inverse: float) -> float:
        return F.cross_entropy(logits.double() * inverse, labels).item()

    low, high = 1 / TEMPERATURE_RANGE[1], 1 / TEMPERATURE_RANGE[0]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    nll_a, nll_b = nll(a), nll(b)
    for _ in range(80):  # the bracket shrinks by 0.618 each time: far below 1e-12 of 1/T
        if nll_a < nll_b:
            high, b, nll_b = b, a, nll_a
            a = high - ratio * (high - low)
            nll_a = nll(a)
        else:
            low, a, nll_a = a, b, nll_b
            b = low + ratio * (high - low)
            nll_b = nll(b)
    temperature = 1 / ((low + high) / 2)
    if not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01:
        accuracy = (logits.argmax(1) == labels).double().mean().item()
        return 1.0, (
            f"not fitted: the best T lies at the edge of {TEMPERATURE_RANGE} ({temperature:.3g}) "
            f"for {len(labels)} validation images scored {accuracy:.1%} right; a larger "
            "split.val_size or a trained model gives something to calibrate against"
        )
    return round(temperature, 6), "validation split"


def calibration_report(
    val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], fit: bool
) -> dict[str, object]:
    """The temperature (fitted on the validation (logits, labels) when `fit`, else 1) and what
    it does to the validation NLL and to the test NLL and ECE; also the validation accuracy,
    which no temperature changes (the search's objective: fashion_mnist_mlp/tools/search.py)."""
    temperature, fitted_on = (
        fit_temperature(*val) if fit else (1.0, "not fitted (export.calibrate: false)")
    )

    def scores(logits: torch.Tensor, labels: torch.Tensor, t: float) -> dict[str, float]:
        scaled = logits.double() / t
        nll = F.cross_entropy(scaled, labels).item()
        return {"nll": round(nll, 6), "ece": round(calibration_error(scaled, labels), 6)}

    return {
        "temperature": temperature,
        "fitted_on": fitted_on,
        "validation": {
            "accuracy": round((val[0].argmax(1) == val[1]).double().mean().item(), 6),
            "before": scores(*val, 1.0),
            "after": scores(*val, temperature),
        },
        "test": {"before": scores(*test, 1.0), "after": scores(*test, temperature)},
    }
