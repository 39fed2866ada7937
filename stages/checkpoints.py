"""Model weights as safetensors (no pickle, no code run on load) with the architecture inside.

The architecture travels in the file's metadata, so any model file can be loaded without the
params that made it. Metadata is one JSON string under one key: safetensors writes a metadata
dict with several keys in hash order, which would change the file's hash from run to run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from stages.cli import StageError
from stages.files import atomic_path
from stages.model import MLP, MLPConfig

METADATA_KEY = "fashion_mlp"


def save_model(model: MLP, path: Path, info: dict[str, Any] | None = None) -> None:
    """Write the model's weights and config (plus `info`, JSON-able provenance) atomically."""
    metadata = json.dumps({"config": model.config.to_dict(), **(info or {})}, sort_keys=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={METADATA_KEY: metadata})


def read_metadata(path: Path) -> dict[str, Any]:
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except FileNotFoundError:
        raise StageError(f"{path} is missing: run the stage that writes it first") from None
    except (SafetensorError, OSError) as e:
        raise StageError(
            f"{path} is not a valid safetensors file ({e}); model files are never unpickled. "
            "Rerun the stage that writes it (dvc repro)"
        ) from None
    if raw is None:
        raise StageError(
            f"{path} has no '{METADATA_KEY}' metadata: it was not written by save_model"
        )
    return json.loads(raw)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[MLP, dict[str, Any]]:
    """Build the model a file describes, load its weights, and return it in eval mode."""
    info = read_metadata(path)
    model = MLP(MLPConfig.from_dict(info.pop("config")))
    try:
        model.load_state_dict(load_file(path))
    except RuntimeError as e:
        raise StageError(
            f"{path}: weights do not fit the architecture in its metadata: {e}"
        ) from None
    return model.to(device).eval(), info


# ---- resumable training state: safetensors tensors + one JSON metadata string, no pickle ----

RESUME_KEY = "fashion_mlp_training_state"


@dataclass
class TrainingState:
    """What a killed run needs to continue bit for bit: the epoch reached, the per-epoch log
    so far, and (in the file) model, optimizer and scheduler states. No RNG state: each epoch
    seeds its own (engine.seed_epoch)."""

    epoch: int
    history: list[dict[str, float]]


def save_training_state(
    path: Path,
    fingerprint: str,
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, param_state in opt["state"].items():
        tensors |= {f"optimizer.{index}.{name}": v for name, v in param_state.items()}
    metadata = {
        "fingerprint": fingerprint,
        "epoch": state.epoch,
        "history": state.history,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={RESUME_KEY: json.dumps(metadata)})


def load_training_state(
    path: Path,
    fingerprint: str,
    model: torch.nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
) -> TrainingState | None:
    """Restore a run saved by save_training_state into the given objects and return where it
    stopped; None (and nothing restored) when there is no such file, it is unreadable, or it
    belongs to other params, data or code (`fingerprint`)."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = json.loads((f.metadata() or {})[RESUME_KEY])
        if metadata["fingerprint"] != fingerprint:
            return None
        tensors = load_file(path)
    except (FileNotFoundError, SafetensorError, OSError, KeyError, json.JSONDecodeError):
        return None
    device = next(model.parameters()).device
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    )
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value.to(device)
    optimizer.load_state_dict({"state": opt_state, "param_groups": metadata["param_groups"]})
    if scheduler is not None:
        scheduler.load_state_dict(metadata["scheduler"])
    return TrainingState(metadata["epoch"], metadata["history"])
