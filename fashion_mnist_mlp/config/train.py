"""The train section: what the train and swa stages read, with the option tables it chooses
from (train.optimizer and its block in train.optimizers; the same for losses and schedulers).

Options that carry their own arguments are chosen by name (`train.optimizer: adamw`) and
configured in a block per option (`train.optimizers.adamw`), so `dvc exp run -S
train.optimizer=sgd` switches with one key, and an argument that does not belong to an option
is an unknown key, not a silently ignored one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from fashion_mnist_mlp.config.losses import LossArgs, Losses, LossName
from fashion_mnist_mlp.config.optimizers import (
    OPTIMIZERS,
    OptimizerArgs,
    OptimizerName,
    Optimizers,
    sqrt_note,
)
from fashion_mnist_mlp.config.schedulers import (
    SCHEDULERS,
    SchedulerArgs,
    SchedulerName,
    Schedulers,
)
from fashion_mnist_mlp.config.schema import (
    AutoOrPositive,
    Mode,
    NonNegativeFloat,
    Seed,
    Strict,
    ValMetric,
    check_mode,
    chosen,
)
from fashion_mnist_mlp.config.sections import Augment

Device = Literal["auto", "cpu", "cuda"]

MAX_EPOCHS = 10_000
"""Far beyond any useful run (4 hours at 1.5 s an epoch); it bounds the lambda formula's check
over every epoch: at most formula.MAX_NODES nodes, 0.4 s here."""


def _quoted_if_a_number(value: Any) -> Any:
    """YAML (and so `-S`) reads the tag `1.0` or the hash `1234567` as a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            "a tag or commit must be a string: YAML read this one as a number; quote it "
            """(params.yaml: init: "1.0"; dvc exp run -S 'train.init="1.0"')"""
        )
    return value


class EarlyStoppingArgs(Strict):
    metric: ValMetric
    mode: Mode
    patience: Annotated[int, Field(ge=1)]
    """Epochs without an improvement of more than `min_delta` before training stops."""
    min_delta: NonNegativeFloat

    @model_validator(mode="after")
    def _mode_fits_metric(self) -> EarlyStoppingArgs:
        check_mode(self.metric, self.mode, "train.early_stopping")
        return self


