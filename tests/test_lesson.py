"""The lesson's save and load: our models folded into the lesson's NeuralNetwork weights."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from fashion_mnist_mlp.training.lesson_model import (
    NeuralNetwork,
    lesson_state_dict,
    stack_code,
    torch_save_bytes,
)
from fashion_mnist_mlp.training.model import MLP, MLPConfig, fold_temperature

from .toolbox import LESSON_CLASS


def lesson_class() -> type[nn.Module]:
    namespace: dict = {}
    exec(LESSON_CLASS, namespace)  # the lesson's own source
    return namespace["NeuralNetwork"]


def trained_looking(config: MLPConfig) -> MLP:
    """A model whose every folded piece is far from the identity: weights, normalization."""
    torch.manual_seed(0)
    model = MLP(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_the_lessons_own_class_loads_it_and_computes_the_same_logits(small_data) -> None:
    model = trained_looking(
        MLPConfig(dropout=0.3, input_dropout=0.1, pixel_mean=0.29, pixel_std=0.35)
    )
    fold_temperature(model, 1.7)
    data = torch_save_bytes(lesson_state_dict(model))
    lesson = lesson_class()()
    lesson.load_state_dict(torch.load(io.BytesIO(data)))  # the lesson's call: default weights_only
    lesson.eval()
    images = small_data[1].images.unsqueeze(1)  # ToTensor's (N, 1, 28, 28) in [0, 1]
    torch.testing.assert_close(lesson(images), model(images), atol=1e-4, rtol=0)
    assert torch_save_bytes(lesson_state_dict(model)) == data  # same weights, same bytes


def test_batch_norm_is_folded_into_the_layer_before_it(small_data) -> None:
    model = trained_looking(MLPConfig(hidden=(64, 32), pixel_mean=0.3, pixel_std=0.4))
    stacked = nn.Sequential(*[
        m for layer in model.net for m in ([layer, nn.BatchNorm1d(layer.out_features)]
        if isinstance(layer, nn.Linear) and layer.out_features != 10 else [layer])
    ])  # fmt: skip
    with torch.no_grad():
        for bn in (m for m in stacked if isinstance(m, nn.BatchNorm1d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    model.net = stacked.eval()
    lesson = NeuralNetwork((64, 32)).eval()
    lesson.load_state_dict(lesson_state_dict(model))
    images = small_data[1].images
    torch.testing.assert_close(lesson(images), model(images), atol=1e-4, rtol=0)


@pytest.mark.parametrize("hidden", [(64,), (128, 64, 32)])
def test_other_widths_load_into_the_sequential_the_card_names(hidden, small_data) -> None:
    model = trained_looking(MLPConfig(hidden=hidden, pixel_mean=0.3, pixel_std=0.4))
    code = stack_code(hidden, 784, 10)
    stack = eval(code, {"nn": nn})  # the card's own code, as a user would paste it
    state = {k.removeprefix("linear_relu_stack."): v for k, v in lesson_state_dict(model).items()}
    stack.load_state_dict(state)
    images = small_data[1].images
    torch.testing.assert_close(stack(images.flatten(1)), model(images), atol=1e-4, rtol=0)
