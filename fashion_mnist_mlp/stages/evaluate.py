"""Stage 5: evaluate the trained and the SWA model on the untouched test set with torchmetrics.

Writes metrics/test.json (per model, under `trained_model` and `swa_model`: cross-entropy as
`loss`, whatever the training loss, so runs with different losses compare; the training loss's
own value as `objective`; accuracy, top-2 accuracy and macro F1; the calibration literature's
names beside them: `nll`, the same number as `loss`, and the expected calibration error `ece`)
and, under metrics/eval/, the data of the plots dvc.yaml declares: predictions for the
confusion matrices, per-class precision and recall, the reliability diagram and a grid of
misclassified test images per model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from fashion_mnist_mlp.cli import run_stage
from fashion_mnist_mlp.config.loader import load_sections
from fashion_mnist_mlp.config.losses import LossFn, TrainLoss, build_loss
from fashion_mnist_mlp.config.paths import (
    EVAL_PLOTS,
    MODELS,
    TEST_DATA,
    TEST_METRICS,
    TEST_METRICS_KEYS,
)
from fashion_mnist_mlp.config.sections import Evaluate, Numerics
from fashion_mnist_mlp.training.calibration import calibration_error, reliability_rows
from fashion_mnist_mlp.training.checkpoints import load_checkpoint
from fashion_mnist_mlp.training.data import Images, load_split
from fashion_mnist_mlp.training.fashion_mnist import CLASSES, IMAGE_SIDE
from fashion_mnist_mlp.training.files import atomic_dir, write_csv, write_json
from fashion_mnist_mlp.training.model import predict_logits
from fashion_mnist_mlp.training.numerics import pin

NUM_CLASSES = len(CLASSES)


def summary_metrics(
    logits: torch.Tensor, labels: torch.Tensor, objective: LossFn
) -> dict[str, float]:
    preds = logits.argmax(1)
    cross_entropy = F.cross_entropy(logits, labels).item()
    values = {
        "loss": cross_entropy,
        "objective": objective(logits, labels).item(),
        "accuracy": multiclass_accuracy(preds, labels, NUM_CLASSES, average="micro").item(),
        "top2_accuracy": multiclass_accuracy(
            logits, labels, NUM_CLASSES, average="micro", top_k=2
        ).item(),
        "f1_macro": multiclass_f1_score(preds, labels, NUM_CLASSES, average="macro").item(),
        "nll": cross_entropy,
        "ece": calibration_error(logits, labels),
    }
    return {name: round(value, 6) for name, value in values.items()}


def objective_name(loss: str, args: dict[str, object]) -> str:
    """The training loss as configured, e.g. `cross_entropy with label_smoothing 0.1`."""
    spelled = ", ".join(f"{key} {value}" for key, value in args.items())
    return f"{loss} with {spelled}" if spelled else loss


def summary_line(model: str, scores: dict[str, float], objective: str) -> str:
    """What evaluate prints per model: each number with what it measures."""
    return (
        f"{model}: test loss {scores['loss']:.4f} (cross-entropy), objective "
        f"{scores['objective']:.4f} ({objective}), accuracy {scores['accuracy']:.4f}, "
        f"f1_macro {scores['f1_macro']:.4f}, ECE {scores['ece']:.4f}"
    )


def per_class_rows(preds: torch.Tensor, labels: torch.Tensor) -> list[dict[str, object]]:
    """Per-class precision and recall; recall is the per-class accuracy."""
    precision = multiclass_precision(preds, labels, NUM_CLASSES, average=None)
    recall = multiclass_recall(preds, labels, NUM_CLASSES, average=None)
    return [
        {"class": name, "accuracy": round(r.item(), 6), "precision": round(p.item(), 6)}
        for name, p, r in zip(CLASSES, precision, recall, strict=True)
    ]


def draw_misclassified(
    path: Path, test: Images, preds: torch.Tensor, side: int, title: str
) -> None:
    """The first side x side misclassified test images, each under its true and predicted
    class: one mosaic in one Axes (36 subplots took matplotlib 3 s to lay out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = torch.nonzero(preds != test.labels).flatten()[: side * side].tolist()
    width, height = IMAGE_SIDE + 4, IMAGE_SIDE + 16  # pixels per cell: a margin, room for text
    mosaic = np.zeros((side * height, side * width), np.float32)
    fig = plt.figure(figsize=(1.6 * side, 1.8 * side + 0.3))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.8 * side / (1.8 * side + 0.3)))
    for n, i in enumerate(wrong):
        top, left = (n // side) * height + 14, (n % side) * width + 2
        mosaic[top : top + IMAGE_SIDE, left : left + IMAGE_SIDE] = test.images[i].numpy()
        ax.text(left + IMAGE_SIDE / 2, top - 1, f"{CLASSES[test.labels[i]]}\n→ {CLASSES[preds[i]]}",
                ha="center", va="bottom", fontsize=7, color="firebrick")  # fmt: skip
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(
        f"{title}: first {len(wrong)} misclassified test images (true → predicted)", fontsize=9
    )
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same bytes each run
    plt.close(fig)


def main() -> None:
    params = load_sections(numerics=Numerics, evaluate=Evaluate, train=TrainLoss)
    pin(params.numerics)
    cfg, objective = params.evaluate, build_loss(params.train)
    named = objective_name(params.train.loss, params.train.loss_args.model_dump())
    test = load_split(TEST_DATA)
    results = {}
    with atomic_dir(EVAL_PLOTS) as staging:
        for name, path in MODELS.items():
            model, _ = load_checkpoint(path)
            logits = predict_logits(model, test.images, cfg.batch_size)
            preds = logits.argmax(1)
            key = TEST_METRICS_KEYS[name]
            results[key] = summary_metrics(logits, test.labels, objective)
            write_csv(
                staging / f"confusion_{name}.csv",
                [
                    {"actual": CLASSES[a], "predicted": CLASSES[p]}
                    for a, p in zip(test.labels.tolist(), preds.tolist(), strict=True)
                ],
            )
            write_csv(staging / f"per_class_{name}.csv", per_class_rows(preds, test.labels))
            write_csv(staging / f"reliability_{name}.csv", reliability_rows(logits, test.labels))
            draw_misclassified(
                staging / f"misclassified_{name}.png", test, preds, cfg.misclassified_grid, name
            )
            print(summary_line(key, results[key], named))
        write_json(TEST_METRICS, results)


if __name__ == "__main__":
    run_stage(main)
