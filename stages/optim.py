"""Loss functions, optimizers and learning-rate schedulers, each chosen by name from params."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from stages.params import OPTIMIZERS, Train

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(cfg: Train) -> LossFn:
    """A loss over logits. `nll` is the lesson's NLLLoss on log-softmax outputs."""
    if cfg.loss == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=cfg.losses.cross_entropy.label_smoothing)
    return lambda logits, targets: F.nll_loss(F.log_softmax(logits, dim=1), targets)


def build_optimizer(params: Iterable[nn.Parameter], cfg: Train, lr: float) -> Optimizer:
    """The chosen optimizer (params.OPTIMIZERS) with its block's arguments, at learning rate
    `lr`, in the fastest implementation torch has for it."""
    kind = OPTIMIZERS[cfg.optimizer]
    cls = getattr(torch.optim, kind.torch_name)
    kwargs = cfg.optimizer_args.torch_kwargs() | {"lr": lr, kind.implementation: True}
    return cls(params, **kwargs)


def build_scheduler(
    optimizer: Optimizer, cfg: Train, steps_per_epoch: int
) -> tuple[LRScheduler | None, bool]:
    """The configured scheduler and whether it steps per batch (True) or per epoch (False)."""
    args = getattr(cfg.schedulers, cfg.scheduler, None)
    sched = torch.optim.lr_scheduler
    match cfg.scheduler:
        case "none":
            return None, False
        case "step":
            return sched.StepLR(optimizer, step_size=args.step_size, gamma=args.gamma), False
        case "multistep":
            return sched.MultiStepLR(optimizer, milestones=args.milestones, gamma=args.gamma), False
        case "exponential":
            return sched.ExponentialLR(optimizer, gamma=args.gamma), False
        case "cosine":
            return sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=args.eta_min), False
        case "onecycle":
            total_steps = max(1, cfg.epochs * steps_per_epoch)
            # A warm-up of exactly one step ends where it starts, and torch's OneCycleLR divides
            # by its zero length; just under one step it is no warm-up, as it should be.
            pct_start = args.pct_start * (1 - 1e-9 if args.pct_start * total_steps == 1 else 1)
            return sched.OneCycleLR(
                optimizer,
                max_lr=cfg.learning_rate,
                total_steps=total_steps,
                pct_start=pct_start,
                div_factor=args.div_factor,
                final_div_factor=args.final_div_factor,
                anneal_strategy=args.anneal_strategy,
                # off unless asked for: it would overwrite the momentum/beta1 params.yaml sets
                cycle_momentum=args.cycle_momentum,
                base_momentum=args.base_momentum,
                max_momentum=args.max_momentum,
            ), True
    raise AssertionError(f"unhandled scheduler {cfg.scheduler}")


def stepper(scheduler: LRScheduler | None, total_steps: int) -> Callable[[], None] | None:
    """scheduler.step, except after the run's last step: that call would set the lr of a step
    that never comes (OneCycleLR's linear annealing extrapolates it below zero), and the lr the
    run ended at, which swa starts from, must be the one its last step used."""
    if scheduler is None:
        return None

    def step() -> None:
        if scheduler.last_epoch + 1 < total_steps:
            scheduler.step()

    return step


def current_lr(optimizer: Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
