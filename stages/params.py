"""The one typed, validated schema for params.yaml, read by every stage.

Options that carry their own arguments (optimizers, losses, schedulers) are chosen by name
(`train.optimizer: adamw`) and configured in a block per option (`train.optimizers.adamw`), so
`dvc exp run -S train.optimizer=sgd` switches with one key, and an argument that does not
belong to an option is an unknown key, not a silently ignored one.

The schema has no defaults: params.yaml holds every value, so there is one place to read them.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.cli import StageError
from stages.fashion_mnist import TRAIN_SIZE

PARAMS_FILE = Path("params.yaml")

PositiveFloat = Annotated[float, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0, lt=1)]
Device = Literal["auto", "cpu", "cuda"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Download(Strict):
    source_dir: str
    mirrors: list[str]
    timeout_s: PositiveFloat


class Split(Strict):
    val_size: Annotated[int, Field(gt=0)]
    seed: int
    subset: Annotated[int, Field(gt=1)] | None
    """Keep a stratified random subset of this many training images (for quick runs)."""

    @model_validator(mode="after")
    def _val_smaller_than_train(self) -> Split:
        pool = self.subset or TRAIN_SIZE
        if self.subset is not None and self.subset > TRAIN_SIZE:
            raise ValueError(
                f"split.subset = {self.subset} exceeds the {TRAIN_SIZE} training images"
            )
        if self.val_size >= pool:
            raise ValueError(
                f"split.val_size = {self.val_size} must be smaller than the {pool} images it is "
                "taken from (split.subset, or all training images)"
            )
        return self


class Model(Strict):
    hidden: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]
    dropout: UnitFloat
    input_dropout: UnitFloat


class Sgd(Strict):
    momentum: UnitFloat
    nesterov: bool


class Adam(Strict):
    betas: Annotated[list[UnitFloat], Field(min_length=2, max_length=2)]
    eps: PositiveFloat


class RmsProp(Strict):
    alpha: UnitFloat
    momentum: UnitFloat
    eps: PositiveFloat


class Adagrad(Strict):
    lr_decay: Annotated[float, Field(ge=0)]
    eps: PositiveFloat


class Optimizers(Strict):
    sgd: Sgd
    adam: Adam
    adamw: Adam
    rmsprop: RmsProp
    adagrad: Adagrad


class CrossEntropy(Strict):
    label_smoothing: UnitFloat


class Nll(Strict):
    pass


class Losses(Strict):
    cross_entropy: CrossEntropy
    nll: Nll


class StepLR(Strict):
    step_size: Annotated[int, Field(gt=0)]
    gamma: PositiveFloat


class MultiStepLR(Strict):
    milestones: list[Annotated[int, Field(gt=0)]]
    gamma: PositiveFloat


class ExponentialLR(Strict):
    gamma: PositiveFloat


class CosineLR(Strict):
    eta_min: Annotated[float, Field(ge=0)]


class OneCycleLR(Strict):
    pct_start: Annotated[float, Field(gt=0, lt=1)]
    div_factor: PositiveFloat
    final_div_factor: PositiveFloat
    anneal_strategy: Literal["cos", "linear"]


class Schedulers(Strict):
    step: StepLR
    multistep: MultiStepLR
    exponential: ExponentialLR
    cosine: CosineLR
    onecycle: OneCycleLR


class Augment(Strict):
    hflip: bool
    max_shift: Annotated[int, Field(ge=0, le=4)]
    """Pixels; 0 turns shifting off."""


Seed = Annotated[int, Field(ge=0)]


class Train(Strict):
    seed: Seed
    device: Device
    nproc: Annotated[int, Field(ge=1)]
    """Processes to train in (DistributedDataParallel under torchrun); 1 = this process."""
    epochs: Annotated[int, Field(ge=0)]
    batch_size: Annotated[int, Field(gt=0)]
    precision: Literal["fp32", "bf16"]
    lr: PositiveFloat
    weight_decay: Annotated[float, Field(ge=0)]
    augment: Augment
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]
    optimizers: Optimizers
    loss: Literal["cross_entropy", "nll"]
    losses: Losses
    scheduler: Literal["none", "step", "multistep", "exponential", "cosine", "onecycle"]
    schedulers: Schedulers

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


class Swa(Strict):
    epochs: Annotated[int, Field(ge=0)]
    """0 passes the trained model through unchanged."""
    lr: PositiveFloat
    anneal_epochs: Annotated[int, Field(ge=0)]
    anneal_strategy: Literal["cos", "linear"]
    seed: Seed


class Evaluate(Strict):
    batch_size: Annotated[int, Field(gt=0)]
    misclassified_grid: Annotated[int, Field(gt=0, le=20)]
    """Side of the square grid of misclassified test images drawn per model."""


class Export(Strict):
    model: Literal["swa", "train"]
    opset: Annotated[int, Field(ge=18)]
    atol: PositiveFloat


class Params(Strict):
    download: Download
    split: Split
    model: Model
    train: Train
    swa: Swa
    evaluate: Evaluate
    export: Export


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` is a string; DVC (YAML 1.2) writes it as a float."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.nan)$",
        re.IGNORECASE,
    ),
    list("-+0123456789."),
)


MAX_REPORTED = 8


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; any problem is one StageError naming key, value and fix."""
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12FloatLoader)
    except FileNotFoundError:
        raise StageError(f"{path} not found: run the stage from the project root") from None
    except yaml.YAMLError as e:
        raise StageError(f"{path} is not valid YAML: {e}") from None
    return parse_params(raw if raw is not None else {}, source=str(path))


def parse_params(raw: Any, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise StageError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  - {_describe(err, raw)}" for err in e.errors()[:MAX_REPORTED])
        if e.error_count() > MAX_REPORTED:
            problems += f"\n  ... and {e.error_count() - MAX_REPORTED} more"
        raise StageError(f"{source} has invalid params:\n{problems}") from None


def _describe(err: Any, raw: dict) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = sorted(_fields_at(loc[:-1]))
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{key}: unknown key{did_you_mean} (allowed here: {', '.join(allowed)})"
    if err["type"] == "missing":
        return f"{key}: missing (every key must be set; the project's params.yaml lists them all)"
    value = _value_at(raw, loc)
    shown = "" if value is _MISSING or isinstance(value, dict) else f" = {value!r}"
    message = err["msg"].removeprefix("Value error, ")
    return f"{key}{shown}: {message}"


_MISSING = object()


def _value_at(raw: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def _fields_at(loc: tuple) -> set[str]:
    model: type[BaseModel] = Params
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return set()
        model = annotation
    return set(model.model_fields)
