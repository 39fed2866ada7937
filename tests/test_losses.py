from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fashion_mnist_mlp.config.losses import LOSSES, build_loss
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.training.engine import evaluate
from fashion_mnist_mlp.training.model import MLP, MLPConfig

from .toolbox import losses_while_training, train_config

LOGITS = torch.tensor([[4.0, 0.0, -1.0], [0.0, 4.0, 1.0]])
LABELS = torch.tensor([0, 1])


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_lowers_itself_on_real_images(params: Params, small_data, name: str) -> None:
    cfg = train_config(params, loss=name, epochs=10)
    losses = losses_while_training(cfg, small_data[0], epochs=10)
    assert losses[-1] < 0.8 * losses[0], losses


def test_nll_on_log_softmax_is_plain_cross_entropy(params: Params) -> None:
    loss = build_loss(train_config(params, loss="nll"))(LOGITS, LABELS)
    torch.testing.assert_close(loss, F.cross_entropy(LOGITS, LABELS))


def test_label_smoothing_raises_the_loss_of_confident_right_answers(params: Params) -> None:
    smoothed = build_loss(train_config(params, loss="cross_entropy"))(LOGITS, LABELS)
    assert smoothed > F.cross_entropy(LOGITS, LABELS)


def test_kl_divergence_from_one_hot_targets_is_cross_entropy(params: Params) -> None:
    cfg = train_config(params, loss="kl_div", **{"losses.kl_div.label_smoothing": 0.0})
    torch.testing.assert_close(build_loss(cfg)(LOGITS, LABELS), F.cross_entropy(LOGITS, LABELS))


def test_mse_and_l1_compare_probabilities_with_one_hot_targets(params: Params) -> None:
    perfect = torch.tensor([[60.0, 0.0, 0.0]])  # softmax = one-hot of class 0, within float32
    for name in ("mse", "l1"):
        loss_fn = build_loss(train_config(params, loss=name))
        assert loss_fn(perfect, torch.tensor([0])).item() == pytest.approx(0, abs=1e-6)
        assert loss_fn(perfect, torch.tensor([1])).item() == pytest.approx(2, abs=1e-6)


def test_bce_takes_logits_and_stays_finite_where_sigmoid_saturates(params: Params) -> None:
    huge = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    loss = build_loss(train_config(params, loss="bce"))(huge, torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(huge.grad).all()
    assert loss.item() == pytest.approx(200 + 200 + 0.6931, rel=1e-3)  # one-vs-rest, summed


@pytest.mark.parametrize("name", ["mse", "l1", "bce", "kl_div"])
def test_a_model_trained_on_any_loss_classifies(params: Params, small_data, name: str) -> None:
    model = MLP(MLPConfig(hidden=(64,), pixel_mean=0.286, pixel_std=0.353))
    losses_while_training(train_config(params, loss=name, epochs=8), small_data[0], 8, model)
    assert evaluate(model, small_data[1]).accuracy > 0.7  # chance is 0.1
