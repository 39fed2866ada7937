"""Model weights as safetensors (no pickle, no code run on load) with the architecture inside.

The architecture travels in the file's metadata, so any model file can be loaded without the
params that made it. Metadata is one JSON string under one key: safetensors writes a metadata
dict with several keys in hash order, which would change the file's hash from run to run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

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
