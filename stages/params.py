"""The one typed, validated schema for params.yaml, read by every stage.

Options that carry their own arguments (optimizers, losses, schedulers) are chosen by name
(`train.optimizer: adamw`) and configured in a block per option (`train.optimizers.adamw`), so
`dvc exp run -S train.optimizer=sgd` switches with one key, and an argument that does not
belong to an option is an unknown key, not a silently ignored one.

The schema has no defaults: params.yaml holds every value, so there is one place to read them.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    create_model,
    model_validator,
)

from stages.cli import StageError
from stages.fashion_mnist import TRAIN_SIZE

PARAMS_FILE = Path("params.yaml")

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, lt=1)]
Device = Literal["auto", "cpu", "cuda"]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""NumPy's legacy global seed, which seed_everything sets, takes 32 bits."""


def _auto_or_positive(value: Any) -> str | float:
    if value == "auto":
        return value
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError("Input should be 'auto' or a finite number greater than 0")


AutoOrPositive = Annotated[Literal["auto"] | float, PlainValidator(_auto_or_positive)]


def _not_refused(refused: dict[str, str]) -> Callable[[Any], Any]:
    """A before-validator that names why a real torch option is not offered."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and value in refused:
            raise ValueError(refused[value])
        return value

    return check


MAX_WIDTH, MAX_DEPTH = 8192, 8
"""Beyond these the MLP no longer fits a training machine's memory in a useful time."""


class Strict(BaseModel):
    # inf and nan pass `gt=0`-style bounds (a lr of .inf would only show up as a diverged run)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


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


class OptimizerArgs(Strict):
    """What every optimizer block holds: its own learning rate, because one value does not suit
    all (AdamW's 0.004 is far too small for SGD or Adadelta). The other fields are the torch
    optimizer's own keyword arguments, by the same names."""

    lr: PositiveFloat

    momentum_key: ClassVar[str | None] = None
    """The argument OneCycleLR's momentum cycling would drive: 'momentum', 'betas' or none."""

    def torch_kwargs(self) -> dict[str, Any]:
        """The block as keyword arguments of the torch class (pairs as tuples)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_dump().items()}


class WithDecay(OptimizerArgs):
    """weight_decay is each optimizer's own: decoupled for AdamW (and NAdam/RAdam with
    decoupled_weight_decay), an L2 penalty added to the gradient for the others, where the
    value AdamW uses (0.05) over-regularizes."""

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
    rho: UnitFloat
    eps: PositiveFloat


class Asgd(WithDecay):
    lambd: NonNegativeFloat
    alpha: NonNegativeFloat
    t0: NonNegativeFloat


class Rprop(OptimizerArgs):
    """No weight decay in torch's Rprop, so no key for it."""

    etas: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)]
    step_sizes: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)]

    @model_validator(mode="after")
    def _ordered(self) -> Rprop:
        (minus, plus), (low, high) = self.etas, self.step_sizes
        if not minus < 1 < plus:
            raise ValueError(f"etas = {self.etas}: need etaminus < 1 < etaplus")
        if not low < high:
            raise ValueError(f"step_sizes = {self.step_sizes}: need min < max")
        return self


@dataclass(frozen=True)
class OptimizerKind:
    args: type[OptimizerArgs]
    torch_name: str
    """The class in torch.optim."""
    implementation: Literal["fused", "foreach"]
    """The fastest torch offers on this class: fused kernels are 2-3x faster per step on CPU
    than the per-tensor loop (bench/epoch_time.py); foreach batches the loop where there are
    none."""


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
}
"""Every optimizer `train.optimizer` can name: its argument block and its torch class. Adding
one is an entry here and its block in params.yaml."""

REFUSED_OPTIMIZERS = {
    "sparseadam": "SparseAdam accepts only sparse gradients and the MLP's are dense: use adam "
    "or adamw (the same update on dense gradients)",
}

