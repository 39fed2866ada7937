from __future__ import annotations

import pytest
import torch

from stages.model import MLP, MLPConfig
from stages.optim import build_loss, build_optimizer, build_scheduler, current_lr, stepper
from stages.params import OPTIMIZERS, Params, Train

SCHEDULERS = ["none", "step", "multistep", "exponential", "cosine", "onecycle"]


def one_step(
    params: Params, optimizer: str = "adamw", scheduler: str = "none", loss: str = "cross_entropy"
):
    cfg = params.train.model_copy(
        update={"optimizer": optimizer, "scheduler": scheduler, "loss": loss}
    )
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(16,)))
    opt = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    sched, per_batch = build_scheduler(opt, cfg, steps_per_epoch=5)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(8, 28, 28), torch.arange(8) % 10
    build_loss(cfg)(model(x), y).backward()
    opt.step()
    return before, list(model.parameters()), opt, sched, per_batch


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_builds_and_moves_the_weights(params: Params, name: str) -> None:
    before, after, opt, _, _ = one_step(params, optimizer=name)
    assert type(opt).__name__.lower() == name
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_builds_and_steps(params: Params, name: str) -> None:
    _, _, opt, sched, per_batch = one_step(params, scheduler=name)
    if name == "none":
        assert sched is None
        return
    assert per_batch == (name == "onecycle")
    lrs = [current_lr(opt)]
    for _ in range(30):
        sched.step()
        lrs.append(current_lr(opt))
    assert len(set(lrs)) > 1, f"{name} never changed the lr: {lrs}"


def test_onecycle_peaks_at_the_configured_lr(params: Params) -> None:
    cfg = params.train.model_copy(update={"scheduler": "onecycle", "epochs": 2})
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    sched, _ = build_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(20):
        lrs.append(current_lr(opt))
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(cfg.learning_rate, rel=0.05)
    assert lrs[0] == pytest.approx(cfg.learning_rate / cfg.schedulers.onecycle.div_factor)


@pytest.mark.parametrize("name", ["cross_entropy", "nll"])
def test_losses(params: Params, name: str) -> None:
    cfg = params.train.model_copy(update={"loss": name})
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    targets = torch.tensor([0, 1])
    loss = build_loss(cfg)(logits, targets)
    plain = torch.nn.functional.cross_entropy(logits, targets)
    if name == "nll":  # the lesson's NLLLoss on log-softmax equals plain cross entropy
        torch.testing.assert_close(loss, plain)
    else:  # label smoothing raises the loss of confident, correct predictions
        assert loss > plain


def train_steps(cfg: Train, steps: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(16,)))
    opt = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    sched, _ = build_scheduler(opt, cfg, steps_per_epoch=steps)
    x, y = torch.rand(8, 28, 28), torch.arange(8) % 10
    for _ in range(steps):
        opt.zero_grad()
        build_loss(cfg)(model(x), y).backward()
        opt.step()
        sched.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def with_optimizer_args(cfg: Train, **args: object) -> Train:
    block = cfg.optimizer_args.model_copy(update=args)
    return cfg.model_copy(
        update={"optimizers": cfg.optimizers.model_copy(update={cfg.optimizer: block})}
    )


@pytest.mark.parametrize("name", [n for n, k in OPTIMIZERS.items() if k.args.momentum_key])
def test_onecycle_keeps_the_momentum_params_yaml_sets(params: Params, name: str) -> None:
    cfg = params.train.model_copy(update={"optimizer": name, "scheduler": "onecycle"})
    key = cfg.optimizer_args.momentum_key
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    build_scheduler(opt, cfg, steps_per_epoch=10)
    expected = getattr(cfg.optimizer_args, key)
    assert opt.param_groups[0][key] == (tuple(expected) if key == "betas" else expected)


def test_a_changed_beta1_changes_the_weights_under_onecycle(params: Params) -> None:
    cfg = params.train.model_copy(update={"optimizer": "adamw", "scheduler": "onecycle"})
    other = with_optimizer_args(cfg, betas=[0.5, 0.999])
    assert not torch.equal(train_steps(cfg), train_steps(other))


