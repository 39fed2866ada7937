"""The lesson's network: 784-512-512-10 with ReLU, optional dropout and BatchNorm, input
normalization inside.

Inputs are images in [0, 1], shaped (N, 28, 28) or (N, 1, 28, 28), as torchvision's ToTensor
gives them; normalizing inside the model keeps the exported ONNX graph self-contained. The
normalization constants are the pixel mean and standard deviation of the training split (the
split stage measures them), part of the model's config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fashion_mnist_mlp.config.sections import Model as ModelParams
from fashion_mnist_mlp.training.fashion_mnist import CLASSES, IMAGE_SIDE
from fashion_mnist_mlp.training.portable_matmul import Linear

# What models written before the statistics came from the training split used: those of all
# 60,000 training images, validation included. Read only for such files (fashion_mnist_mlp/training/model_files.py).
LEGACY_PIXEL_MEAN = 0.2860
LEGACY_PIXEL_STD = 0.3530


@dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...] = (512, 512)
    dropout: float = 0.0
    input_dropout: float = 0.0
    batch_norm: bool = False
    in_features: int = IMAGE_SIDE * IMAGE_SIDE
    num_classes: int = len(CLASSES)
    pixel_mean: float = 0.0
    pixel_std: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MLPConfig:
        return cls(**{**d, "hidden": tuple(d["hidden"])})

    @classmethod
    def from_params(cls, p: ModelParams, pixel_mean: float, pixel_std: float) -> MLPConfig:
        if not p.normalize_input:
            pixel_mean, pixel_std = 0.0, 1.0
        return cls(
            hidden=tuple(p.hidden), dropout=p.dropout, input_dropout=p.input_dropout,
            batch_norm=p.batch_norm, pixel_mean=pixel_mean, pixel_std=pixel_std,
        )  # fmt: skip


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on CPU, same semantics and no state.

    On CPU, ATen draws its random numbers one by one from one Mersenne Twister, and a float
    costs as much as 64 bits: torch.rand for a 512x512 activation takes 0.8 ms here, about half
    its layer's matmul. So each 64-bit draw gives four 16-bit lanes, and an element is kept when
    its lane is at least p of the way up the int16 range: 0.31 ms for the same mask. p is
    rounded to a multiple of 1/65536 (the mean output is off by at most 1.5e-5 / (1 - p)).
    On GPU the fused kernel is faster, so it is used there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * keep_mask(x.shape, self.p).to(x.dtype)


LANES = 4  # int16 lanes in one int64 draw


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """float32 of `shape`: 1 / (1 - p) where an element is kept (probability 1 - p), else 0."""
    n = shape.numel()
    words = torch.randint(-(2**63), 2**63 - 1, (-(-n // LANES),), dtype=torch.int64)
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes.float().ge_(round(p * 2**16) - 2**15).mul_(1 / (1 - p))


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Flatten()]
        if config.input_dropout > 0:
            layers.append(Dropout(config.input_dropout))
        width = config.in_features
        for hidden in config.hidden:
            layers.append(Linear(width, hidden))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            if config.dropout > 0:
                layers.append(Dropout(config.dropout))
            width = hidden
        layers.append(Linear(width, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.config.pixel_mean) / self.config.pixel_std)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits in eval mode, in batches so memory stays flat for any number of images."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float) -> None:
    """Divide the model's logits by `temperature`: its last linear layer's weights and bias."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    last.weight.div_(temperature)
    last.bias.div_(temperature)
