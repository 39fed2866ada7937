"""The search space of `fashion_mnist_mlp.tools.search` (search/space.yaml): ranges and choices
over params.yaml keys, checked against the params schema before any trial runs.

Each key is a dotted params.yaml key (`train.lr`, `model.dropout`). A range is `{low, high}`
(ints draw ints; `log: true` draws on a log scale; `step` spaces the values), a choice is
`{choices: [...]}`. Every choice, and up to 50 values across each range (both ends included),
must be ones params.yaml accepts where the key stands, beside some combination of the other
searched keys' ends and choices (a trial holds those at its own values, never at params.yaml's),
and so must the keys' values together: every combination of the ranges' ends and the choices
(every pair of keys, the others at their first value, where the combinations are too many), so
that `train.epochs` from 5 with `train.scheduler: step` is refused before the first trial. A
combination inside the ranges that params.yaml still refuses is pruned before it runs
(fashion_mnist_mlp/tools/search.py): a trial never fails for values the study asked for.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.loader import read_raw_params, with_values
from fashion_mnist_mlp.config.params import parse_params
from fashion_mnist_mlp.config.paths import PARAMS_FILE
from fashion_mnist_mlp.config.schema import Seed, Strict

SPACE_FILE = Path("search/space.yaml")
MAX_COMBINATIONS = 1024
"""Beyond this many (about 0.1 ms each to validate), combinations are checked pair by pair."""

Number = int | float


class Range(Strict):
    low: Number
    high: Number
    log: bool = False
    step: Annotated[Number, Field(gt=0)] | None = None
    # int or float: the key's value in params.yaml decides (load_space), else how low is written
    type: Literal["int", "float"] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other (optuna draws one or the other)")
        if self.step is not None and not _whole((self.high - self.low) / self.step):
            raise ValueError(
                f"step {self.step} does not divide high - low ({self.high - self.low})"
            )
        if self.type == "int" and not all(_whole(v) for v in (self.low, self.high, self.step or 1)):
            raise ValueError("this key takes integers: give low, high (and step) as whole numbers")
        return self

    @property
    def draws_ints(self) -> bool:
        if self.type is not None:
            return self.type == "int"
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def ends(self) -> list[Number]:
        return self.samples(2)

    def samples(self, most: int = 50) -> list[Number]:
        """Values the study may ask for: every one of a small grid, else `most` spread over
        the range (on its scale), both ends included."""
        dist = self.distribution()
        if isinstance(dist, IntDistribution) or self.step is not None:
            count = round((dist.high - dist.low) / dist.step) + 1
            if count <= most:
                return [_as(dist, dist.low + i * dist.step) for i in range(count)]
        if self.log:
            ratio = (dist.high / dist.low) ** (1 / (most - 1))
            points = [dist.low * ratio**i for i in range(most)]
        else:
            points = [dist.low + (dist.high - dist.low) * i / (most - 1) for i in range(most)]
        return sorted({_as(dist, p) for p in [*points[:-1], dist.high]})

    def distribution(self) -> BaseDistribution:
        if self.draws_ints:
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-9 * max(1.0, abs(value))


def _as(dist: BaseDistribution, value: float) -> Number:
    return round(value) if isinstance(dist, IntDistribution) else float(value)


class Choices(Strict):
    choices: Annotated[list[Any], Field(min_length=1)]

    def ends(self) -> list[Any]:
        return list(self.choices)

    def samples(self) -> list[Any]:
        return list(self.choices)

    def distribution(self) -> BaseDistribution:
        # optuna stores only scalars: a list (model.hidden) goes in as its JSON text
        return CategoricalDistribution([encode(c) for c in self.choices])


Dimension = Annotated[
    Annotated[Range, Tag("range")] | Annotated[Choices, Tag("choices")],
    Discriminator(lambda v: "choices" if isinstance(v, dict) and "choices" in v else "range"),
]


class Space(Strict):
    sampler: Literal["tpe", "random"]
    seed: Seed
    pruner: Literal["median", "none"]
    startup_trials: Annotated[int, Field(ge=0)]  # trials run in full before the pruner judges
    warmup_epochs: Annotated[int, Field(ge=0)]  # epochs of each trial before it is judged
    params: Annotated[dict[str, Dimension], Field(min_length=1)]

    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: dim.distribution() for key, dim in self.params.items()}

    def digest(self) -> str:
        """Of what a study's trials are drawn from: one study, one space."""
        dists = {k: distribution_to_json(d) for k, d in sorted(self.distributions().items())}
        return hashlib.sha256(json.dumps(dists).encode()).hexdigest()[:16]


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
        raise StageError(f"{path} not found: give a search space with --space (docs/search.md)")
    base = read_raw_params(params_file)
    raw = read_raw_params(path)
    try:
        space = Space.model_validate(with_types(raw, base))
    except ValidationError as e:
        problems = "\n".join(f"  - {_where(err['loc'])}: {_message(err)}" for err in e.errors())
        raise StageError(f"{path} is not a valid search space:\n{problems}") from None
    problems = [p for key, dim in space.params.items() for p in _check_key(key, dim, space, base)]
    problems = problems or _check_combinations(space, base)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise StageError(f"{path} searches values {params_file} does not take:\n{listed}")
    return space


def with_types(raw: Any, base: dict) -> Any:
    """The space with each range's int or float taken from the key's value in params.yaml."""
    dims = raw.get("params") if isinstance(raw, dict) else None
    if not isinstance(dims, dict):
        return raw
    typed = {}
    for key, dim in dims.items():
        current = _value(base, key)
        if isinstance(dim, dict) and "choices" not in dim and "type" not in dim:
            if isinstance(current, bool) or not isinstance(current, int | float):
                pass  # a string such as train.lr: auto, or not a key (reported below)
            else:
                dim = {**dim, "type": "int" if isinstance(current, int) else "float"}
        typed[key] = dim
    return {**raw, "params": typed}


