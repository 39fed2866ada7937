"""The one typed, validated schema for params.yaml, read by every stage.

Options that carry their own arguments (optimizers, losses, schedulers) are chosen by name
(`train.optimizer: adamw`) and configured in a block per option (`train.optimizers.adamw`), so
`dvc exp run -S train.optimizer=sgd` switches with one key, and an argument that does not
belong to an option is an unknown key, not a silently ignored one.

The schema has no defaults: params.yaml holds every value, so there is one place to read them.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import keyword
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.losses import LOSSES, LossArgs
from fashion_mnist_mlp.config.optimizers import OPTIMIZERS, REFUSED_OPTIMIZERS, OptimizerArgs
from fashion_mnist_mlp.config.paths import PARAMS_FILE
from fashion_mnist_mlp.config.schedulers import SCHEDULERS, SchedulerArgs
from fashion_mnist_mlp.config.schema import (
    AutoOrPositive,
    NonNegativeFloat,
    PositiveFloat,
    Seed,
    Strict,
    UnitFloat,
    choice,
    not_refused,
)
from fashion_mnist_mlp.training.early_stopping import EarlyStoppingArgs
from fashion_mnist_mlp.training.fashion_mnist import TRAIN_SIZE

Device = Literal["auto", "cpu", "cuda"]

MAX_WIDTH, MAX_DEPTH = 8192, 8
"""Beyond these the MLP no longer fits a training machine's memory in a useful time."""
MAX_EPOCHS = 10_000
"""Far beyond any useful run (4 hours at 1.5 s an epoch); it bounds the lambda formula's check
over every epoch: at most formula.MAX_NODES nodes, 0.4 s here."""


def _quoted_if_a_number(value: Any) -> Any:
    """YAML (and so `-S`) reads the tag `1.0` or the hash `1234567` as a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            "a tag or commit must be a string: YAML read this one as a number; quote it "
            """(params.yaml: init: "1.0"; dvc exp run -S 'train.init="1.0"')"""
        )
    return value


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


def _family(name: str, table: dict[str, type[BaseModel]]) -> type[Strict]:
    """One block per option of a family (`train.optimizers.adamw`, ...), all required, so
    params.yaml states every option's arguments and `-S train.optimizer=sgd` needs no others."""
    fields = {field_name(key): (block, Field(alias=key)) for key, block in table.items()}
    return create_model(name, __base__=Strict, **fields)


def field_name(key: str) -> str:
    """The attribute a params key is read by: `lambda` is a Python keyword, so its field is
    `lambda_` (params.yaml and -S still say `lambda`)."""
    return f"{key}_" if keyword.iskeyword(key) else key


Optimizers = _family("Optimizers", {name: kind.args for name, kind in OPTIMIZERS.items()})
Losses = _family("Losses", LOSSES)
Schedulers = _family("Schedulers", SCHEDULERS)


class Augment(Strict):
    hflip: bool
    max_shift: Annotated[int, Field(ge=0, le=4)]
    """Pixels; 0 turns shifting off."""


