"""The one typed, validated schema for params.yaml, read by every stage.

Options that carry their own arguments (optimizers, losses, schedulers) are chosen by name
(`train.optimizer: adamw`) and configured in a block per option (`train.optimizers.adamw`), so
`dvc exp run -S train.optimizer=sgd` switches with one key, and an argument that does not
belong to an option is an unknown key, not a silently ignored one.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.cli import StageError
from stages.data import TRAIN_SIZE

PARAMS_FILE = Path("params.yaml")

PositiveFloat = Annotated[float, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0, lt=1)]
Device = Literal["auto", "cpu", "cuda"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Download(Strict):
    source_dir: str = "/usr/share/datasets/fashion-mnist"
    mirrors: list[str] = [
        "https://ossci-datasets.s3.amazonaws.com/fashion-mnist/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ]
    timeout_s: PositiveFloat = 30.0


class Split(Strict):
    val_size: Annotated[int, Field(gt=0)] = 10_000
    seed: int = 0
    subset: Annotated[int, Field(gt=1)] | None = None
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
    hidden: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = [512, 512]
    dropout: UnitFloat = 0.0


class Sgd(Strict):
    momentum: UnitFloat = 0.9
    nesterov: bool = True


class Adam(Strict):
    betas: Annotated[list[UnitFloat], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    eps: PositiveFloat = 1e-8


class RmsProp(Strict):
    alpha: UnitFloat = 0.99
    momentum: UnitFloat = 0.0
    eps: PositiveFloat = 1e-8


class Adagrad(Strict):
    lr_decay: Annotated[float, Field(ge=0)] = 0.0
    eps: PositiveFloat = 1e-10


class Optimizers(Strict):
    sgd: Sgd = Sgd()
    adam: Adam = Adam()
    adamw: Adam = Adam()
    rmsprop: RmsProp = RmsProp()
    adagrad: Adagrad = Adagrad()


class CrossEntropy(Strict):
    label_smoothing: UnitFloat = 0.0


class Nll(Strict):
    pass


class Losses(Strict):
    cross_entropy: CrossEntropy = CrossEntropy()
    nll: Nll = Nll()


class StepLR(Strict):
    step_size: Annotated[int, Field(gt=0)] = 10
    gamma: PositiveFloat = 0.1


class MultiStepLR(Strict):
    milestones: list[Annotated[int, Field(gt=0)]] = [15, 25]
    gamma: PositiveFloat = 0.1


class ExponentialLR(Strict):
    gamma: PositiveFloat = 0.9


class CosineLR(Strict):
    eta_min: Annotated[float, Field(ge=0)] = 0.0


class OneCycleLR(Strict):
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.25
    div_factor: PositiveFloat = 25.0
    final_div_factor: PositiveFloat = 1e4
    anneal_strategy: Literal["cos", "linear"] = "cos"


class Schedulers(Strict):
    step: StepLR = StepLR()
    multistep: MultiStepLR = MultiStepLR()
    exponential: ExponentialLR = ExponentialLR()
    cosine: CosineLR = CosineLR()
    onecycle: OneCycleLR = OneCycleLR()


class Train(Strict):
    seed: int = 0
    device: Device = "auto"
    epochs: Annotated[int, Field(ge=0)] = 30
    batch_size: Annotated[int, Field(gt=0)] = 128
    lr: PositiveFloat = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    augment: bool = False
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "adamw"
    optimizers: Optimizers = Optimizers()
    loss: Literal["cross_entropy", "nll"] = "cross_entropy"
    losses: Losses = Losses()
    scheduler: Literal["none", "step", "multistep", "exponential", "cosine", "onecycle"] = "none"
    schedulers: Schedulers = Schedulers()


class Swa(Strict):
    epochs: Annotated[int, Field(ge=0)] = 10
    """0 passes the trained model through unchanged."""
    lr: PositiveFloat = 1e-3
    anneal_epochs: Annotated[int, Field(ge=0)] = 3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    seed: int = 0


class Evaluate(Strict):
    batch_size: Annotated[int, Field(gt=0)] = 2048
    misclassified_grid: Annotated[int, Field(gt=0, le=20)] = 6
    """Side of the square grid of misclassified test images drawn per model."""


class Export(Strict):
    model: Literal["swa", "train"] = "swa"
    opset: Annotated[int, Field(ge=18)] = 18
    atol: PositiveFloat = 1e-4


class Params(Strict):
    download: Download = Download()
    split: Split = Split()
    model: Model = Model()
    train: Train = Train()
    swa: Swa = Swa()
    evaluate: Evaluate = Evaluate()
    export: Export = Export()


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
        problems = "\n".join(f"  - {_describe(err, raw)}" for err in e.errors())
        raise StageError(f"{source} has invalid params:\n{problems}") from None


def _describe(err: Any, raw: dict) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = sorted(_fields_at(loc[:-1]))
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{key}: unknown key{did_you_mean} (allowed here: {', '.join(allowed)})"
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
