"""Reading a model file that may be hostile (another repository's file) without trusting it:
safetensors only (no pickle, no code run on load), the header's length and metadata capped, the
architecture in the metadata validated within the params schema's bounds, and the tensors the
header lists compared with what that architecture needs, all before any memory is allocated
for the model. fashion_mnist_mlp/training/checkpoints.py writes and loads model files with it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, TypeAdapter, ValidationError

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.sections import Model as ModelParams
from fashion_mnist_mlp.training.fashion_mnist import CLASSES, IMAGE_SIDE
from fashion_mnist_mlp.training.files import tensor_layout
from fashion_mnist_mlp.training.model import LEGACY_PIXEL_MEAN, LEGACY_PIXEL_STD, MLP, MLPConfig

METADATA_KEY = "fashion_mlp"
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}  # BatchNorm counts its batches
ITEM_SIZES = {name: dtype.itemsize for dtype, name in SAFETENSORS_DTYPES.items()}

MAX_METADATA_LENGTH = 64 * 1024
"""The longest metadata string a model file may carry. save_model writes at most 444 characters
(the biggest network the schema allows, with every provenance key the stages add); the cap keeps
a hostile file's metadata from costing more than a glance to parse."""
MAX_HEADER_LENGTH = 2 * MAX_METADATA_LENGTH + 64 * 1024
"""The longest safetensors header a model file may have: its metadata, JSON-escaped inside the
header (each quote doubles), and the tensors' entries, 5 KB for the biggest network."""


class Architecture(ModelParams):
    """A model file's `config`: the params schema's model section, plus what is fixed by the
    data. Older files lack the keys added since, and were written with these defaults: no input
    dropout, no BatchNorm, and the pixel statistics of the full training set."""

    input_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    batch_norm: bool = False
    # a file records its normalization as pixel_mean and pixel_std (0 and 1 when off)
    normalize_input: bool = Field(default=True, exclude=True)
    in_features: Literal[IMAGE_SIDE * IMAGE_SIDE]
    num_classes: Literal[len(CLASSES)]
    pixel_mean: Annotated[float, Field(ge=0, le=1)] = LEGACY_PIXEL_MEAN
    pixel_std: Annotated[float, Field(gt=0, le=1)] = LEGACY_PIXEL_STD


def _refuse(name: str, problem: str) -> StageError:
    return StageError(
        f"{name} {problem}. Model files are only read as safetensors, never unpickled. If it is "
        "one of this pipeline's outputs, restore it (dvc checkout; dvc pull where a remote has "
        "it) or rebuild it (dvc repro, in the repository and revision it came from)"
    )


Layout = dict[str, tuple[str, tuple[int, ...]]]
"""Each tensor's (dtype, shape), by name."""


def _invalid(name: str, problem: str) -> StageError:
    return _refuse(name, f"is not a valid safetensors file ({problem})")


def read_header(path: Path, name: str) -> tuple[dict[str, Any], Layout]:
    """The file's metadata (decoded JSON) and each tensor's (dtype, shape), from the header
    alone: no tensor data is read."""
    try:
        metadata, tensors = tensor_layout(path)
    except FileNotFoundError:
        raise StageError(f"{name} is missing: run the stage that writes it first") from None
    except ValueError as e:
        raise _refuse(name, str(e)) from None
    return model_metadata(metadata, name), tensors


def model_metadata(file_metadata: dict[str, str], name: str) -> dict[str, Any]:
    """The JSON object save_model stores under METADATA_KEY."""
    raw = file_metadata.get(METADATA_KEY)
    if raw is None:
        raise _refuse(name, f"has no '{METADATA_KEY}' metadata: it was not written by save_model")
    if len(raw) > MAX_METADATA_LENGTH:
        raise _refuse(
            name,
            f"has {len(raw):,} characters of metadata, more than the {MAX_METADATA_LENGTH:,} a "
            "model file carries",
        )
    try:
        metadata = _json(raw)
    except ValueError as e:
        raise _refuse(name, f"has metadata that is not valid JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise _refuse(name, "has metadata that is not a JSON object")
    return metadata


def _json(text: str | bytes) -> Any:
    """`text` as strict JSON (no NaN: save_model never writes it, and a stage that saves the
    metadata again would fail on it); ValueError for any failure (JSONDecodeError and
    UnicodeDecodeError are ValueErrors), nesting past the recursion limit included."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError as e:
        raise ValueError(str(e)) from None


def _no_constant(constant: str) -> None:
    raise ValueError(f"{constant}: JSON has no such number")


class _Tensor(BaseModel):
    """A tensor's entry in a safetensors header."""

    model_config = ConfigDict(strict=True, extra="forbid")
    dtype: str
    shape: list[NonNegativeInt]
    data_offsets: Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]


