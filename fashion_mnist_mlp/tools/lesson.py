"""The lesson's setup as `-S` overrides, and the path from it to params.yaml's default, one
change at a time.

The lesson trains the 784-512-512-10 MLP for 10 epochs with plain SGD (lr 1e-3, no momentum,
no weight decay), batch 64 and `nn.CrossEntropyLoss()`, on ToTensor's [0, 1] pixels, with no
schedule, dropout, BatchNorm, augmentation, averaging or calibration. `STEPS` start there and
add one of the default's choices each, so the last step is the default itself; `make ablation`
(bench/ablation.py) runs them and writes docs/benchmarks.md's table.

    python -m fashion_mnist_mlp.tools.lesson [dvc exp run options]    # make lesson: the lesson as experiment 'lesson'
"""

from __future__ import annotations

import subprocess
import sys

LESSON: dict[str, object] = {
    "train.optimizer": "sgd",
    "train.lr": 1e-3,
    "train.optimizers.sgd.momentum": 0.0,
    "train.optimizers.sgd.nesterov": False,
    "train.optimizers.sgd.weight_decay": 0.0,
    "train.batch_size": 64,
    "train.epochs": 10,
    "train.loss": "cross_entropy",
    "train.losses.cross_entropy.label_smoothing": 0.0,
    "train.scheduler": "none",
    "train.augment.hflip": False,
    "train.augment.max_shift": 0,
    "model.dropout": 0.0,
    "model.batch_norm": False,
    "model.normalize_input": False,
    "swa.epochs": 0,
    "export.calibrate": False,
}
"""The lesson's hyperparameters and model, as overrides of params.yaml."""

STEPS: list[tuple[str, str, dict[str, object]]] = [
    ("lesson", "the lesson: SGD lr 1e-3, batch 64, 10 epochs, plain cross-entropy", LESSON),
    ("adamw", "AdamW (its block: lr 0.004, decoupled weight decay 0.05)",
     {"train.optimizer": "adamw", "train.lr": "auto"}),
    ("onecycle", "one-cycle schedule (peak at 25 %)", {"train.scheduler": "onecycle"}),
    ("batch-512", "batch 512", {"train.batch_size": 512}),
    ("epochs-40", "40 epochs", {"train.epochs": 40}),
    ("normalize", "input standardization (training split's mean/std)",
     {"model.normalize_input": True}),
    ("batch-norm", "BatchNorm after each hidden layer", {"model.batch_norm": True}),
    ("dropout", "dropout 0.3", {"model.dropout": 0.3}),
    ("smoothing", "label smoothing 0.1", {"train.losses.cross_entropy.label_smoothing": 0.1}),
    ("swa", "SWA: 10 more epochs averaged, BatchNorm refreshed", {"swa.epochs": 10}),
    ("calibrate", "temperature scaling on export (= the default)", {"export.calibrate": True}),
]  # fmt: skip
"""(name, what the step adds, its overrides): each step keeps every change before it."""

TRIED: list[tuple[str, str, dict[str, object]]] = [
    ("augment", "augmentation (flips, shifts of 2 px) on top of the default",
     {"train.augment.hflip": True, "train.augment.max_shift": 2}),
]  # fmt: skip
"""Changes measured on top of the default and not kept: why the default goes without them."""


def cumulative() -> dict[str, dict[str, object]]:
    """Step name -> every override in force at that step (the lesson's, updated by each step
    up to it), then each tried change on top of the last step's."""
    runs, current = {}, {}
    for name, _, changes in STEPS:
        current = {**current, **changes}
        runs[name] = current
    return runs | {name: {**current, **changes} for name, _, changes in TRIED}


def spelled(overrides: dict[str, object]) -> dict[str, str]:
    """Each value as `-S key=value` must spell it for YAML to read it back (true, not True)."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in overrides.items()}


def set_flags(overrides: dict[str, object]) -> list[str]:
    """`-S key=value` arguments."""
    return [arg for key, value in spelled(overrides).items() for arg in ("-S", f"{key}={value}")]


def main(argv: list[str]) -> int:
    """The lesson as one named experiment, run in a temporary copy so the workspace keeps its
    params (`dvc exp show` lists it; `dvc exp apply lesson` brings it into the workspace)."""
    command = ["dvc", "exp", "run", "--temp", "-n", "lesson", *set_flags(LESSON), *argv]
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
