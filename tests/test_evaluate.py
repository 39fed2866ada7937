"""The evaluate stage's names: metrics/test.json's keys apart from the training log's, and a log
line that says what each loss measures."""

from __future__ import annotations

import json
from pathlib import Path

from fashion_mnist_mlp.config.paths import TEST_METRICS

from .conftest import Workdir


def test_test_scores_are_keyed_apart_from_the_training_logs_train_keys(evaluated: Path) -> None:
    """dvclive's metrics/train/ holds `train.acc` (training batches); `dvc exp show` puts both
    files in one table, so the trained model's test scores must not be `train.*` there."""
    scores = json.loads((evaluated / TEST_METRICS).read_text())
    assert list(scores) == ["trained_model", "swa_model"]


def test_the_log_says_what_each_loss_is(work_with_models: Workdir) -> None:
    """Plain cross-entropy and the objective (cross_entropy with label smoothing here) side by
    side, each named; the numbers are test.json's."""
    result = work_with_models.run("evaluate")
    assert result.returncode == 0, result.stderr
    scores = json.loads((work_with_models.path / TEST_METRICS).read_text())
    lines = result.stdout.splitlines()
    for key, values in scores.items():
        expected = (
            f"{key}: test loss {values['loss']:.4f} (cross-entropy), objective "
            f"{values['objective']:.4f} (cross_entropy with label_smoothing 0.1), accuracy "
        )
        assert any(line.startswith(expected) for line in lines), result.stdout
