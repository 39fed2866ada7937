"""Model weights as safetensors (no pickle, no code run on load) with the architecture inside,
and the resumable state of a training run.

The architecture travels in the file's metadata, so any model file can be loaded without the
params that made it. Metadata is one JSON string under one key: safetensors writes a metadata
dict with several keys in hash order, which would change the file's hash from run to run. A
file's metadata is validated, and its tensor shapes compared with what that architecture needs,
before any memory is allocated for the model: files may come from any repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import torch
from pydantic import Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load, load_file, safe_open, save_file
from torch.optim import Optimizer

from stages.cli import StageError
from stages.fashion_mnist import CLASSES, IMAGE_SIDE
from stages.files import atomic_path, sha256_file
from stages.model import LEGACY_PIXEL_MEAN, LEGACY_PIXEL_STD, MLP, MLPConfig
from stages.params import Model as ModelParams

METADATA_KEY = "fashion_mlp"
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}  # BatchNorm counts its batches


class Architecture(ModelParams):
    """A model file's `config`: the params schema's model section, plus what is fixed by the
    data. Older files lack the keys added since, and were written with these defaults: no input
    dropout, no BatchNorm, and the pixel statistics of the full training set."""

    input_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    batch_norm: bool = False
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
        "one of this pipeline's outputs, restore it (dvc checkout) or rebuild it (dvc repro)"
    )


def read_header(path: Path, name: str) -> tuple[dict[str, Any], dict[str, tuple[str, tuple]]]:
    """The file's metadata (decoded JSON) and each tensor's (dtype, shape), from the header
    alone: no tensor data is read."""
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
            tensors = {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}
    except FileNotFoundError:
        raise StageError(f"{name} is missing: run the stage that writes it first") from None
    except (SafetensorError, OSError) as e:
        raise _refuse(name, f"is not a valid safetensors file ({e})") from None
    if raw is None:
        raise _refuse(name, f"has no '{METADATA_KEY}' metadata: it was not written by save_model")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _refuse(name, f"has metadata that is not valid JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise _refuse(name, "has metadata that is not a JSON object")
    return metadata, tensors


def parse_architecture(metadata: dict[str, Any], name: str) -> MLPConfig:
    if "config" not in metadata:
        raise _refuse(name, "has no architecture ('config') in its metadata")
    try:
        arch = Architecture.model_validate(metadata["config"])
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, ('config', *err['loc'])))}: {err['msg']}" for err in e.errors()[:4]
        )
        raise _refuse(name, f"has an invalid architecture in its metadata ({problems})") from None
    return MLPConfig.from_dict(arch.model_dump())


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


def load_model(
    path: Path, device: torch.device | str = "cpu", name: str | None = None
) -> tuple[MLP, dict[str, Any]]:
    """Build the model a file describes, load its weights, and return it in eval mode with the
    rest of its metadata. `name` is how errors refer to the file (default: its path)."""
    name = name or str(path)
    metadata, tensors = read_header(path, name)
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
    model = MLP(config)
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
    fingerprint: str,
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: Optimizer,
    schedule: Stateful,
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    content = {
        "fingerprint": fingerprint,
        "epoch": state.epoch,
        "history": state.history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "kept": state.kept,
    }
    metadata = json.dumps(encode(content, tensors))
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={RESUME_KEY: metadata})


def run_fingerprint(config: list[Any], inputs: tuple[Path, ...]) -> str:
    """What a saved training state must match: the params the stage reads (`config`, JSON),
    its input files, and all stage code."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config).encode())
    for path in (*inputs, *sorted(Path(__file__).parent.glob("*.py"))):
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def remove_training_state(path: Path) -> None:
    """Once the stage's output is written: the state, and its folder when nothing else is in
    it (an interrupted write may have left a staging file there)."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def read_training_state(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def load_training_state(
    data: bytes | None,
    fingerprint: str,
    model: torch.nn.Module,
    optimizer: Optimizer,
    schedule: Stateful,
) -> TrainingState | None:
    """Restore a run saved by save_training_state (the file's bytes) into the given objects and
    return where it stopped; None (and nothing restored) when there is no state, it is
    unreadable, or it belongs to other params, data or code (`fingerprint`)."""
    if data is None:
        return None
    try:
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        raw = json.loads(data[8 : 8 + header_size])["__metadata__"][RESUME_KEY]
        content = decode(json.loads(raw), tensors)
        if content["fingerprint"] != fingerprint:
            return None
    except (SafetensorError, ValueError, KeyError, TypeError):
        return None
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in content["model"].items()})
    optimizer.load_state_dict(content["optimizer"])
    schedule.load_state_dict(content["schedule"])
    return TrainingState(content["epoch"], content["history"], content["kept"])
