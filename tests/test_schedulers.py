from __future__ import annotations

import re

import pytest
import torch

from stages.engine import current_lr
from stages.model import MLP, MLPConfig
from stages.optimizers import build_optimizer
from stages.params import Params
from stages.schedulers import SCHEDULERS, build_schedule

from .conftest import error_of_params
from .toolbox import losses_while_training, train_config


def lrs_of(params: Params, epochs: int = 6, steps: int = 4, **changes: object) -> list[float]:
    """The lr every batch of a run uses, relative to the optimizer's lr."""
    cfg = train_config(params, epochs=epochs, **changes)
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    schedule = build_schedule(opt, cfg, steps)
    for _ in range(epochs):
        for _step in range(steps):
            opt.step()
            schedule.after_batch()
        schedule.after_epoch({"val/loss": 1.0, "val/acc": 0.5})  # a plateau from the start
    return [lr / cfg.learning_rate for lr in schedule.trace]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_changes_the_lr(params: Params, name: str) -> None:
    lrs = lrs_of(params, epochs=30, steps=2, scheduler=name)  # past the default milestones
    assert len(set(lrs)) > 1, lrs
    per_batch = SCHEDULERS[name].per_batch
    assert (lrs[1] != lrs[0]) == per_batch  # within an epoch only per-batch schedulers move


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_trains_real_images(params: Params, small_data, name: str) -> None:
    steps = {"schedulers.step.step_size": 2, "schedulers.multistep.milestones": [2, 4]}
    cfg = train_config(params, scheduler=name, epochs=6, **steps)
    losses = losses_while_training(cfg, small_data[0], 6)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize(
    ("scheduler", "changes", "phrase"),
    [
        ("multistep", {"schedulers.multistep.milestones": [3, 8]},
         "train.schedulers.multistep.milestones = [3, 8]: milestone 8: the scheduler runs 8"),
        ("multistep", {"schedulers.multistep.milestones": [7], "warmup_epochs": 2},
         "milestone 7: the scheduler runs 6 epochs"),
        ("step", {"schedulers.step.step_size": 8},
         "train.schedulers.step.step_size = 8: the scheduler runs 8 epochs"),
    ],
)  # fmt: skip
def test_a_step_the_run_never_reaches_is_refused(
    params: Params, scheduler: str, changes: dict, phrase: str
) -> None:
    """A milestone at or past the last scheduled epoch never lowers the lr: silently ignored."""
    with pytest.raises(ValueError, match=re.escape(phrase)):
        train_config(params, scheduler=scheduler, epochs=8, **changes)
    train_config(params, scheduler=scheduler, epochs=10, **changes)  # enough epochs: it fires


def test_onecycle_peaks_at_the_lr_and_starts_at_its_fraction(params: Params) -> None:
    lrs = lrs_of(params, epochs=2, steps=10, scheduler="onecycle")
    assert max(lrs) == pytest.approx(1, rel=0.05)
    assert lrs[0] == pytest.approx(1 / params.train.schedulers.onecycle.div_factor)


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_the_lr_a_run_ends_at_is_the_one_its_last_step_used(params: Params, anneal: str) -> None:
    # a scheduler step after the last batch would set the lr of a step that never comes: linear
    # one-cycle extrapolates it below zero, and swa starts from it
    changes = {"schedulers.onecycle.anneal_strategy": anneal,
               "schedulers.onecycle.div_factor": 5000.0, "schedulers.onecycle.final_div_factor": 1e5}  # fmt: skip
    cfg = train_config(params, scheduler="onecycle", epochs=2, **changes)
    opt = build_optimizer(MLP(MLPConfig(hidden=(4,))).parameters(), cfg, cfg.learning_rate)
    schedule = build_schedule(opt, cfg, 7)
    for _ in range(14):
        opt.step()
        schedule.after_batch()
    assert current_lr(opt) == schedule.trace[-1] > 0


def test_a_one_step_onecycle_warm_up_starts_at_the_peak(params: Params) -> None:
    # torch's OneCycleLR divides by zero when pct_start x total steps is exactly 1
    lrs = lrs_of(params, epochs=1, steps=4, scheduler="onecycle")
    assert lrs[0] == pytest.approx(1) and lrs == sorted(lrs, reverse=True)


