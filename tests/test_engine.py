from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import build_optimizer
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.config.sections import Augment
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.engine import (
    augment,
    evaluate,
    seed_epoch,
    seed_everything,
    train_epoch,
)
from fashion_mnist_mlp.training.model import MLP, MLPConfig


def train_briefly(
    params: Params, data: tuple[Images, Images], epochs: int = 3, seed: int = 0
) -> tuple[MLP, list]:
    train, val = data
    seed_everything(seed, torch.device("cpu"))
    model = MLP(MLPConfig(hidden=(64,)))
    loss_fn = build_loss(params.train)
    opt = build_optimizer(model.parameters(), params.train, lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    history = [train_epoch(model, train, loss_fn, opt, 64, gen) for _ in range(epochs)]
    return model, [*history, evaluate(model, val)]


def test_training_on_real_images_learns(params: Params, small_data) -> None:
    _, history = train_briefly(params, small_data)
    *epochs, val = history
    assert epochs[-1].loss < epochs[0].loss
    assert val.accuracy > 0.6  # 10 classes: chance is 0.1


def test_same_seed_same_weights(params: Params, small_data) -> None:
    a, _ = train_briefly(params, small_data, epochs=1)
    b, _ = train_briefly(params, small_data, epochs=1)
    c, _ = train_briefly(params, small_data, epochs=1, seed=1)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_augment_flips_and_shifts_within_bounds() -> None:
    x = torch.zeros(64, 28, 28)
    x[:, 10:18, 4:8] = 1.0  # a bar left of centre
    out = augment(x, Augment(hflip=True, max_shift=2), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out.sum((1, 2)), x.sum((1, 2)))  # shifts of <= 2 px keep the bar inside
    cols = out.sum(1).argmax(1)  # leftmost column of the bar after augmentation
    assert (cols <= 6).any() and (cols >= 18).any()  # some kept left, some flipped right
    assert len(set(cols.tolist())) > 2  # and shifted


def test_bf16_autocast_training_learns_and_keeps_fp32_weights(params: Params, small_data) -> None:
    train, val = small_data
    seed_everything(0, torch.device("cpu"))
    model = MLP(MLPConfig(hidden=(64,), dropout=0.1))
    loss_fn = build_loss(params.train)
    opt = build_optimizer(model.parameters(), params.train, lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    history = [train_epoch(model, train, loss_fn, opt, 64, gen, bf16=True) for _ in range(3)]
    assert history[-1].loss < history[0].loss
    assert evaluate(model, val).accuracy > 0.6
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_augment_off_returns_the_batch_and_leaves_the_generator_alone() -> None:
    x, gen = torch.rand(8, 28, 28), torch.Generator().manual_seed(0)
    assert augment(x, Augment(hflip=False, max_shift=0), gen) is x
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())


def test_augment_flip_only_and_shift_only() -> None:
    x = torch.zeros(64, 28, 28)
    x[:, 10:18, 4:8] = 1.0
    flipped = augment(x, Augment(hflip=True, max_shift=0), torch.Generator().manual_seed(0))
    assert {c for c in flipped.sum(1).argmax(1).tolist()} == {4, 20}  # as is, or mirrored
    shifted = augment(x, Augment(hflip=False, max_shift=1), torch.Generator().manual_seed(0))
    assert set(shifted.sum(1).argmax(1).tolist()) <= {3, 4, 5}


def test_every_random_stream_is_seeded_differently() -> None:
    # SeedSequence pads trailing zeros: (seed, epoch) and (seed, epoch, 0) would be one stream
    for seed, epoch in [(0, 1), (42, 3), (7, 40)]:
        states = set()
        for stage in ("train", "swa"):
            shuffle = seed_epoch(seed, epoch, stage)
            states |= {shuffle.initial_seed(), torch.initial_seed()}
        assert len(states) == 4, (seed, epoch)


def test_validation_loss_is_plain_cross_entropy_whatever_the_objective(
    params: Params, small_data
) -> None:
    _, val = small_data
    model, history = train_briefly(params, small_data, epochs=1)
    logits = model.eval()(val.images)
    assert history[-1].loss == pytest.approx(F.cross_entropy(logits, val.labels).item(), rel=1e-5)
    # label smoothing 0.1 is on: the objective is higher than the plain loss it is logged beside
    assert params.train.losses.cross_entropy.label_smoothing > 0
    assert history[0].objective > history[0].loss
