"""The building blocks of the params schema: a strict base model and the bounded field types
every section uses. Torch-free, like fashion_mnist_mlp/config/params.py, so the download and split stages do not
pay for importing it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

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
