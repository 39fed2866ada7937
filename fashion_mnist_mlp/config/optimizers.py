"""Every optimizer `train.optimizer` can name: one table entry each, name → its validated
argument block (torch's own keyword arguments, plus its own lr) and its torch.optim class.

Torch-free at import, like fashion_mnist_mlp/config/params.py, which builds the schema from this table; torch is
imported when an optimizer is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from fashion_mnist_mlp.config.schema import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Strict,
    UnitFloat,
)

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from fashion_mnist_mlp.config.params import Train


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


OPTIMIZERS = {
    "sgd": OptimizerKind(Sgd, "SGD", "fused"),
    "adam": OptimizerKind(Adam, "Adam", "fused"),
    "adamw": OptimizerKind(Adam, "AdamW", "fused"),
    "nadam": OptimizerKind(NAdam, "NAdam", "foreach"),
    "radam": OptimizerKind(RAdam, "RAdam", "foreach"),
    "adamax": OptimizerKind(Adam, "Adamax", "foreach"),
    "rmsprop": OptimizerKind(RmsProp, "RMSprop", "foreach"),
    "adagrad": OptimizerKind(Adagrad, "Adagrad", "fused"),
    "adadelta": OptimizerKind(Adadelta, "Adadelta", "foreach"),
    "asgd": OptimizerKind(Asgd, "ASGD", "foreach"),
    "rprop": OptimizerKind(Rprop, "Rprop", "foreach"),
    "lbfgs": OptimizerKind(Lbfgs, "LBFGS", None),
}
"""Adding an optimizer is an entry here and its block in params.yaml."""

REFUSED_OPTIMIZERS = {
    "sparseadam": "SparseAdam accepts only sparse gradients and the MLP's are dense: use adam "
    "or adamw (the same update on dense gradients)",
}


def build_optimizer(params: Iterable[nn.Parameter], cfg: Train, lr: float) -> Optimizer:
    """The optimizer `cfg` names, with its block's arguments, at learning rate `lr`, in the
    fastest implementation torch has for it."""
    import torch

    kind = OPTIMIZERS[cfg.optimizer]
    kwargs = cfg.optimizer_args.torch_kwargs() | {"lr": lr}
    if kind.implementation is not None:
        kwargs[kind.implementation] = True
    return getattr(torch.optim, kind.torch_name)(params, **kwargs)


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
