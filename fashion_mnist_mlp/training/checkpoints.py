"""Model weights as safetensors (no pickle, no code run on load) with the architecture inside,
and the resumable state of a training run.

The architecture travels in the file's metadata, so any model file can be loaded without the
params that made it. A model file's metadata is one JSON string under one key: safetensors
writes a metadata dict with several keys in hash order, which would change the file's hash from
run to run. A file's metadata is validated, and its tensor shapes compared with what that
architecture needs, before any memory is allocated for the model
(fashion_mnist_mlp/training/model_files.py): files may come from any repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file
from torch.optim import Optimizer

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import RESUME_PARAMS_KEY, RESUME_SECTIONS
from fashion_mnist_mlp.training.files import PARTIAL_SUFFIX, atomic_path, sha256_file
from fashion_mnist_mlp.training.model import MLP
from fashion_mnist_mlp.training.model_files import METADATA_KEY, check_layout, read_header

if TYPE_CHECKING:
    # a type only: evaluate, which loads models here, imports no option table
    from fashion_mnist_mlp.config.params import Params


def save_model(model: MLP, path: Path, info: dict[str, Any] | None = None) -> None:
    """Write the model's weights and config (plus `info`, JSON-able provenance) atomically."""
    metadata = json.dumps(
        {"config": model.config.to_dict(), **(info or {})}, sort_keys=True, allow_nan=False
    )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={METADATA_KEY: metadata})


def load_checkpoint(
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
    for path in inputs:
        digest.update(sha256_file(path).encode())
    digest.update(code_digest().encode())
    return RunKey(params.digest(sections), digest.hexdigest())


PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def code_digest(root: Path = PACKAGE_ROOT) -> str:
    """Every module of the package, by its path inside it and its bytes: a resume state is
    only taken up by the code that wrote it (stages, config and library alike)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


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
