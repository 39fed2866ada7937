"""Every learning-rate scheduler `train.scheduler` can name: one table entry each, name → its
validated argument block, whose `build()` makes the torch scheduler for a run's `Horizon`.
fashion_mnist_mlp/training/schedule.py steps it for the training loop. Torch-free at import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from fashion_mnist_mlp.config.formula import FormulaError, compile_formula, parse
from fashion_mnist_mlp.config.schema import (
    Mode,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Strict,
    UnitFloat,
    ValMetric,
    check_mode,
    family,
)

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler


@dataclass(frozen=True)
class Horizon:
    """What a scheduler is built for: the epochs it spans (those after any warm-up), the
    batches per epoch, and the optimizer's lr (the peak of one-cycle and cyclic)."""

    epochs: int
    steps_per_epoch: int
    lr: float

    @property
    def last_epoch(self) -> int:
        """The steps from the lr of the first epoch to that of the last: a per-epoch scheduler
        steps after every epoch but the last, so one that anneals to an end value over
        `epochs` steps (torch's examples) would reach it only after the run (linear's last
        epoch of 40 ran at 0.035 x lr for end_factor 0.01), and swa starts from the lr the
        last epoch used. At least 1, which torch divides by; a 1-epoch run never steps."""
        return max(1, self.epochs - 1)


def _torch_schedulers() -> Any:
    from torch.optim import lr_scheduler

    return lr_scheduler


class SchedulerArgs(Strict, ABC):
    per_batch: ClassVar[bool] = False
    """Steps after every batch; else after every epoch."""
    ramps_up: ClassVar[bool] = False
    """Starts low and rises by itself, so a warm-up before it makes no sense."""
    watches: ClassVar[bool] = False
    """Steps on the validation metric (ReduceLROnPlateau)."""
    end_key: ClassVar[str | None] = None
    """The argument that sets final_lr, where one does."""

    @property
    def cycles_momentum(self) -> bool:
        return False

    def final_lr(self, lr: float) -> float | None:
        """The lr of the last epoch of a run of 2 scheduled epochs or more, for an optimizer lr
        of `lr`, where the arguments alone fix it: the end value an annealing scheduler
        reaches there (Horizon.last_epoch). None where the run's length or metric decides."""
        return None

    @abstractmethod
    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        """The torch scheduler over `optimizer` for this horizon."""

    def check_run(self, epochs: int) -> None:
        """ValueError if an argument cannot take effect in a run of `epochs` scheduled epochs
        (train.epochs less the warm-up): a value that is silently ignored is a mistake."""


def _never_reached(what: str, epoch: int, epochs: int) -> str:
    return (
        f"{what} {epoch}: the scheduler runs {epochs} epochs (train.epochs less "
        f"train.warmup_epochs) and steps after epochs 1..{epochs - 1}, so it never takes effect: "
        f"use a value below {epochs}, or more epochs"
    )


class StepLR(SchedulerArgs):
    step_size: PositiveInt
    gamma: PositiveFloat

    def check_run(self, epochs: int) -> None:
        if self.step_size >= epochs:
            raise ValueError(_never_reached("step_size =", self.step_size, epochs))

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().StepLR(optimizer, self.step_size, self.gamma)


class MultiStepLR(SchedulerArgs):
    milestones: list[PositiveInt]
    gamma: PositiveFloat

    def check_run(self, epochs: int) -> None:
        late = [m for m in self.milestones if m >= epochs]
        if late:
            raise ValueError(
                _never_reached(f"milestones = {self.milestones}: milestone", late[0], epochs)
            )

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().MultiStepLR(optimizer, self.milestones, self.gamma)


class ExponentialLR(SchedulerArgs):
    gamma: PositiveFloat

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().ExponentialLR(optimizer, self.gamma)


class CosineLR(SchedulerArgs):
    eta_min: NonNegativeFloat
    end_key: ClassVar[str | None] = "eta_min"

    def final_lr(self, lr: float) -> float:
        return self.eta_min

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().CosineAnnealingLR(optimizer, horizon.last_epoch, self.eta_min)


class CosineWarmRestarts(SchedulerArgs):
    """SGDR. Torch documents stepping it with fractional epochs (`step(epoch + i / iters)`);
    stepping per batch with T_0 counted in batches gives the same curve, and resumes with
    torch's own state alone. A cycle's last batch runs one batch short of eta_min (the next
    restarts at the lr), about (pi / batches in the cycle)^2 / 4 of the lr above it."""

    T_0: PositiveInt
    """Epochs to the first restart."""
    T_mult: PositiveInt
    eta_min: NonNegativeFloat
    per_batch: ClassVar[bool] = True

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        T_0 = self.T_0 * horizon.steps_per_epoch
        return _torch_schedulers().CosineAnnealingWarmRestarts(
            optimizer, T_0, self.T_mult, self.eta_min
        )


class Lambda(SchedulerArgs):
    """LambdaLR: the lr is the optimizer's lr times `formula`, a function of the epoch (0 for
    the first), evaluated safely (fashion_mnist_mlp/config/formula.py), never by `eval`."""

    formula: str

    @field_validator("formula")
    @classmethod
    def _parses(cls, formula: str) -> str:
        try:
            parse(formula)
        except FormulaError as e:
            raise ValueError(f"the formula {e}") from None
        return formula

    def check_run(self, epochs: int) -> None:
        """Refuse a formula that is not a finite, non-negative factor at some epoch of the run."""
        factor = compile_formula(self.formula)
        for epoch in range(max(1, epochs)):
            try:
                value = factor(epoch)
            except FormulaError as e:
                raise ValueError(f"formula: the formula {e}") from None
            if value < 0:
                raise ValueError(
                    f"formula: the formula is {value:g} at epoch {epoch}: an lr factor >= 0"
                )

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().LambdaLR(optimizer, compile_formula(self.formula))