def test_warm_up_rises_linearly_then_hands_over_to_the_scheduler(params: Params) -> None:
    lrs = lrs_of(params, epochs=6, steps=4, scheduler="cosine", warmup_epochs=2)
    start = params.train.warmup_start_factor
    assert lrs[:8] == pytest.approx([start + (1 - start) * i / 8 for i in range(8)])
    cosine = lrs_of(params, epochs=4, steps=4, scheduler="cosine")
    assert lrs[8:] == pytest.approx(cosine)  # the cosine of the 4 epochs after it, unchanged


def test_warm_up_composes_with_a_per_batch_scheduler(params: Params) -> None:
    lrs = lrs_of(params, epochs=6, steps=4, scheduler="cosine_warm_restarts", warmup_epochs=1)
    assert lrs[4] == pytest.approx(1) and lrs[3] < 1
    assert lrs[4:] == pytest.approx(lrs_of(params, 5, 4, scheduler="cosine_warm_restarts"))


@pytest.mark.parametrize("name", ["onecycle", "cyclic"])
def test_warm_up_before_a_scheduler_that_ramps_up_itself_is_refused(
    raw_params: dict, name: str
) -> None:
    message = error_of_params(raw_params, {"train.scheduler": name, "train.warmup_epochs": 2})
    assert f"train.scheduler = '{name}' already starts low and rises" in message


def test_warm_up_must_leave_epochs_to_train(raw_params: dict) -> None:
    message = error_of_params(
        raw_params, {"train.scheduler": "cosine", "train.warmup_epochs": 40, "train.epochs": 40}
    )
    assert "train.warmup_epochs = 40 leaves none of the 40 epochs" in message


def test_warm_restarts_per_batch_equal_torchs_fractional_epoch_stepping(params: Params) -> None:
    ours = lrs_of(params, epochs=12, steps=5, scheduler="cosine_warm_restarts")
    args = params.train.schedulers.cosine_warm_restarts
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    documented = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, args.T_0, args.T_mult, args.eta_min
    )
    expected = []
    for epoch in range(12):
        for i in range(5):
            expected.append(current_lr(opt))
            documented.step(epoch + (i + 1) / 5)  # torch's docs: step(epoch + i / iters)
    assert ours == pytest.approx(expected, abs=1e-12)


def test_plateau_lowers_the_lr_after_patience_epochs_without_improvement(params: Params) -> None:
    args = params.train.schedulers.plateau
    lrs = lrs_of(params, epochs=8, steps=1, scheduler="plateau")
    # the first epoch sets the best; `patience` more without improvement, then one more: cut
    cut = args.patience + 2
    assert lrs[:cut] == [1.0] * cut
    assert lrs[cut] == pytest.approx(args.factor)


def test_lambda_follows_its_formula_per_epoch(params: Params) -> None:
    lrs = lrs_of(params, epochs=4, steps=2, scheduler="lambda",
                 **{"schedulers.lambda.formula": "1 / (1 + epoch // 2)"})  # fmt: skip
    assert lrs == pytest.approx([1, 1, 1, 1, 1 / 2, 1 / 2, 1 / 2, 1 / 2])


@pytest.mark.parametrize(
    ("formula", "problem"),
    [
        ("__import__('os').system('touch /tmp/pwned')", "calls '__import__('os').system'"),
        ("1 / epoch", "cannot be computed at epoch 0"),
        ("2 - epoch", "is -1 at epoch 3"),
        ("0.9 ** epoch if epoch < 5 else x", "uses the name 'x'"),
    ],
)
def test_a_bad_lambda_formula_is_refused_with_the_reason(
    raw_params: dict, formula: str, problem: str
) -> None:
    changes = {"train.scheduler": "lambda", "train.schedulers.lambda.formula": formula}
    message = error_of_params(raw_params, changes)
    assert "train.schedulers.lambda.formula" in message and problem in message


def test_cycling_momentum_needs_an_optimizer_with_momentum(raw_params: dict) -> None:
    changes = {"train.scheduler": "cyclic", "train.optimizer": "adagrad",
               "train.schedulers.cyclic.cycle_momentum": True}  # fmt: skip
    assert "'adagrad' has none" in error_of_params(raw_params, changes)
