"""The building blocks of the params schema: a strict base model, the bounded field types every
section uses, and the option families' blocks. Torch-free, so the download and split stages do
not pay for importing it."""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, create_model

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, lt=1)]
PositiveInt = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""NumPy's legacy global seed, which seed_everything sets, takes 32 bits."""


class Strict(BaseModel):
    # inf and nan pass `gt=0`-style bounds (a lr of .inf would only show up as a diverged run)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _auto_or_positive(value: Any) -> str | float:
    if value == "auto":
        return value
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError("Input should be 'auto' or a finite number greater than 0")


AutoOrPositive = Annotated[Literal["auto"] | float, PlainValidator(_auto_or_positive)]


def not_refused(refused: dict[str, str]) -> Callable[[Any], Any]:
    """A before-validator that says why a real torch option is not offered."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and value in refused:
            raise ValueError(refused[value])
        return value

    return check


def choice(table: dict[str, Any]) -> Any:
    """The names a family's table offers, as a Literal type (the schema's allowed values)."""
    return Literal[tuple(table)]


def family(name: str, table: dict[str, type[BaseModel]]) -> type[Strict]:
    """One block per option of a family (`train.optimizers.adamw`, ...), all required, so
    params.yaml states every option's arguments and `-S train.optimizer=sgd` needs no others."""
    fields = {field_name(key): (block, Field(alias=key)) for key, block in table.items()}
    return create_model(name, __base__=Strict, **fields)


def field_name(key: str) -> str:
    """The attribute a params key is read by: `lambda` is a Python keyword, so its field is
    `lambda_` (params.yaml and -S still say `lambda`)."""
    return f"{key}_" if keyword.iskeyword(key) else key


def chosen(blocks: BaseModel, name: str) -> Any:
    """The block of option `name` in a family's `blocks`."""
    return getattr(blocks, field_name(name))


ValMetric = Literal["val/loss", "val/acc"]
Mode = Literal["min", "max"]
BEST_MODE = {"val/loss": "min", "val/acc": "max"}


def check_mode(metric: str, mode: str, where: str) -> None:
    """A metric watched in the wrong direction would keep the worst epoch: refuse it."""
    if BEST_MODE[metric] != mode:
        raise ValueError(
            f"{where}: mode = '{mode}' watches {metric} in the wrong direction: use mode: "
            f"{BEST_MODE[metric]} (lower loss and higher accuracy are better)"
        )
