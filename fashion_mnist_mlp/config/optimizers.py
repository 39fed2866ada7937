"""Every optimizer `train.optimizer` can name: one table entry each, name → its validated
argument block (torch's own keyword arguments, plus its own lr), its torch.optim class, and what
numerics needs to know of it.

Torch-free at import, like the schema built from this table; torch is imported when an
optimizer is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol

from pydantic import BeforeValidator, Field, model_validator

from fashion_mnist_mlp.config.schema import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Strict,
    UnitFloat,
    choice,
    family,
    not_refused,
)

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer


class OptimizerArgs(Strict):
    """What every optimizer block holds: its own learning rate, because one value does not suit
    all (AdamW's 0.004 is far too small for SGD or Adadelta). The other fields are the torch
    optimizer's own keyword arguments, by the same names."""

    lr: PositiveFloat

    momentum_key: ClassVar[str | None] = None
    """The argument a cycling scheduler's momentum would drive: 'momentum', 'betas' or none."""
    schedulable: ClassVar[bool] = True
    """False where torch reads `lr` once, as the first step size, so schedulers do not shape it."""

    def torch_kwargs(self) -> dict[str, Any]:
        """The block as keyword arguments of the torch class (pairs as tuples)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_dump().items()}


class WithDecay(OptimizerArgs):
    """weight_decay is each optimizer's own: decoupled for AdamW (and NAdam/RAdam with
    decoupled_weight_decay), an L2 penalty added to the gradient for the others, where the
    value AdamW uses (0.05) over-regularizes. Optimizers without one (Rprop, LBFGS) have no key,
    so setting it is an unknown-key error, never silently ignored."""

    weight_decay: NonNegativeFloat


Betas = Annotated[list[UnitFloat], Field(min_length=2, max_length=2)]


class Sgd(WithDecay):
    momentum: UnitFloat
    nesterov: bool
    momentum_key: ClassVar[str | None] = "momentum"

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> Sgd:
        if self.nesterov and self.momentum == 0:
            raise ValueError(
                "nesterov = true needs momentum > 0 (Nesterov momentum is a kind of momentum): "
                "set momentum, or nesterov: false"
            )
        return self


class Adam(WithDecay):
    betas: Betas
    eps: PositiveFloat
    momentum_key: ClassVar[str | None] = "betas"


class NAdam(Adam):
    momentum_decay: NonNegativeFloat
    decoupled_weight_decay: bool


class RAdam(Adam):
    decoupled_weight_decay: bool


class RmsProp(WithDecay):
    alpha: UnitFloat
    momentum: UnitFloat
    eps: PositiveFloat
    momentum_key: ClassVar[str | None] = "momentum"


class Adagrad(WithDecay):
    lr_decay: NonNegativeFloat
    eps: PositiveFloat


class Adadelta(WithDecay):
    rho: Annotated[float, Field(ge=0, le=1)]
    eps: PositiveFloat


class Asgd(WithDecay):
    """Averaged SGD: past step `t0` it keeps a running average of the weights, and that
    average is the model the stage writes (see `adopt_averaged_weights`)."""

    lambd: NonNegativeFloat
    alpha: NonNegativeFloat
    t0: NonNegativeFloat


class Rprop(OptimizerArgs):
    etas: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)]
    step_sizes: Annotated[list[NonNegativeFloat], Field(min_length=2, max_length=2)]
    schedulable: ClassVar[bool] = False

    @model_validator(mode="after")
    def _ordered(self) -> Rprop:
        (minus, plus), (low, high) = self.etas, self.step_sizes
        if not minus < 1 < plus:
            raise ValueError(f"etas = {self.etas}: need etaminus < 1 < etaplus")
        if not low < high:
            raise ValueError(f"step_sizes = {self.step_sizes}: need min < max")
        return self


class Lbfgs(OptimizerArgs):
    """Quasi-Newton steps on each mini-batch: every optimizer step re-evaluates the batch's loss
    (a closure) at most `max_iter` x 5/4 times (torch's max_eval, the line search included)."""

    max_iter: PositiveInt
    history_size: PositiveInt
    line_search_fn: Literal["strong_wolfe"] | None
    tolerance_grad: NonNegativeFloat
    tolerance_change: NonNegativeFloat


@dataclass(frozen=True)
class OptimizerKind:
    args: type[OptimizerArgs]
    torch_name: str
    """The class in torch.optim."""
    implementation: Literal["fused", "foreach"] | None
    """The fastest torch offers on this class. Fused kernels are 2-3x faster per step on CPU
    than the per-tensor loop (bench/epoch_time.py); foreach batches the loop into multi-tensor
    kernels on CUDA and falls back to the loop on CPU. LBFGS has neither."""
    sqrt: bool = False
    """Its torch.optim update takes torch.sqrt, whose MKL kernel rounds differently on other CPU
    models, so numerics.cpu = portable cannot make its bytes the same on every CPU (the fused
    Adam, AdamW and Adagrad kernels take the exact instruction instead)."""

    def build(
        self, parameters: Iterable[nn.Parameter], args: OptimizerArgs, lr: float
    ) -> Optimizer:
        """This optimizer with the arguments `args`, at learning rate `lr`, in the fastest
        implementation torch has for it."""
        import torch

        kwargs = args.torch_kwargs() | {"lr": lr}
        if self.implementation is not None:
            kwargs[self.implementation] = True
        return getattr(torch.optim, self.torch_name)(parameters, **kwargs)


OPTIMIZERS = {
    "sgd": OptimizerKind(Sgd, "SGD", "fused"),
    "adam": OptimizerKind(Adam, "Adam", "fused"),
    "adamw": OptimizerKind(Adam, "AdamW", "fused"),
    "nadam": OptimizerKind(NAdam, "NAdam", "foreach", sqrt=True),
    "radam": OptimizerKind(RAdam, "RAdam", "foreach", sqrt=True),
    "adamax": OptimizerKind(Adam, "Adamax", "foreach"),
    "rmsprop": OptimizerKind(RmsProp, "RMSprop", "foreach", sqrt=True),
    "adagrad": OptimizerKind(Adagrad, "Adagrad", "fused"),
    "adadelta": OptimizerKind(Adadelta, "Adadelta", "foreach", sqrt=True),
    "asgd": OptimizerKind(Asgd, "ASGD", "foreach"),
    "rprop": OptimizerKind(Rprop, "Rprop", "foreach"),
    "lbfgs": OptimizerKind(Lbfgs, "LBFGS", None),
}
"""Adding an optimizer is an entry here and its block in params.yaml."""

REFUSED_OPTIMIZERS = {
    "sparseadam": "SparseAdam accepts only sparse gradients and the MLP's are dense: use adam "
    "or adamw (the same update on dense gradients)",
}

OptimizerName = Annotated[choice(OPTIMIZERS), BeforeValidator(not_refused(REFUSED_OPTIMIZERS))]
Optimizers = family("Optimizers", {name: kind.args for name, kind in OPTIMIZERS.items()})


class ChoosesOptimizer(Protocol):
    """What names the optimizer and holds its block: the train section."""

    @property
    def optimizer(self) -> str: ...

    @property
    def optimizer_args(self) -> OptimizerArgs: ...


def build_optimizer(
    parameters: Iterable[nn.Parameter], cfg: ChoosesOptimizer, lr: float
) -> Optimizer:
    """The optimizer `cfg` names, with its block's arguments, at learning rate `lr`."""
    return OPTIMIZERS[cfg.optimizer].build(parameters, cfg.optimizer_args, lr)


LINE_SEARCH = "line_search_fn"
"""LBFGS's argument that turns on its line search, which takes torch.sqrt."""


def sqrt_note(cfg: ChoosesOptimizer) -> str | None:
    """Why the bytes of a run with `cfg`'s optimizer hold on one CPU model only, even under
    numerics.cpu = portable: a part of its step takes torch.sqrt. None where none does."""
    line_search = getattr(cfg.optimizer_args, LINE_SEARCH, None)
    if not OPTIMIZERS[cfg.optimizer].sqrt and line_search is None:
        return None
    what = "strong-Wolfe line search" if line_search else "update"  # strong_wolfe: its only one
    portable = [
        name + (" without line search" if LINE_SEARCH in kind.args.model_fields else "")
        for name, kind in OPTIMIZERS.items()
        if not kind.sqrt
    ]
    return (
        f"{cfg.optimizer}'s {what} takes torch.sqrt, whose MKL kernel rounds differently on "
        f"other CPU models: this run's bytes hold on this CPU model only "
        f"({', '.join(portable[:-1])} and {portable[-1]} are portable)"
    )


def needs_closure(optimizer: Optimizer) -> bool:
    """LBFGS re-evaluates the loss within a step; the others take one gradient per step."""
    import torch

    return isinstance(optimizer, torch.optim.LBFGS)


def averaged_copy(model: nn.Module, optimizer: Optimizer) -> nn.Module | None:
    """For ASGD, a copy of `model` to hold its running average of the weights: the model ASGD
    trains, so the one to validate, rank and write. None for the other optimizers."""
    import copy

    import torch

    return copy.deepcopy(model) if isinstance(optimizer, torch.optim.ASGD) else None


def load_average(averaged: nn.Module, model: nn.Module, optimizer: Optimizer) -> None:
    """ASGD's current average (`ax`: the weights until step t0 + 1, then the mean of every
    later step's, torch's rule) into `averaged`, with `model`'s buffers."""
    import torch

    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        for target, param in zip(averaged.parameters(), params, strict=True):
            target.copy_(optimizer.state.get(param, {}).get("ax", param))
        for target, buffer in zip(averaged.buffers(), model.buffers(), strict=True):
            target.copy_(buffer)