class Train(Strict):
    seed: Seed
    device: Device
    nproc: Annotated[int, Field(ge=1)]
    """Processes to train in (DistributedDataParallel under torchrun); 1 = this process."""
    epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
    batch_size: Annotated[int, Field(gt=0)]
    precision: Literal["fp32", "bf16"]
    lr: AutoOrPositive
    """'auto': the chosen optimizer's own lr (train.optimizers.<name>.lr); a number overrides
    it, whatever the optimizer."""
    augment: Augment
    optimizer: OptimizerName
    optimizers: Optimizers
    loss: LossName
    losses: Losses
    scheduler: SchedulerName
    schedulers: Schedulers
    warmup_epochs: Annotated[int, Field(ge=0)]
    """Epochs of linear warm-up before the scheduler, per batch from warmup_start_factor x lr."""
    warmup_start_factor: Annotated[float, Field(gt=0, le=1)]
    early_stopping: EarlyStoppingArgs | None
    keep: Literal["last", "best"]
    """Which epoch's weights the stage writes: the last one trained, or the best on
    early_stopping's metric."""
    init: Annotated[
        Annotated[str, Field(pattern=r"^[\w.@+][\w./@+-]*$", max_length=255)] | None,
        BeforeValidator(_quoted_if_a_number),
    ]
    """Warm start: a git tag or commit whose exported model training starts from (no leading
    '-', which git would read as an option)."""

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def optimizer_args(self) -> OptimizerArgs:
        return chosen(self.optimizers, self.optimizer)

    @property
    def loss_args(self) -> LossArgs:
        return chosen(self.losses, self.loss)

    @property
    def scheduler_args(self) -> SchedulerArgs | None:
        return None if self.scheduler == "none" else chosen(self.schedulers, self.scheduler)

    @property
    def learning_rate(self) -> float:
        return self.optimizer_args.lr if self.lr == "auto" else self.lr

    @property
    def cycles_momentum(self) -> bool:
        return self.scheduler_args is not None and self.scheduler_args.cycles_momentum

    @model_validator(mode="after")
    def _momentum_cycling_needs_momentum(self) -> Train:
        if self.cycles_momentum and self.optimizer_args.momentum_key is None:
            with_momentum = [n for n, k in OPTIMIZERS.items() if k.args.momentum_key is not None]
            raise ValueError(
                f"train.schedulers.{self.scheduler}.cycle_momentum = true cycles the optimizer's "
                f"momentum, but train.optimizer = '{self.optimizer}' has none: set "
                f"cycle_momentum: false, or use one of {', '.join(with_momentum)}"
            )
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> Train:
        if self.warmup_epochs == 0:
            return self
        if self.scheduler_args is not None and self.scheduler_args.ramps_up:
            raise ValueError(
                f"train.warmup_epochs = {self.warmup_epochs}: train.scheduler = "
                f"'{self.scheduler}' already starts low and rises: set warmup_epochs: 0, or "
                "choose a scheduler that starts at the lr (cosine, step, ...)"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"train.warmup_epochs = {self.warmup_epochs} leaves none of the "
                f"{self.epochs} epochs (train.epochs) to train after it: make it smaller"
            )
        return self

    @model_validator(mode="after")
    def _scheduler_fits_the_run(self) -> Train:
        if self.scheduler_args is None or self.epochs == 0:
            return self
        try:
            self.scheduler_args.check_run(self.epochs - self.warmup_epochs)
        except ValueError as e:
            raise ValueError(f"train.schedulers.{self.scheduler}.{e}") from None
        return self

    @model_validator(mode="after")
    def _best_needs_a_metric(self) -> Train:
        if self.keep == "best" and self.early_stopping is None:
            raise ValueError(
                "train.keep = 'best' needs a metric to rank epochs by: set "
                "train.early_stopping (its metric and mode; a patience of train.epochs never "
                "stops early), or keep: last"
            )
        return self

    def unused_params(self) -> list[str]:
        """Keys set in params.yaml that the chosen combination does not use, each with why, and
        a last epoch it wastes (at lr 0): the stage prints them, so nothing is ignored silently."""
        notes = []
        if self.cycles_momentum:
            cycle = self.scheduler_args
            key = self.optimizer_args.momentum_key
            shown = "betas[0]" if key == "betas" else key
            notes.append(
                f"train.optimizers.{self.optimizer}.{shown} is not used by train (swa uses it): "
                f"train.schedulers.{self.scheduler}.cycle_momentum cycles it between "
                f"{cycle.base_momentum} and {cycle.max_momentum}"
            )
        if self.lr != "auto":
            notes.append(
                f"train.optimizers.{self.optimizer}.lr is not used: train.lr = {self.lr} "
                "overrides it"
            )
        shaped = self.scheduler != "none" or self.warmup_epochs > 0
        if shaped and not self.optimizer_args.schedulable:
            notes.append(
                f"train.scheduler = '{self.scheduler}' (and any warm-up) does not shape "
                f"{self.optimizer}'s steps: torch reads its lr once, as the first step size"
            )
        if (zero_end := self._zero_end_note()) is not None:
            notes.append(zero_end)
        return notes

    def _zero_end_note(self) -> str | None:
        """Why the last epoch trains at lr 0, if the schedule ends there (its table entry says)."""
        args = self.scheduler_args
        if (
            args is None
            or self.epochs - self.warmup_epochs < 2  # one scheduled epoch stays at the start
            or not self.optimizer_args.schedulable
            or args.final_lr(self.learning_rate) != 0
        ):
            return None
        if args.end_key is None:
            settable = [f"{n} with {a.end_key} > 0" for n, a in SCHEDULERS.items() if a.end_key]
            why, fix = "as it always does", f"choose {' or '.join(settable)}"
        else:
            value = getattr(args, args.end_key)
            why = f"train.schedulers.{self.scheduler}.{args.end_key} = {value}"
            fix = f"set {args.end_key} > 0"
        return (
            f"train.scheduler = '{self.scheduler}' ends at lr 0 ({why}): its last epoch changes "
            "no weight (only BatchNorm's statistics), and swa, which anneals from the final lr, "
            f"starts at 0: {fix}"
        )

    @property
    def sqrt_note(self) -> str | None:
        """Why this run's bytes hold on one CPU model only, whatever numerics.cpu says, if its
        optimizer takes torch.sqrt (numerics prints it)."""
        return sqrt_note(self)
