"""The params.yaml sections that no option table shapes (every one but train), and train's
augment block: download, split and evaluate load theirs alone (config/loader.py's
load_sections), without the option tables. Torch-free, like the rest of the schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fashion_mnist_mlp.config.schema import (
    NonNegativeFloat,
    PositiveFloat,
    Seed,
    Strict,
    UnitFloat,
)
from fashion_mnist_mlp.training.fashion_mnist import TRAIN_SIZE

MAX_WIDTH, MAX_DEPTH = 8192, 8
"""Beyond these the MLP no longer fits a training machine's memory in a useful time."""


class Download(Strict):
    source_dir: str
    mirrors: list[str]
    timeout_s: PositiveFloat


class Split(Strict):
    val_size: Annotated[int, Field(gt=0)]
    seed: Seed
    subset: Annotated[int, Field(gt=1, le=TRAIN_SIZE)] | None
    """Keep a stratified random subset of this many training images (quick runs); null or
    60000 keeps them all."""

    @property
    def train_images(self) -> int:
        return (self.subset or TRAIN_SIZE) - self.val_size

    @model_validator(mode="after")
    def _val_smaller_than_train(self) -> Split:
        pool = self.subset or TRAIN_SIZE
        if self.val_size >= pool:
            raise ValueError(
                f"split.val_size = {self.val_size} must be smaller than the {pool} images it is "
                "taken from (split.subset, or all training images)"
            )
        return self


class Model(Strict):
    hidden: Annotated[
        list[Annotated[int, Field(gt=0, le=MAX_WIDTH)]], Field(min_length=1, max_length=MAX_DEPTH)
    ]
    dropout: UnitFloat
    input_dropout: UnitFloat
    batch_norm: bool
    """BatchNorm after each hidden linear layer (before its ReLU)."""
    normalize_input: bool
    """Standardize the pixels with the training split's mean and std inside the model; false
    feeds the [0, 1] pixels as they are, as the lesson does."""


class Augment(Strict):
    hflip: bool
    max_shift: Annotated[int, Field(ge=0, le=4)]
    """Pixels; 0 turns shifting off."""


class Swa(Strict):
    strategy: Literal["swa", "ema"]
    """swa: the equal average of the weights after every epoch; ema: an exponential moving
    average of the weights, updated after every step."""
    epochs: Annotated[int, Field(ge=0)]
    """0 passes the trained model through unchanged."""
    lr: PositiveFloat
    anneal_epochs: Annotated[int, Field(ge=0)]
    anneal_strategy: Literal["cos", "linear"]
    ema_decay: Annotated[float, Field(gt=0, lt=1)]
    """ema: each step keeps this share of the average and adds (1 - decay) of the weights."""
    seed: Seed

    @model_validator(mode="after")
    def _annealing_fits(self) -> Swa:
        if self.epochs > 0 and self.anneal_epochs > self.epochs:
            raise ValueError(
                f"swa.anneal_epochs = {self.anneal_epochs} is longer than the run: swa.epochs = "
                f"{self.epochs} would end before the lr reaches swa.lr; make anneal_epochs at "
                "most swa.epochs"
            )
        return self


class Evaluate(Strict):
    batch_size: Annotated[int, Field(gt=0)]
    misclassified_grid: Annotated[int, Field(gt=0, le=20)]
    """Side of the square grid of misclassified test images drawn per model."""


class Export(Strict):
    model: Literal["swa", "train"]
    opset: Annotated[int, Field(ge=18, le=28)]
    """export builds the graph itself (Flatten, Gemm, Relu: unchanged since opset 13); 18 as the
    floor ONNX Runtime builds everywhere support, 28 the newest the locked onnx knows."""
    atol: PositiveFloat
    rtol: NonNegativeFloat
    """The parity check allows |logit difference| <= atol + rtol x the largest |logit|."""
    calibrate: bool
    """Temperature scaling fitted on the validation split, folded into the last layer."""


class Numerics(Strict):
    cpu: Literal["portable", "native"]
    """portable: the same bytes on every x86-64 CPU with AVX2 and FMA (fashion_mnist_mlp/training/numerics.py);
    native: each CPU's fastest kernels, whose bytes hold on one CPU model."""
    threads: Annotated[int, Field(ge=1, le=256)] | Literal["auto"]
    """Threads of a run, shared by its train.nproc processes: under portable, the matrix
    products' (ATen's other kernels take one); under native, all of ATen's. How the work is
    split, and so the bytes, depend on it. auto: torch's default (OMP_NUM_THREADS, or the cores)."""
