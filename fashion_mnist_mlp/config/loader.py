"""Reading params.yaml: YAML as DVC reads it, validated as a whole (Params, by the validate
stage) or by the sections one stage reads, with every problem reported as one message that
names the key, the value and the fix.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import PARAMS_FILE

M = TypeVar("M", bound=BaseModel)


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


def read_raw_params(path: Path = PARAMS_FILE) -> Any:
    """params.yaml as YAML 1.2 reads it (as DVC does), not yet validated."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StageError(f"{path} not found: run the stage from the project root") from None
    return parse_raw_params(text, path)


def parse_raw_params(text: str | bytes, source: Path = PARAMS_FILE) -> Any:
    """The text of a params file (`source`, for messages) as read_raw_params reads it: for a
    copy read once, which the file on disk may no longer match."""
    try:
        raw = yaml.load(text, Loader=_Yaml12FloatLoader)
    except yaml.YAMLError as e:
        raise StageError(f"{source} is not valid YAML: {e}") from None
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


def parse(raw: Any, model: type[M], source: str = "params") -> M:
    """`raw` validated as `model` (Params, or a stage's sections); any problem is one
    StageError naming key, value and fix."""
    if not isinstance(raw, dict):
        raise StageError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(
            f"  - {_describe(err, raw, model)}" for err in e.errors()[:MAX_REPORTED]
        )
        if e.error_count() > MAX_REPORTED:
            problems += f"\n  ... and {e.error_count() - MAX_REPORTED} more"
        keys = [".".join(str(p) for p in err["loc"]) for err in e.errors()]
        raise InvalidParams(f"{source} has invalid params:\n{problems}", keys) from None


def load_sections(path: Path = PARAMS_FILE, /, **sections: type[BaseModel]) -> Any:
    """Read params.yaml and validate only `sections` (name → model), the ones a stage reads:
    the validate stage, which every stage depends on, has checked the whole file."""
    fields = {name: (model, ...) for name, model in sections.items()}
    view = create_model("Sections", __config__=ConfigDict(extra="ignore", frozen=True), **fields)
    return parse(read_raw_params(path), view, source=str(path))


def _describe(err: Any, raw: dict, model: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        if key in MOVED:
            return f"{key}: {MOVED[key]}"
        allowed = sorted(_fields_at(model, loc[:-1]))
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


def _fields_at(model: type[BaseModel], loc: tuple) -> set[str]:
    """The keys `model` allows in the section at `loc` (as params.yaml spells them)."""
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
