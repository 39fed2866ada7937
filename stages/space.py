"""The search space of `stages.search` (search/space.yaml): ranges and choices over params.yaml
keys, checked against the params schema before any trial runs.

Each key is a dotted params.yaml key (`train.lr`, `model.dropout`). A range is `{low, high}`
(ints draw ints; `log: true` draws on a log scale; `step` spaces the values), a choice is
`{choices: [...]}`. Every end of a range and every choice must be a value params.yaml accepts
where the key stands, so a trial never fails for a value the study asked for.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import Field, ValidationError, model_validator

from stages.cli import StageError
from stages.params import parse_params, read_raw_params, with_values
from stages.paths import PARAMS_FILE
from stages.schema import Seed, Strict

SPACE_FILE = Path("search/space.yaml")

Number = int | float


class Range(Strict):
    low: Number
    high: Number
    log: bool = False
    step: Annotated[Number, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other (optuna draws one or the other)")
        return self

    @property
    def draws_ints(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def ends(self) -> list[Number]:
        return [self.low, self.high]

    def distribution(self) -> BaseDistribution:
        if self.draws_ints:
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


class Choices(Strict):
    choices: Annotated[list[Any], Field(min_length=1)]

    def ends(self) -> list[Any]:
        return list(self.choices)

    def distribution(self) -> BaseDistribution:
        # optuna stores only scalars: a list (model.hidden) goes in as its JSON text
        return CategoricalDistribution([encode(c) for c in self.choices])


class Space(Strict):
    sampler: Literal["tpe", "random"]
    seed: Seed
    pruner: Literal["median", "none"]
    startup_trials: Annotated[int, Field(ge=0)]  # trials run in full before the pruner judges
    warmup_epochs: Annotated[int, Field(ge=0)]  # epochs of each trial before it is judged
    params: Annotated[dict[str, Range | Choices], Field(min_length=1)]

    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: dim.distribution() for key, dim in self.params.items()}


def encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def decode(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as params.yaml holds them (JSON text back to lists)."""
    return {
        k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in params.items()
    }


def load_space(path: Path = SPACE_FILE, params_file: Path = PARAMS_FILE) -> Space:
    """Read `path` and check every key and value against `params_file`; any problem stops here
    with one message per key."""
    if not path.exists():
        raise StageError(f"{path} not found: give a search space with --space (README, Search)")
    raw = read_raw_params(path)
    try:
        space = Space.model_validate(raw)
    except ValidationError as e:
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        raise StageError(f"{path} is not a valid search space:\n{problems}") from None
    base = read_raw_params(params_file)
    problems = [p for key, dim in space.params.items() for p in _check_key(key, dim, space, base)]
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise StageError(f"{path} searches values {params_file} does not take:\n{listed}")
    return space


FAMILIES = {"optimizers": "optimizer", "losses": "loss", "schedulers": "scheduler"}
"""train.<table>.<name>.* takes effect only while train.<key> names it."""


def _check_key(key: str, dim: Range | Choices, space: Space, base: dict) -> list[str]:
    leaves = _leaf_keys(base)
    if key not in leaves:
        hint = difflib.get_close_matches(key, leaves, n=1)
        return [
            f"{key}: not a key of params.yaml" + (f"; did you mean '{hint[0]}'?" if hint else "")
        ]
    problems = []
    for value in dim.ends():
        try:
            parse_params(with_values(base, {key: value}))
        except StageError as e:
            reason = str(e).split("\n", 1)[-1].strip().removeprefix("- ")
            problems.append(f"{key} = {value!r} is refused: {reason}")
    parts = key.split(".")
    if len(parts) > 3 and parts[0] == "train" and parts[1] in FAMILIES:
        chooser = f"train.{FAMILIES[parts[1]]}"
        chosen = {base["train"][FAMILIES[parts[1]]]}
        if chooser in space.params:
            chosen = set(space.params[chooser].ends())
        if parts[2] not in chosen:
            problems.append(
                f"{key} has no effect: {chooser} is {', '.join(sorted(map(str, chosen)))}; "
                f"search {chooser} too, or set it to {parts[2]}"
            )
    if (
        parts[:2] == ["train", "optimizers"]
        and parts[-1] == "lr"
        and "train.lr" not in space.params
    ) and base["train"]["lr"] != "auto":
        problems.append(
            f"{key} has no effect: train.lr = {base['train']['lr']!r} overrides it; "
            "search train.lr instead, or set train.lr: auto"
        )
    return problems


def _leaf_keys(section: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in section.items():
        key = f"{prefix}{name}"
        keys.extend(_leaf_keys(value, f"{key}.") if isinstance(value, dict) else [key])
    return keys