def test_momentum_cycling_when_asked_drives_beta1_and_says_so(params: Params) -> None:
    cycle = params.train.schedulers.onecycle.model_copy(update={"cycle_momentum": True})
    cfg = params.train.model_copy(
        update={
            "optimizer": "adamw", "scheduler": "onecycle",
            "schedulers": params.train.schedulers.model_copy(update={"onecycle": cycle}),
        }
    )  # fmt: skip
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    build_scheduler(opt, cfg, steps_per_epoch=10)
    assert opt.param_groups[0]["betas"][0] == cycle.max_momentum
    (note,) = cfg.unused_params()
    assert "train.optimizers.adamw.betas[0] is not used" in note


def test_adagrad_trains_under_onecycle(params: Params) -> None:
    cfg = params.train.model_copy(update={"optimizer": "adagrad", "scheduler": "onecycle"})
    weights = train_steps(cfg)
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_gets_its_own_arguments(params: Params, name: str) -> None:
    cfg = params.train.model_copy(update={"optimizer": name})
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    block = getattr(params.train.optimizers, name)
    for key, value in block.torch_kwargs().items():  # lr and weight decay included
        assert opt.param_groups[0][key] == value, key
    assert opt.defaults[OPTIMIZERS[name].implementation] is True
    override = cfg.model_copy(update={"lr": 0.123})
    assert override.learning_rate == 0.123
    assert f"train.optimizers.{name}.lr is not used" in override.unused_params()[0]


def test_onecycle_with_a_one_step_warm_up_starts_at_the_peak(params: Params) -> None:
    # torch's OneCycleLR divides by zero when pct_start x total steps is exactly 1
    cfg = params.train.model_copy(update={"scheduler": "onecycle", "epochs": 1})
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    sched, _ = build_scheduler(opt, cfg, steps_per_epoch=4)
    lrs = [current_lr(opt)]
    for _ in range(3):
        opt.step()
        sched.step()
        lrs.append(current_lr(opt))
    assert lrs[0] == pytest.approx(cfg.learning_rate) and lrs == sorted(lrs, reverse=True)


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_the_lr_a_run_ends_at_is_the_one_its_last_step_used(params: Params, anneal: str) -> None:
    # a scheduler step after the last batch would set the lr of a step that never comes: linear
    # one-cycle extrapolates it below zero, and swa starts from it
    onecycle = params.train.schedulers.onecycle.model_copy(
        update={"anneal_strategy": anneal, "div_factor": 5000.0, "final_div_factor": 1e5}
    )
    cfg = params.train.model_copy(
        update={"scheduler": "onecycle", "epochs": 2,
                "schedulers": params.train.schedulers.model_copy(update={"onecycle": onecycle})}
    )  # fmt: skip
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    sched, _ = build_scheduler(opt, cfg, steps_per_epoch=7)
    step = stepper(sched, total_steps=14)
    used = []
    for _ in range(14):
        used.append(current_lr(opt))
        opt.step()
        step()
    assert current_lr(opt) == used[-1] > 0


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_lowers_the_loss_on_real_images(
    params: Params, small_data, name: str
) -> None:
    """Switching the name alone gives an optimizer that learns: its own lr from its block, under
    the project's schedule (one-cycle, whose warm-up large lrs such as asgd's rely on)."""
    train, _ = small_data
    cfg = params.train.model_copy(update={"optimizer": name, "epochs": 1})
    torch.manual_seed(0)
    model = MLP(MLPConfig(hidden=(64,), pixel_mean=0.286, pixel_std=0.353))
    opt = build_optimizer(model.parameters(), cfg, cfg.learning_rate)
    sched, per_batch = build_scheduler(opt, cfg, steps_per_epoch=40)
    step = stepper(sched, 40) if per_batch else None
    loss_fn = build_loss(cfg)
    x, y = train.images[:512], train.labels[:512]
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if step is not None:
            step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