class Train(Strict):
    seed: Seed
    device: Device
    nproc: Annotated[int, Field(ge=1)]
    """Processes to train in (DistributedDataParallel under torchrun); 1 = this process."""
    epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
    batch_size: Annotated[int, Field(gt=0)]
    precision: Literal["fp32", "bf16"]
    lr: AutoOrPositive
    """'auto': the chosen optimizer's own lr (train.optimizers.<name>.lr); a number overrides
    it, whatever the optimizer."""
    augment: Augment
    optimizer: Annotated[choice(OPTIMIZERS), BeforeValidator(not_refused(REFUSED_OPTIMIZERS))]
    optimizers: Optimizers
    loss: choice(LOSSES)
    losses: Losses
    scheduler: Literal[("none", *SCHEDULERS)]
    schedulers: Schedulers
    warmup_epochs: Annotated[int, Field(ge=0)]
    """Epochs of linear warm-up before the scheduler, per batch from warmup_start_factor x lr."""
    warmup_start_factor: Annotated[float, Field(gt=0, le=1)]
    early_stopping: EarlyStoppingArgs | None
    keep: Literal["last", "best"]
    """Which epoch's weights the stage writes: the last one trained, or the best on
    early_stopping's metric."""
    init: Annotated[
        Annotated[str, Field(pattern=r"^[\w.@+][\w./@+-]*$", max_length=255)] | None,
        BeforeValidator(_quoted_if_a_number),
    ]
    """Warm start: a git tag or commit whose exported model training starts from (no leading
    '-', which git would read as an option)."""

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def optimizer_args(self) -> OptimizerArgs:
        return getattr(self.optimizers, self.optimizer)

    @property
    def loss_args(self) -> LossArgs:
        return getattr(self.losses, self.loss)

    @property
    def scheduler_args(self) -> SchedulerArgs | None:
        if self.scheduler == "none":
            return None
        return getattr(self.schedulers, field_name(self.scheduler))

    @property
    def learning_rate(self) -> float:
        return self.optimizer_args.lr if self.lr == "auto" else self.lr

    @property
    def cycles_momentum(self) -> bool:
        return self.scheduler_args is not None and self.scheduler_args.cycles_momentum

    @model_validator(mode="after")
    def _momentum_cycling_needs_momentum(self) -> Train:
        if self.cycles_momentum and self.optimizer_args.momentum_key is None:
            with_momentum = [n for n, k in OPTIMIZERS.items() if k.args.momentum_key is not None]
            raise ValueError(
                f"train.schedulers.{self.scheduler}.cycle_momentum = true cycles the optimizer's "
                f"momentum, but train.optimizer = '{self.optimizer}' has none: set "
                f"cycle_momentum: false, or use one of {', '.join(with_momentum)}"
            )
        return self

    @model_validator(mode="after")
    def _warmup_fits(self) -> Train:
        if self.warmup_epochs == 0:
            return self
        if self.scheduler_args is not None and self.scheduler_args.ramps_up:
            raise ValueError(
                f"train.warmup_epochs = {self.warmup_epochs}: train.scheduler = "
                f"'{self.scheduler}' already starts low and rises: set warmup_epochs: 0, or "
                "choose a scheduler that starts at the lr (cosine, step, ...)"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"train.warmup_epochs = {self.warmup_epochs} leaves none of the "
                f"{self.epochs} epochs (train.epochs) to train after it: make it smaller"
            )
        return self

    @model_validator(mode="after")
    def _scheduler_fits_the_run(self) -> Train:
        if self.scheduler_args is None or self.epochs == 0:
            return self
        try:
            self.scheduler_args.check_run(self.epochs - self.warmup_epochs)
        except ValueError as e:
            raise ValueError(f"train.schedulers.{self.scheduler}.{e}") from None
        return self

    @model_validator(mode="after")
    def _best_needs_a_metric(self) -> Train:
        if self.keep == "best" and self.early_stopping is None:
            raise ValueError(
                "train.keep = 'best' needs a metric to rank epochs by: set "
                "train.early_stopping (its metric and mode; a patience of train.epochs never "
                "stops early), or keep: last"
            )
        return self

    def unused_params(self) -> list[str]:
        """Keys set in params.yaml that the chosen combination does not use, each with why: the
        stage prints them, so no value is ignored silently."""
        notes = []
        if self.cycles_momentum:
            cycle = self.scheduler_args
            key = self.optimizer_args.momentum_key
            shown = "betas[0]" if key == "betas" else key
            notes.append(
                f"train.optimizers.{self.optimizer}.{shown} is not used by train (swa uses it): "
                f"train.schedulers.{self.scheduler}.cycle_momentum cycles it between "
                f"{cycle.base_momentum} and {cycle.max_momentum}"
            )
        if self.lr != "auto":
            notes.append(
                f"train.optimizers.{self.optimizer}.lr is not used: train.lr = {self.lr} "
                "overrides it"
            )
        shaped = self.scheduler != "none" or self.warmup_epochs > 0
        if shaped and not self.optimizer_args.schedulable:
            notes.append(
                f"train.scheduler = '{self.scheduler}' (and any warm-up) does not shape "
                f"{self.optimizer}'s steps: torch reads its lr once, as the first step size"
            )
        return notes


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
    """Intra-op threads of a run, shared by its train.nproc processes; the summation order,
    and so the bytes, depend on it. auto: torch's default (OMP_NUM_THREADS, or the cores)."""


