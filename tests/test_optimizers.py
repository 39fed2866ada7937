from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fashion_mnist_mlp.config.losses import build_loss
from fashion_mnist_mlp.config.optimizers import (
    OPTIMIZERS,
    averaged_copy,
    build_optimizer,
    load_average,
)
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.training.engine import step
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.schedule import build_schedule

from .toolbox import losses_while_training, train_config


def built(params: Params, name: str, **changes: object) -> torch.optim.Optimizer:
    cfg = train_config(params, optimizer=name, **changes)
    return build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_gets_its_own_arguments(params: Params, name: str) -> None:
    opt = built(params, name)
    assert type(opt).__name__ == OPTIMIZERS[name].torch_name
    block = getattr(params.train.optimizers, name)
    for key, value in block.torch_kwargs().items():  # lr and weight decay included
        assert opt.param_groups[0][key] == value, key
    implementation = OPTIMIZERS[name].implementation
    if implementation is not None:
        assert opt.defaults[implementation] is True
    override = train_config(params, optimizer=name, lr=0.123)
    assert override.learning_rate == 0.123
    assert f"train.optimizers.{name}.lr is not used" in " ".join(override.unused_params())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_lowers_the_loss_on_real_images(
    params: Params, small_data, name: str
) -> None:
    """Switching the name alone gives an optimizer that learns: its own lr from its block, under
    the project's schedule (one-cycle, whose warm-up large lrs such as asgd's rely on)."""
    cfg = train_config(params, optimizer=name, epochs=10)
    losses = losses_while_training(cfg, small_data[0], epochs=10)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", [n for n, k in OPTIMIZERS.items() if k.args.momentum_key])
def test_onecycle_keeps_the_momentum_params_yaml_sets(params: Params, name: str) -> None:
    cfg = train_config(params, optimizer=name, scheduler="onecycle")
    key = cfg.optimizer_args.momentum_key
    opt = built(params, name, scheduler="onecycle")
    build_schedule(opt, cfg, steps_per_epoch=10)
    expected = getattr(cfg.optimizer_args, key)
    assert opt.param_groups[0][key] == (tuple(expected) if key == "betas" else expected)


def test_momentum_cycling_when_asked_drives_beta1_and_says_so(params: Params) -> None:
    changes = {"scheduler": "onecycle", "schedulers.onecycle.cycle_momentum": True}
    cfg = train_config(params, optimizer="adamw", **changes)
    opt = built(params, "adamw", **changes)
    build_schedule(opt, cfg, steps_per_epoch=10)
    assert opt.param_groups[0]["betas"][0] == cfg.schedulers.onecycle.max_momentum
    (note,) = cfg.unused_params()
    assert "train.optimizers.adamw.betas[0] is not used" in note


def test_rprop_says_that_schedulers_do_not_shape_it(params: Params) -> None:
    notes = train_config(params, optimizer="rprop", scheduler="cosine").unused_params()
    assert any("does not shape rprop's steps" in n for n in notes)
    assert train_config(params, optimizer="rprop", scheduler="none").unused_params() == []


def test_the_note_on_torch_sqrt_comes_from_the_table(
    params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numerics.cpu = portable notes the optimizers whose step takes torch.sqrt (their bytes
    hold on one CPU model): what each table entry says, so a new entry needs nothing else."""
    assert train_config(params, optimizer="adamw").sqrt_note is None
    lbfgs = train_config(params, optimizer="lbfgs", **{"optimizers.lbfgs.line_search_fn": None})
    assert lbfgs.sqrt_note is None
    monkeypatch.setitem(OPTIMIZERS, "adamw", replace(OPTIMIZERS["adamw"], sqrt=True))
    note = train_config(params, optimizer="adamw").sqrt_note
    assert note.startswith("adamw's update takes torch.sqrt, whose MKL kernel rounds differently")
    assert note.endswith(
        "(sgd, adam, adamax, adagrad, asgd, rprop and lbfgs without line search are portable)"
    )


def test_lbfgs_evaluates_the_batch_several_times_per_step_with_the_same_dropout(
    params: Params, small_data
) -> None:
    """The closure's function must not change between evaluations within a step, or the line
    search compares losses of different networks: dropout masks are drawn from one RNG state."""
    cfg = train_config(params, optimizer="lbfgs")
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(32,), dropout=0.5))
    opt = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    states: list[torch.Tensor] = []
    dropout = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
    dropout.register_forward_pre_hook(lambda module, inputs: states.append(torch.get_rng_state()))
    x, y = small_data[0].images[:64], small_data[0].labels[:64]
    step(model, x, y, build_loss(cfg), opt, 1.0, bf16=False)
    assert len(states) > 1  # several evaluations in one step
    assert all(torch.equal(states[0], s) for s in states[1:])


@pytest.mark.parametrize("t0", [0, 3])
def test_asgd_is_scored_and_written_as_its_running_average(
    params: Params, small_data, t0: int
) -> None:
    """ASGD's model is its average of the weights after every step past step t0 + 1 (torch's
    rule; until then the average is the weights themselves); other optimizers have none."""
    cfg = train_config(params, optimizer="asgd", **{"optimizers.asgd.t0": t0, "lr": 0.05})
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(16,)))
    opt = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    averaged = averaged_copy(model, opt)
    x, y = small_data[0].images[:256], small_data[0].labels[:256]
    after_steps = []
    for i in range(6):
        batch = slice(i * 32, (i + 1) * 32)
        step(model, x[batch], y[batch], build_loss(cfg), opt, 1.0, bf16=False)
        after_steps.append(model.net[1].weight.detach().clone())
    load_average(averaged, model, opt)
    torch.testing.assert_close(averaged.net[1].weight, torch.stack(after_steps[t0 + 1 :]).mean(0))
    assert not torch.equal(averaged.net[1].weight, after_steps[-1])
    assert torch.equal(model.net[1].weight, after_steps[-1])  # training goes on unaveraged
    sgd = build_optimizer(model.parameters(), train_config(params, optimizer="sgd"), 0.1)
    assert averaged_copy(model, sgd) is None


def test_lbfgs_updates_batch_norm_statistics_once_per_step(params: Params, small_data) -> None:
    """The closure runs several times per step, line-search trials included: BatchNorm's
    running statistics take one update, from the first evaluation (the weights before the step)."""
    cfg = train_config(params, optimizer="lbfgs")
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(32,), batch_norm=True, pixel_mean=0.3, pixel_std=0.35))
    opt = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    x, y = small_data[0].images[:128], small_data[0].labels[:128]
    with torch.no_grad():
        first = model.net[1](model.net[0]((x - 0.3) / 0.35)).mean(0)
    norm = model.net[2]
    step(model, x, y, build_loss(cfg), opt, 1.0, bf16=False)
    torch.testing.assert_close(norm.running_mean, 0.1 * first)  # from 0: one update of 0.1
    assert norm.momentum == 0.1