OptimizerName = Literal[tuple(OPTIMIZERS)]
Optimizers = create_model(
    "Optimizers", __base__=Strict, **{name: (kind.args, ...) for name, kind in OPTIMIZERS.items()}
)


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
    cycle_momentum: bool
    """Off: the optimizer keeps the momentum (or beta1) its block sets. On: momentum cycles
    inversely to the lr between these bounds, and the block's value is not used."""
    base_momentum: UnitFloat
    max_momentum: UnitFloat

    @model_validator(mode="after")
    def _momentum_bounds_ordered(self) -> OneCycleLR:
        if self.base_momentum > self.max_momentum:
            raise ValueError(
                f"base_momentum = {self.base_momentum} must not exceed max_momentum = "
                f"{self.max_momentum}"
            )
        return self


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


class Train(Strict):
    seed: Seed
    device: Device
    nproc: Annotated[int, Field(ge=1)]
    """Processes to train in (DistributedDataParallel under torchrun); 1 = this process."""
    epochs: Annotated[int, Field(ge=0)]
    batch_size: Annotated[int, Field(gt=0)]
    precision: Literal["fp32", "bf16"]
    lr: AutoOrPositive
    """'auto': the chosen optimizer's own lr (train.optimizers.<name>.lr); a number overrides
    it, whatever the optimizer."""
    augment: Augment
    optimizer: Annotated[OptimizerName, BeforeValidator(_not_refused(REFUSED_OPTIMIZERS))]
    optimizers: Optimizers
    loss: Literal["cross_entropy", "nll"]
    losses: Losses
    scheduler: Literal["none", "step", "multistep", "exponential", "cosine", "onecycle"]
    schedulers: Schedulers

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def optimizer_args(self) -> OptimizerArgs:
        return getattr(self.optimizers, self.optimizer)

    @property
    def learning_rate(self) -> float:
        return self.optimizer_args.lr if self.lr == "auto" else self.lr

    @property
    def cycles_momentum(self) -> bool:
        return self.scheduler == "onecycle" and self.schedulers.onecycle.cycle_momentum

    @model_validator(mode="after")
    def _momentum_cycling_needs_momentum(self) -> Train:
        if self.cycles_momentum and self.optimizer_args.momentum_key is None:
            with_momentum = [
                name for name in Optimizers.model_fields
                if getattr(self.optimizers, name).momentum_key is not None
            ]  # fmt: skip
            raise ValueError(
                f"train.schedulers.onecycle.cycle_momentum = true cycles the optimizer's "
                f"momentum, but train.optimizer = '{self.optimizer}' has none: set "
                f"cycle_momentum: false, or use one of {', '.join(with_momentum)}"
            )
        return self

    def unused_params(self) -> list[str]:
        """Keys set in params.yaml that the chosen combination does not use, each with why: the
        stage prints them, so no value is ignored silently."""
        notes = []
        if self.cycles_momentum:
            cycle = self.schedulers.onecycle
            key = self.optimizer_args.momentum_key
            shown = "betas[0]" if key == "betas" else key
            notes.append(
                f"train.optimizers.{self.optimizer}.{shown} is not used by train (swa uses it): "
                f"train.schedulers.onecycle.cycle_momentum cycles it between "
                f"{cycle.base_momentum} and {cycle.max_momentum}"
            )
        if self.lr != "auto":
            notes.append(
                f"train.optimizers.{self.optimizer}.lr is not used: train.lr = {self.lr} "
                "overrides it"
            )
        return notes


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
    opset: Annotated[int, Field(ge=18, le=28)]
    """torch's exporter writes 18 and up; 28 is the newest the locked onnx knows."""
    atol: PositiveFloat
    rtol: NonNegativeFloat
    """The parity check allows |logit difference| <= atol + rtol x the largest |logit|."""


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
MOVED = {
    "train.weight_decay": "moved: each optimizer has its own, as its meaning differs "
    "(train.optimizers.<name>.weight_decay)",
}
"""Keys of older params files, and where they went."""


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
        if key in MOVED:
            return f"{key}: {MOVED[key]}"
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