class Plateau(SchedulerArgs):
    """ReduceLROnPlateau: multiply the lr by `factor` once `metric` has not improved by
    `threshold` (relative) for `patience` epochs."""

    metric: ValMetric
    mode: Mode
    factor: Annotated[float, Field(gt=0, lt=1)]
    patience: Annotated[int, Field(ge=0)]
    threshold: NonNegativeFloat
    min_lr: NonNegativeFloat
    watches: ClassVar[bool] = True

    @model_validator(mode="after")
    def _mode_fits_metric(self) -> Plateau:
        check_mode(self.metric, self.mode, "plateau")
        return self

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().ReduceLROnPlateau(
            optimizer, self.mode, self.factor, self.patience, self.threshold, min_lr=self.min_lr
        )


class Cycling(SchedulerArgs):
    """A scheduler that can cycle the optimizer's momentum (or beta1) inversely to the lr."""

    cycle_momentum: bool
    """Off: the optimizer keeps the momentum (or beta1) its block sets. On: momentum cycles
    between these bounds, and the block's value is not used."""
    base_momentum: UnitFloat
    max_momentum: UnitFloat
    per_batch: ClassVar[bool] = True
    ramps_up: ClassVar[bool] = True

    @property
    def cycles_momentum(self) -> bool:
        return self.cycle_momentum

    @model_validator(mode="after")
    def _momentum_bounds_ordered(self) -> Cycling:
        if self.base_momentum > self.max_momentum:
            raise ValueError(
                f"base_momentum = {self.base_momentum} must not exceed max_momentum = "
                f"{self.max_momentum}"
            )
        return self


class OneCycleLR(Cycling):
    pct_start: Annotated[float, Field(gt=0, lt=1)]
    div_factor: PositiveFloat
    final_div_factor: PositiveFloat
    anneal_strategy: Literal["cos", "linear"]

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        # torch's total_steps counts lrs, not steps: its last, lr / div_factor /
        # final_div_factor, is the run's last batch's
        total_steps = max(1, horizon.epochs * horizon.steps_per_epoch)
        # A warm-up of exactly one step ends where it starts, and torch's OneCycleLR divides
        # by its zero length; just under one step it is no warm-up, as it should be.
        pct_start = self.pct_start * (1 - 1e-9 if self.pct_start * total_steps == 1 else 1)
        return _torch_schedulers().OneCycleLR(
            optimizer,
            max_lr=horizon.lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=self.div_factor,
            final_div_factor=self.final_div_factor,
            anneal_strategy=self.anneal_strategy,
            cycle_momentum=self.cycle_momentum,
            base_momentum=self.base_momentum,
            max_momentum=self.max_momentum,
        )


class Cyclic(Cycling):
    """CyclicLR between lr / div_factor and lr, rising for `step_size_up` epochs (fractions
    allowed), then falling as long."""

    div_factor: Annotated[float, Field(gt=1)]
    step_size_up: PositiveFloat
    mode: Literal["triangular", "triangular2", "exp_range"]
    gamma: Annotated[float, Field(gt=0, le=1)]
    """exp_range's per-batch decay of the cycle's height."""

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().CyclicLR(
            optimizer,
            base_lr=horizon.lr / self.div_factor,
            max_lr=horizon.lr,
            step_size_up=max(1, round(self.step_size_up * horizon.steps_per_epoch)),
            mode=self.mode,
            gamma=self.gamma,
            cycle_momentum=self.cycle_momentum,
            base_momentum=self.base_momentum,
            max_momentum=self.max_momentum,
        )


class Polynomial(SchedulerArgs):
    """Torch's PolynomialLR, which always ends at 0."""

    power: PositiveFloat

    def final_lr(self, lr: float) -> float:
        return 0.0

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().PolynomialLR(optimizer, horizon.last_epoch, self.power)


class Linear(SchedulerArgs):
    start_factor: Annotated[float, Field(gt=0, le=1)]
    end_factor: Annotated[float, Field(ge=0, le=1)]
    end_key: ClassVar[str | None] = "end_factor"

    def final_lr(self, lr: float) -> float:
        return self.end_factor * lr

    def build(self, optimizer: Optimizer, horizon: Horizon) -> LRScheduler:
        return _torch_schedulers().LinearLR(
            optimizer, self.start_factor, self.end_factor, horizon.last_epoch
        )


SCHEDULERS: dict[str, type[SchedulerArgs]] = {
    "step": StepLR,
    "multistep": MultiStepLR,
    "exponential": ExponentialLR,
    "cosine": CosineLR,
    "cosine_warm_restarts": CosineWarmRestarts,
    "lambda": Lambda,
    "plateau": Plateau,
    "onecycle": OneCycleLR,
    "cyclic": Cyclic,
    "polynomial": Polynomial,
    "linear": Linear,
}
"""Adding a scheduler is an entry here and its block in params.yaml; `none` keeps the lr."""

SchedulerName = Literal[("none", *SCHEDULERS)]
Schedulers = family("Schedulers", SCHEDULERS)