_HEADER = TypeAdapter(dict[str, _Tensor])
_FILE_METADATA = TypeAdapter(dict[str, str])


def read_model_stream(stream: IO[bytes], name: str) -> bytes:
    """A model file's bytes from a stream that may be hostile (another repository's file), read
    no further than its header allows: the header's length is capped, its metadata and tensors
    checked against the architecture it declares (within the params schema's bounds, so at most
    1.9 GB of tensors), and then exactly the bytes those tensors take are read, in chunks. A
    file claiming gigabytes costs what it delivers; one longer or shorter is refused."""
    prefix = _read_exactly(stream, 8, name, "its header's length (8 bytes)")
    length = int.from_bytes(prefix, "little")
    if length > MAX_HEADER_LENGTH:
        raise _invalid(
            name,
            f"its header claims {length:,} bytes; a model file's has at most {MAX_HEADER_LENGTH:,}",
        )
    header = _read_exactly(stream, length, name, f"the {length:,}-byte header it declares")
    metadata, tensors = _parse_header(header, name)
    check_layout(metadata, tensors, name)
    size = sum(ITEM_SIZES[dtype] * math.prod(shape) for dtype, shape in tensors.values())
    body = _read_exactly(stream, size, name, f"the {size:,} bytes of tensors its header declares")
    if stream.read(1):
        raise _invalid(
            name, f"it is longer than the {8 + length + size:,} bytes its header declares"
        )
    return prefix + header + body


def _parse_header(header: bytes, name: str) -> tuple[dict[str, Any], Layout]:
    try:
        entries = _json(header)
    except ValueError as e:
        raise _invalid(name, f"its header is not valid JSON: {e}") from None
    if not isinstance(entries, dict):
        raise _invalid(name, "its header is not a JSON object")
    try:
        file_metadata = _FILE_METADATA.validate_python(entries.pop("__metadata__", {}))
        tensors = _HEADER.validate_python(entries)
    except ValidationError as e:
        raise _invalid(name, _problems(e, ())) from None
    layout = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    return model_metadata(file_metadata, name), layout


def _read_exactly(stream: IO[bytes], size: int, name: str, what: str) -> bytes:
    """`size` bytes, in chunks: memory grows with what the stream delivers, not with what its
    header claims."""
    parts, left = [], size
    while left:
        part = stream.read(min(left, 1 << 24))
        if not part:
            raise _invalid(name, f"it is truncated: it ends {left:,} bytes short of {what}")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def parse_architecture(metadata: dict[str, Any], name: str) -> MLPConfig:
    if "config" not in metadata:
        raise _refuse(name, "has no architecture ('config') in its metadata")
    try:
        arch = Architecture.model_validate(metadata["config"])
    except ValidationError as e:
        problems = _problems(e, ("config",))
        raise _refuse(name, f"has an invalid architecture in its metadata ({problems})") from None
    return MLPConfig.from_dict(arch.model_dump())


def _problems(error: ValidationError, prefix: tuple[str, ...]) -> str:
    return "; ".join(
        f"{'.'.join(map(str, (*prefix, *err['loc'])))}: {err['msg']}" for err in error.errors()[:4]
    )


def expected_tensors(config: MLPConfig) -> dict[str, tuple[str, tuple]]:
    """The (dtype, shape) of each tensor of this architecture, without allocating it."""
    with torch.device("meta"):
        state = MLP(config).state_dict()
    return {k: (SAFETENSORS_DTYPES[v.dtype], tuple(v.shape)) for k, v in state.items()}


def _shape(tensor: tuple[str, tuple] | None) -> str:
    if tensor is None:
        return "absent"
    dtype, shape = tensor
    return f"{dtype} {list(shape)}"


def check_layout(metadata: dict[str, Any], tensors: Layout, name: str) -> MLPConfig:
    """The architecture the metadata declares, once the header's tensors are checked to be
    exactly its own: nothing of the network is allocated first."""
    config = parse_architecture(metadata, name)
    expected = expected_tensors(config)
    if tensors != expected:
        differ = sorted(
            k for k in expected.keys() | tensors.keys() if expected.get(k) != tensors.get(k)
        )
        shown = ", ".join(
            f"{k} {_shape(tensors.get(k))} instead of {_shape(expected.get(k))}" for k in differ[:3]
        )
        raise _refuse(
            name, f"is damaged: its weights do not fit the architecture in its metadata ({shown})"
        )
    return config