def _where(loc: tuple) -> str:
    # pydantic names the union's branch and validators in the location: not the user's keys
    return ".".join(str(p) for p in loc if str(p) not in ("range", "choices") and "[" not in str(p))


def _message(err: Any) -> str:
    return err["msg"].removeprefix("Value error, ")


def _value(section: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(section, dict) or part not in section:
            return None
        section = section[part]
    return section


FAMILIES = {"optimizers": "optimizer", "losses": "loss", "schedulers": "scheduler"}
"""train.<table>.<name>.* takes effect only while train.<key> names it."""


def _check_key(key: str, dim: Range | Choices, space: Space, base: dict) -> list[str]:
    leaves = _leaf_keys(base)
    if key not in leaves:
        hint = difflib.get_close_matches(key, leaves, n=1)
        return [
            f"{key}: not a key of params.yaml" + (f"; did you mean '{hint[0]}'?" if hint else "")
        ]
    if key.startswith("split."):
        return [f"{key}: the split decides the validation set the trials are scored on; "
                "trials with another split would not compare (set it in params.yaml)"]  # fmt: skip
    others = {k: d.ends() for k, d in space.params.items() if k != key}
    problems = []
    for value in dim.samples():
        if (reason := _refusal_beside(base, {key: value}, others)) is not None:
            problems.append(f"{key} = {value!r} is refused: {reason}")
            break  # one value tells what is wrong
    return problems + _no_effect(key, space, base)


def _refusal_beside(base: dict, values: dict[str, Any], others: dict[str, list[Any]]) -> str | None:
    """Why `values` are refused beside every combination of the other searched keys' ends and
    choices (the first combination's reason), or None if some combination takes them: a trial
    never holds the other keys at params.yaml's values, only at their own."""
    first = None
    for combination in _combinations(others):
        if (reason := refusal(base, {**combination, **values})) is None:
            return None
        first = first or reason
    return first


def refusal(base: dict, values: dict[str, Any]) -> str | None:
    """Why the params `base` with `values` set are refused (the schema's first problem), or
    None if they are valid."""
    try:
        parse_params(with_values(base, values))
    except StageError as e:
        return str(e).split("\n", 1)[-1].strip().removeprefix("- ")
    return None


def _check_combinations(space: Space, base: dict) -> list[str]:
    """Values each valid alone that params.yaml refuses together, each conflict once, named by
    the fewest keys that make it."""
    ends = {k: dim.ends() for k, dim in space.params.items()}
    conflicts: list[dict[str, Any]] = []
    for combination in _combinations(ends):
        if any(c.items() <= combination.items() for c in conflicts):
            continue  # a known conflict again, beside other values
        if refusal(base, combination) is not None:
            conflicts.append(_fewest_keys(base, combination, ends))
    return [
        f"{' with '.join(f'{k} = {v!r}' for k, v in c.items())} is refused together: "
        f"{refusal(base, c)}; narrow a range or drop a choice so that no trial draws them"
        for c in conflicts
    ]


def _combinations(values: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of the keys' values (one, empty, for no key), or, past
    MAX_COMBINATIONS, every combination of each pair of keys with the others at their first
    value."""
    if len(values) < 2 or math.prod(len(v) for v in values.values()) <= MAX_COMBINATIONS:
        for chosen in itertools.product(*values.values()):
            yield dict(zip(values, chosen, strict=True))
        return
    first = {k: v[0] for k, v in values.items()}
    for a, b in itertools.combinations(values, 2):
        for chosen_a, chosen_b in itertools.product(values[a], values[b]):
            yield {**first, a: chosen_a, b: chosen_b}


def _fewest_keys(
    base: dict, combination: dict[str, Any], ends: dict[str, list[Any]]
) -> dict[str, Any]:
    """The refused combination without each key that takes no part: one it is refused with at
    every value the key takes here (its ends and choices, and params.yaml's, where a dropped key
    goes back to). What remains all take part in the conflict."""
    kept = dict(combination)
    for key in combination:
        fewer = {k: v for k, v in kept.items() if k != key}
        values = [{}, *({key: v} for v in ends[key])]
        if all(refusal(base, {**fewer, **value}) is not None for value in values):
            kept = fewer
    return kept


def _no_effect(key: str, space: Space, base: dict) -> list[str]:
    """Keys the pipeline would not read under the other values: every trial would be the same."""
    parts = key.split(".")
    if len(parts) > 3 and parts[0] == "train" and parts[1] in FAMILIES:
        chooser = f"train.{FAMILIES[parts[1]]}"
        chosen = {base["train"][FAMILIES[parts[1]]]}
        if chooser in space.params:
            chosen = set(space.params[chooser].samples())
        if parts[2] not in chosen:
            return [
                f"{key} has no effect: {chooser} is {', '.join(sorted(map(str, chosen)))}; "
                f"search {chooser} too, or set it to {parts[2]}"
            ]
    if parts[:2] == ["train", "optimizers"] and parts[-1] == "lr":
        searched = space.params.get("train.lr")
        lrs = set(searched.samples()) if searched is not None else {base["train"]["lr"]}
        if "auto" not in lrs:
            return [f"{key} has no effect: train.lr is a number, which overrides it; search "
                    "train.lr instead, or set train.lr: auto"]  # fmt: skip
    return []


def _leaf_keys(section: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in section.items():
        key = f"{prefix}{name}"
        keys.extend(_leaf_keys(value, f"{key}.") if isinstance(value, dict) else [key])
    return keys
