from __future__ import annotations

import csv
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fashion_mnist_mlp.config.optimizers import build_optimizer
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.config.paths import TRAIN_LIVE, TRAIN_MODEL
from fashion_mnist_mlp.config.schedulers import SCHEDULERS, CosineWarmRestarts, Cyclic
from fashion_mnist_mlp.training.checkpoints import load_checkpoint
from fashion_mnist_mlp.training.engine import current_lr
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.schedule import build_schedule

from .conftest import Workdir, error_of_params, run_in_process
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


# The start and end values docs/toolbox.md documents, as a factor of the optimizer's lr, of a run of
# EPOCHS scheduled epochs (after any warm-up) of STEPS batches, with the arguments ENDS sets
EPOCHS, STEPS = 8, 5
LAST_EPOCH, LAST_BATCH = EPOCHS - 1, EPOCHS * STEPS - 1
ENDS = {
    "schedulers.step.step_size": 7,  # a cut at the last epoch takes effect
    "schedulers.multistep.milestones": [2, 7],
    "schedulers.lambda.formula": "1 - epoch / 10",
    "schedulers.cosine.eta_min": 1e-4,
    "schedulers.cosine_warm_restarts.eta_min": 1e-4,
    "schedulers.linear.start_factor": 0.5,
}


def sgdr(args: CosineWarmRestarts, lr: float, batch: int) -> float:
    """SGDR's cosine at `batch`, within its cycle of T_0 x T_mult^i epochs."""
    period = args.T_0 * STEPS
    while batch >= period:
        batch, period = batch - period, period * args.T_mult
    floor = args.eta_min / lr
    return floor + (1 - floor) * (1 + math.cos(math.pi * batch / period)) / 2


def triangle(args: Cyclic, batch: int) -> float:
    """CyclicLR's triangle at `batch`, between 1 / div_factor and 1."""
    half = max(1, round(args.step_size_up * STEPS))
    cycle = 1 + batch // (2 * half)
    height = {"triangular": 1.0, "triangular2": 0.5 ** (cycle - 1), "exp_range": args.gamma**batch}
    base = 1 / args.div_factor
    return base + (1 - base) * max(0.0, 1 - abs(batch / half - 2 * cycle + 1)) * height[args.mode]