class Params(Strict):
    download: Download
    split: Split
    model: Model
    train: Train
    swa: Swa
    evaluate: Evaluate
    export: Export
    numerics: Numerics

    @model_validator(mode="after")
    def _batch_norm_sees_two_images_per_share(self) -> Params:
        """BatchNorm in training mode needs 2 images or more in each process's share of every
        batch: the last batch of an epoch may be too small (fashion_mnist_mlp/training/engine.py checks it again,
        for runs started by hand under torchrun)."""
        images, batch = self.split.train_images, self.train.batch_size
        last = images - (-(-images // batch) - 1) * batch
        if self.model.batch_norm and last // self.train.nproc < 2:
            raise ValueError(
                f"model.batch_norm = true needs 2 images or more in each of the train.nproc = "
                f"{self.train.nproc} processes' shares of every batch, but the last batch of the "
                f"{images} training images (split) at train.batch_size = {batch} has {last}: "
                "choose another batch size or split, or model.batch_norm: false"
            )
        return self

    @model_validator(mode="after")
    def _threads_shared_equally(self) -> Params:
        threads, nproc = self.numerics.threads, self.train.nproc
        if threads != "auto" and threads % nproc:
            raise ValueError(
                f"numerics.threads = {threads} is shared by the train.nproc = {nproc} processes: "
                f"make it a multiple of {nproc} (each process gets threads / nproc)"
            )
        return self

    def digest(self, sections: tuple[str, ...]) -> str:
        """sha256 of these sections' values: what a resume state records of the params it was
        saved under, so that the validate stage can tell one that can never be resumed."""
        values = [getattr(self, section).model_dump(mode="json") for section in sections]
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


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
    return parse_params(read_raw_params(path), source=str(path))


def read_raw_params(path: Path = PARAMS_FILE) -> Any:
    """params.yaml as YAML 1.2 reads it (as DVC does), not yet validated."""
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12FloatLoader)
    except FileNotFoundError:
        raise StageError(f"{path} not found: run the stage from the project root") from None
    except yaml.YAMLError as e:
        raise StageError(f"{path} is not valid YAML: {e}") from None
    return raw if raw is not None else {}


def with_values(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of the raw params `raw` with the dotted keys of `values` set."""
    out = copy.deepcopy(raw)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        section = out
        for part in parents:
            section = section[part]
        section[leaf] = value
    return out


class InvalidParams(StageError):
    """params that the schema refuses; `keys` are the dotted keys at fault."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


def parse_params(raw: Any, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise StageError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(f"  - {_describe(err, raw)}" for err in e.errors()[:MAX_REPORTED])
        if e.error_count() > MAX_REPORTED:
            problems += f"\n  ... and {e.error_count() - MAX_REPORTED} more"
        keys = [".".join(str(p) for p in err["loc"]) for err in e.errors()]
        raise InvalidParams(f"{source} has invalid params:\n{problems}", keys) from None


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
    return f"{key}{shown}: {message}" if loc else message  # across sections: it names its keys


_MISSING = object()


def _value_at(raw: Any, loc: tuple) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def _fields_at(loc: tuple) -> set[str]:
    """The keys allowed in the section at `loc` (as params.yaml spells them)."""
    model: type[BaseModel] = Params
    for part in loc:
        field = _keys(model).get(str(part))
        if field is None:
            return set()
        sections = [
            a for a in (field.annotation, *get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]  # fmt: skip
        if not sections:
            return set()
        model = sections[0]
    return set(_keys(model))


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    return {field.alias or name: field for name, field in model.model_fields.items()}
