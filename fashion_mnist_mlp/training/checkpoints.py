"""Model weights as safetensors (no pickle, no code run on load) with the architecture inside,
and the resumable state of a training run.

The architecture travels in the file's metadata, so any model file can be loaded without the
params that made it. A model file's metadata is one JSON string under one key: safetensors writes a metadata
dict with several keys in hash order, which would change the file's hash from run to run. A
file's metadata is validated, and its tensor shapes compared with what that architecture needs,
before any memory is allocated for the model: files may come from any repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, TypeAdapter, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file
from torch.optim import Optimizer

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.params import Model as ModelParams
from fashion_mnist_mlp.config.params import Params
from fashion_mnist_mlp.config.paths import RESUME_PARAMS_KEY, RESUME_SECTIONS
from fashion_mnist_mlp.training.fashion_mnist import CLASSES, IMAGE_SIDE
from fashion_mnist_mlp.training.files import PARTIAL_SUFFIX, atomic_path, sha256_file, tensor_layout
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


def save_model(model: MLP, path: Path, info: dict[str, Any] | None = None) -> None:
    """Write the model's weights and config (plus `info`, JSON-able provenance) atomically."""
    metadata = json.dumps(
        {"config": model.config.to_dict(), **(info or {})}, sort_keys=True, allow_nan=False
    )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={METADATA_KEY: metadata})


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


def load_model(
    path: Path, device: torch.device | str = "cpu", name: str | None = None
) -> tuple[MLP, dict[str, Any]]:
    """Build the model a file describes, load its weights, and return it in eval mode with the
    rest of its metadata. `name` is how errors refer to the file (default: its path)."""
    name = name or str(path)
    metadata, tensors = read_header(path, name)
    model = MLP(check_layout(metadata, tensors, name))
    model.load_state_dict(load_file(path, device=str(device)))
    info = {k: v for k, v in metadata.items() if k != "config"}
    return model.to(device).eval(), info


# ---- resumable training state: safetensors tensors + one JSON metadata string, no pickle ----

RESUME_KEY = "fashion_mlp_training_state"


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainingState:
    """What a killed run needs to continue bit for bit: the epoch reached, the per-epoch log
    so far, and (in the file) model, optimizer and scheduler states. No RNG state: each epoch
    seeds its own (engine.seed_epoch)."""

    epoch: int
    history: list[dict[str, float]]
    kept: dict[str, Any] | None = None
    """The weights (and lr) of the best epoch so far, when the run keeps the best."""


def encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON that decodes to an equal value of the same types: tensors go into
    `tensors` (for safetensors) and are referenced by key; every dict, tuple and Counter is
    tagged, so integer keys stay integers (MultiStepLR's milestones are a Counter of ints)."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"tensor": key}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [encode(v, tensors) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v, tensors) for v in value]}
    if isinstance(value, dict):
        tag = "counter" if isinstance(value, Counter) else "dict"
        return {tag: [[encode(k, tensors), encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a training state")


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, content),) = value.items()
    if tag == "tensor":
        return tensors[content]
    if tag == "tuple":
        return tuple(decode(v, tensors) for v in content)
    pairs = ((decode(k, tensors), decode(v, tensors)) for k, v in content)
    return Counter(dict(pairs)) if tag == "counter" else dict(pairs)


def save_training_state(
    path: Path,
    key: RunKey,
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: Optimizer,
    schedule: Stateful,
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    content = {
        "fingerprint": key.full,
        "epoch": state.epoch,
        "history": state.history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "kept": state.kept,
    }
    metadata = json.dumps(encode(content, tensors))
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={RESUME_KEY: metadata, RESUME_PARAMS_KEY: key.params})


@dataclass(frozen=True)
class RunKey:
    """What a saved training state must match to be resumed."""

    params: str
    """Params.digest of the stage's params.yaml sections: the validate stage checks it, without
    reading any input, to remove states that no run could resume."""
    full: str
    """Those params, the stage's other settings, its input files and all stage code."""


def run_key(params: Params, stage: Path, settings: list[Any], inputs: tuple[Path, ...]) -> RunKey:
    """The key of the resume state at `stage` (one of RESUME_SECTIONS), for these params,
    other settings (JSON) and input files."""
    sections = RESUME_SECTIONS[stage]
    digest = hashlib.sha256()
    digest.update(
        json.dumps([*(getattr(params, s).model_dump() for s in sections), *settings]).encode()
    )
    for path in (*inputs, *sorted(Path(__file__).parent.glob("*.py"))):
        digest.update(sha256_file(path).encode())
    return RunKey(params.digest(sections), digest.hexdigest())


def remove_training_state(path: Path) -> None:
    """Once the stage's output is written: the state, any staging file of it that a killed run
    left (a kill during a save), and its folder when nothing else is in it."""
    path.unlink(missing_ok=True)
    for leftover in path.parent.glob(f".{path.name}.*{PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def read_training_state(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def load_training_state(
    data: bytes | None,
    key: RunKey | None,
    model: torch.nn.Module,
    optimizer: Optimizer,
    schedule: Stateful,
    name: str = "the saved training state",
) -> TrainingState | None:
    """Restore a run saved by save_training_state (the file's bytes) into the given objects and
    return where it stopped; None (and nothing restored) when there is no state, or it cannot
    be resumed: unreadable, or of other params, data or code (`key`), which it says."""
    if data is None or key is None:
        return None
    try:
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        raw = json.loads(data[8 : 8 + header_size])["__metadata__"][RESUME_KEY]
        content = decode(json.loads(raw), tensors)
        saved = TrainingState(content["epoch"], content["history"], content["kept"])
        fingerprint = content["fingerprint"]
    except (SafetensorError, ValueError, KeyError, TypeError, RecursionError) as e:
        print(f"note: {name} is damaged ({type(e).__name__}: {e}): starting over", file=sys.stderr)
        return None
    if fingerprint != key.full:
        print(f"note: {name} is of other params, data or code: starting over", file=sys.stderr)
        return None
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in content["model"].items()})
        optimizer.load_state_dict(content["optimizer"])
        schedule.load_state_dict(content["schedule"])
    except (RuntimeError, ValueError, KeyError) as e:
        # its fingerprint matches, its tensors do not: written by no run of this code
        raise StageError(
            f"{name} matches this run but its tensors do not ({type(e).__name__}: {e}); it was "
            "not written by this pipeline. Delete it and rerun (dvc repro)"
        ) from None
    return saved
