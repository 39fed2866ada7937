"""The lesson's save and load: our model as the weights of the lesson's `NeuralNetwork` class.

The lesson's class is `flatten` + `linear_relu_stack` (Linear, ReLU, Linear, ReLU, Linear) and
takes ToTensor's images in [0, 1]. It has no input normalization, no BatchNorm and no
temperature, so each is folded into a linear layer: normalization into the first (its weights
divided by the pixel std, the mean moved into the bias), an eval-mode BatchNorm into the layer
before it (export folds a calibration temperature into our model's last layer first). The
folded network computes the same function; export checks it on the test set.
"""

from __future__ import annotations

import io
from itertools import pairwise

import torch
from torch import nn

from fashion_mnist_mlp.training.model import MLP

STACK = "linear_relu_stack"


class NeuralNetwork(nn.Module):
    """The lesson's class, with the hidden widths as an argument (the lesson's: 512, 512)."""

    def __init__(
        self, hidden: tuple[int, ...] = (512, 512), in_features: int = 784, classes: int = 10
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(*stack_layers(hidden, in_features, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_relu_stack(self.flatten(x))


def stack_layers(hidden: tuple[int, ...], in_features: int, classes: int) -> list[nn.Module]:
    widths = [in_features, *hidden]
    layers: list[nn.Module] = []
    for width_in, width_out in pairwise(widths):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    return [*layers, nn.Linear(widths[-1], classes)]


def stack_code(hidden: tuple[int, ...], in_features: int, classes: int) -> str:
    """The `linear_relu_stack` these weights load into, as the Python that builds it."""
    layers = stack_layers(hidden, in_features, classes)
    parts = [
        f"nn.Linear({m.in_features}, {m.out_features})" if isinstance(m, nn.Linear) else "nn.ReLU()"
        for m in layers
    ]
    return f"nn.Sequential({', '.join(parts)})"


@torch.no_grad()
def lesson_state_dict(model: MLP) -> dict[str, torch.Tensor]:
    """`model`'s function as the lesson class's state_dict, folded in float64 and rounded once
    to float32."""
    config = model.config
    folded: list[list[torch.Tensor]] = []
    for module in model.net:
        if isinstance(module, nn.Linear):
            folded.append([module.weight.double(), module.bias.double()])
        elif isinstance(module, nn.BatchNorm1d):  # eval mode: a per-feature affine map
            weight, bias = folded[-1]
            # rsqrt, not sqrt: MKL's vector sqrt rounds differently from one CPU model to the
            # next (fashion_mnist_mlp/training/numerics.py); ATen's rsqrt is the exact instruction and a division
            gain = module.weight.double() * (module.running_var.double() + module.eps).rsqrt()
            shift = module.bias.double() - module.running_mean.double() * gain
            folded[-1] = [weight * gain[:, None], bias * gain + shift]
    first_weight, first_bias = folded[0]
    # W (x - mean) / std + b  =  (W / std) x + (b - mean / std * W 1)
    folded[0] = [
        first_weight / config.pixel_std,
        first_bias - config.pixel_mean / config.pixel_std * first_weight.sum(1),
    ]
    return {
        f"{STACK}.{2 * i}.{name}": tensor.float().contiguous()
        for i, pair in enumerate(folded)
        for name, tensor in zip(("weight", "bias"), pair, strict=True)
    }


def torch_save_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """`torch.save(state)` as bytes: the same state gives the same bytes (saving to a path would
    put the file's name inside the archive)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
