"""Every loss `train.loss` can name, as a classification recipe over the MLP's logits: one table
entry each, name → its validated argument block, whose `build()` gives the loss function.

The model always outputs logits; each recipe says what it turns them into (probabilities,
log-probabilities) and which targets it compares them with (class indices, one-hot, smoothed).
Whatever the loss, predictions are the argmax of the logits, and the stages report plain
cross-entropy beside it so runs with different losses compare. Torch-free at import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pydantic import ConfigDict

from fashion_mnist_mlp.config.schema import Strict, UnitFloat, choice, chosen, family

if TYPE_CHECKING:
    import torch

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def _targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets, with `smoothing` of the mass spread evenly over all classes."""
    import torch.nn.functional as F

    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot * (1 - smoothing) + smoothing / num_classes


class LossArgs(Strict, ABC):
    @abstractmethod
    def build(self) -> LossFn:
        """The loss of a batch: logits (N, classes) and class indices (N,) → a scalar."""


class CrossEntropy(LossArgs):
    label_smoothing: UnitFloat

    def build(self) -> LossFn:
        import torch.nn.functional as F

        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)


class Nll(LossArgs):
    def build(self) -> LossFn:
        import torch.nn.functional as F

        return lambda logits, y: F.nll_loss(F.log_softmax(logits, dim=1), y)


class Mse(LossArgs):
    def build(self) -> LossFn:
        # summed over classes (the Brier score), so its gradients do not shrink with the class
        # count as an element-wise mean's would
        return lambda logits, y: (
            (logits.softmax(1) - _targets(y, logits.shape[1], 0.0)).square().sum(1).mean()
        )


class L1(LossArgs):
    def build(self) -> LossFn:
        return lambda logits, y: (
            (logits.softmax(1) - _targets(y, logits.shape[1], 0.0)).abs().sum(1).mean()
        )


class Bce(LossArgs):
    label_smoothing: UnitFloat

    def build(self) -> LossFn:
        import torch.nn.functional as F

        # BCEWithLogits: log-sigmoid computed stably from the logits, never sigmoid then log
        return lambda logits, y: (
            F.binary_cross_entropy_with_logits(
                logits, _targets(y, logits.shape[1], self.label_smoothing), reduction="none"
            )
            .sum(1)
            .mean()
        )


class KlDiv(LossArgs):
    label_smoothing: UnitFloat

    def build(self) -> LossFn:
        import torch.nn.functional as F

        return lambda logits, y: F.kl_div(
            F.log_softmax(logits, dim=1),
            _targets(y, logits.shape[1], self.label_smoothing),
            reduction="batchmean",
        )


LOSSES: dict[str, type[LossArgs]] = {
    "cross_entropy": CrossEntropy,
    "nll": Nll,
    "mse": Mse,
    "l1": L1,
    "bce": Bce,
    "kl_div": KlDiv,
}
"""Adding a loss is an entry here and its block in params.yaml."""

LossName = choice(LOSSES)
Losses = family("Losses", LOSSES)


class ChoosesLoss(Protocol):
    """What names the loss: the train section, or evaluate's view of it (TrainLoss)."""

    @property
    def loss_args(self) -> LossArgs: ...


class TrainLoss(Strict):
    """The train section as evaluate reads it: the loss (test.json's `objective`) and its
    block. The section's other keys are other stages' concern, checked by validate."""

    model_config = ConfigDict(extra="ignore")

    loss: LossName
    losses: Losses

    @property
    def loss_args(self) -> LossArgs:
        return chosen(self.losses, self.loss)


def build_loss(cfg: ChoosesLoss) -> LossFn:
    """The chosen recipe, on float32 logits: under bf16 autocast the linear layers give bf16,
    and softmax/log_softmax would then run in bf16 (errors near 0.02 in log-probabilities)."""
    loss = cfg.loss_args.build()
    return lambda logits, y: loss(logits.float(), y)