DOCUMENTED: dict[str, Callable[..., tuple[float, float]]] = {
    "step": lambda a, lr: (1, a.gamma ** (LAST_EPOCH // a.step_size)),
    "multistep": lambda a, lr: (1, a.gamma ** sum(m <= LAST_EPOCH for m in a.milestones)),
    "exponential": lambda a, lr: (1, a.gamma**LAST_EPOCH),
    "cosine": lambda a, lr: (1, a.eta_min / lr),
    "cosine_warm_restarts": lambda a, lr: (1, sgdr(a, lr, LAST_BATCH)),
    "lambda": lambda a, lr: (1, 1 - LAST_EPOCH / 10),
    # a validation loss that never improves: the first epoch sets the best, then a cut after
    # every patience + 1 epochs
    "plateau": lambda a, lr: (1, a.factor ** ((LAST_EPOCH - 1) // (a.patience + 1))),
    "onecycle": lambda a, lr: (1 / a.div_factor, 1 / a.div_factor / a.final_div_factor),
    "cyclic": lambda a, lr: (1 / a.div_factor, triangle(a, LAST_BATCH)),
    "polynomial": lambda a, lr: (1, 0),
    "linear": lambda a, lr: (a.start_factor, a.end_factor),
}


def test_every_scheduler_has_its_documented_start_and_end() -> None:
    assert set(DOCUMENTED) == set(SCHEDULERS)


@pytest.mark.parametrize(
    ("name", "warmup"),
    [(n, w) for n in SCHEDULERS for w in (0, 2) if not (w and SCHEDULERS[n].ramps_up)],
)
def test_a_schedule_starts_and_ends_at_its_documented_values(
    params: Params, name: str, warmup: int
) -> None:
    """The first batch after the warm-up runs at the scheduler's start value, the run's last
    batch at its end value: swa starts from it (linear's last epoch of 40 once ran at 0.035 x
    lr for end_factor 0.01, cosine's never at eta_min)."""
    lrs = lrs_of(params, EPOCHS + warmup, STEPS, scheduler=name, warmup_epochs=warmup, **ENDS)
    cfg = train_config(params, epochs=EPOCHS + warmup, scheduler=name, **ENDS)
    start, end = DOCUMENTED[name](cfg.scheduler_args, cfg.learning_rate)
    assert (lrs[warmup * STEPS], lrs[-1]) == pytest.approx((start, end), rel=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial"])
@pytest.mark.parametrize("warmup", [0, 1])
def test_a_one_epoch_schedule_runs_at_its_start_and_a_two_epoch_one_ends_at_its_end(
    params: Params, name: str, warmup: int
) -> None:
    cfg = train_config(params, scheduler=name, **ENDS)
    start, end = DOCUMENTED[name](cfg.scheduler_args, cfg.learning_rate)
    one = lrs_of(params, 1 + warmup, 3, scheduler=name, warmup_epochs=warmup, **ENDS)
    assert one[3 * warmup :] == pytest.approx([start] * 3)  # never stepped: nothing divides by 0
    two = lrs_of(params, 2 + warmup, 3, scheduler=name, warmup_epochs=warmup, **ENDS)
    assert two[3 * warmup :] == pytest.approx([start] * 3 + [end] * 3, rel=1e-6)


ZERO_ENDS = [
    ("cosine", {"schedulers.cosine.eta_min": 0.0}),
    ("linear", {"schedulers.linear.end_factor": 0.0}),
    ("polynomial", {}),
]


@pytest.mark.parametrize(
    ("name", "changes"),
    [("cosine", ENDS), ("linear", ENDS), *ZERO_ENDS],
    ids=["cosine", "linear", "cosine-0", "linear-0", "polynomial"],
)
def test_a_schedulers_final_lr_is_the_lr_of_its_last_epoch(
    params: Params, name: str, changes: dict
) -> None:
    """What its table entry says, which the note on an end of 0 relies on, against torch."""
    cfg = train_config(params, epochs=EPOCHS, scheduler=name, **changes)
    final = cfg.scheduler_args.final_lr(cfg.learning_rate)
    lrs = lrs_of(params, EPOCHS, STEPS, scheduler=name, **changes)
    assert final is not None
    assert lrs[-STEPS:] == pytest.approx([final / cfg.learning_rate] * STEPS, abs=1e-12)


@pytest.mark.parametrize(
    ("name", "changes", "why", "fix"),
    [
        (*ZERO_ENDS[0], "train.schedulers.cosine.eta_min = 0.0", "set eta_min > 0"),
        (*ZERO_ENDS[1], "train.schedulers.linear.end_factor = 0.0", "set end_factor > 0"),
        (*ZERO_ENDS[2], "as it always does",
         "choose cosine with eta_min > 0 or linear with end_factor > 0"),
    ],
    ids=[name for name, _ in ZERO_ENDS],
)  # fmt: skip
def test_a_schedule_that_ends_at_lr_0_says_its_last_epoch_and_swas_first_are_wasted(
    params: Params, name: str, changes: dict, why: str, fix: str
) -> None:
    (note,) = train_config(params, epochs=2, scheduler=name, **changes).unused_params()
    assert note == (
        f"train.scheduler = '{name}' ends at lr 0 ({why}): its last epoch changes no weight "
        "(only BatchNorm's statistics), and swa, which anneals from the final lr, starts at 0: "
        f"{fix}"
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"scheduler": "cosine", "schedulers.cosine.eta_min": 1e-4},
        {"scheduler": "linear", "schedulers.linear.end_factor": 0.01},
        {"scheduler": "polynomial", "epochs": 1},  # one scheduled epoch stays at the lr
        {"scheduler": "polynomial", "epochs": 3, "warmup_epochs": 2},
        {"scheduler": "onecycle"},
    ],
    ids=["cosine", "linear", "one-epoch", "one-after-warm-up", "onecycle"],
)
def test_a_schedule_whose_last_epoch_trains_has_no_note(params: Params, changes: dict) -> None:
    assert train_config(params, **{"epochs": 10, **changes}).unused_params() == []


def test_rprop_which_reads_its_lr_once_gets_no_note_on_an_end_of_0(params: Params) -> None:
    (note,) = train_config(params, optimizer="rprop", scheduler="polynomial").unused_params()
    assert "does not shape rprop's steps" in note


def test_the_projects_cosine_ends_at_1_percent_of_the_default_lr(params: Params) -> None:
    cfg = train_config(params, scheduler="cosine")
    assert cfg.scheduler_args.final_lr(cfg.learning_rate) == pytest.approx(0.01 * cfg.learning_rate)
    assert cfg.unused_params() == []


@pytest.fixture(scope="module")
def split_work(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Path:
    """A working directory after a real split of 500 training and 100 validation images."""
    work = Workdir.with_raw_data(tmp_path_factory.mktemp("split"), raw_dir, 600, 100)
    run_in_process(work, "split")
    return work.path


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, dialect="excel-tab" if path.suffix == ".tsv" else "excel"))


@pytest.mark.parametrize(("name", "warmup"), [("linear", 0), ("cosine", 1), ("polynomial", 0)])
def test_a_trained_model_ends_at_the_schedules_end_value(
    params: Params,
    split_work: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    warmup: int,
) -> None:
    """The train stage's final_lr, which swa starts from, and both lr plots' last points; an
    end of 0 (polynomial's), which trains nothing in the last epoch, comes with a note."""
    work = Workdir(shutil.copytree(split_work, tmp_path / "work"))
    for key, value in {"model.hidden": [16], "train.epochs": 3 + warmup, "train.batch_size": 128,
                       "train.scheduler": name, "train.warmup_epochs": warmup,
                       **{f"train.{k}": v for k, v in ENDS.items()}}.items():  # fmt: skip
        work.set(key, value)
    run_in_process(work, "train")
    cfg = train_config(params, scheduler=name, **ENDS)
    end = DOCUMENTED[name](cfg.scheduler_args, cfg.learning_rate)[1] * cfg.learning_rate
    _, info = load_checkpoint(work.path / TRAIN_MODEL)
    per_epoch = rows(work.path / TRAIN_LIVE / "plots" / "metrics" / "lr.tsv")
    per_batch = rows(work.path / TRAIN_LIVE / "lr_per_batch.csv")
    assert (int(per_epoch[-1]["step"]), len(per_batch)) == (3 + warmup, 4 * (3 + warmup))
    lasts = [info["final_lr"], float(per_epoch[-1]["lr"]), float(per_batch[-1]["lr"])]
    assert lasts == pytest.approx([end] * 3, rel=1e-6)
    assert ("ends at lr 0" in capsys.readouterr().out) == (end == 0)
