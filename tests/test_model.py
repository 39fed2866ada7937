from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fashion_mnist_mlp.training.model import MLP, Dropout, MLPConfig, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_keeps_one_minus_p_and_preserves_the_mean(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(512, 512)
    y = Dropout(p).train()(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)


def test_dropout_is_identity_in_eval_mode_and_seeded_in_train_mode() -> None:
    x = torch.randn(64, 32)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        masks.append(Dropout(0.3).train()(x) != 0)
    assert torch.equal(*masks)


def test_dropout_gradient_flows_through_kept_units_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 64, requires_grad=True)
    y = Dropout(0.4).train()(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y.detach() != 0)
    assert torch.allclose(x.grad[x.grad != 0], torch.tensor(1 / 0.6))


def test_dropout_keeps_the_dtype_under_bf16() -> None:
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    assert Dropout(0.3).train()(x).dtype == torch.bfloat16


def test_mlp_state_dict_is_the_plain_linear_layers() -> None:
    # The fast Dropout holds no state: checkpoints stay loadable by a model built with nn.Dropout.
    model = MLP(MLPConfig(hidden=(512, 512), dropout=0.3))
    plain = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.3), nn.Linear(512, 10),
    )  # fmt: skip
    keys = {k.removeprefix("net.") for k in model.state_dict()}
    assert keys == set(plain.state_dict())


@pytest.mark.parametrize("stage", ["download", "split"])
def test_data_stages_start_without_importing_torch(stage: str) -> None:
    code = f"import sys, fashion_mnist_mlp.stages.{stage}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_dropout_masks_of_any_size_are_independent_lane_by_lane() -> None:
    # four elements share one 64-bit draw: their keeps must not be related
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([1001, 999]), 0.3)  # not a multiple of the 4 lanes
    assert mask.shape == (1001, 999)
    kept = (mask != 0).flatten().float()
    assert kept.mean().item() == pytest.approx(0.7, abs=0.003)
    for lag in (1, 2, 3, 4):
        together = (kept[:-lag] * kept[lag:]).mean().item()
        assert together == pytest.approx(0.49, abs=0.004), lag
    torch.manual_seed(0)
    assert torch.equal(keep_mask(torch.Size([1001, 999]), 0.3), mask)  # seeded
