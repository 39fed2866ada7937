"""Atomic writes: every output appears whole under its final name or not at all."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .cli import StageError

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # some writers (safetensors) create files 0600

PARTIAL_SUFFIX = ".partial"
"""Staging names end with this; .gitignore ignores them, so an interrupted write stays out of git."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` to write; on success it is renamed onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; on success it replaces `path`."""
    staging = path.with_name(path.name + PARTIAL_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir(parents=True)
    try:
        yield staging
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    """`data` as JSON; NaN and infinity are refused, since JSON has no such numbers."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as e:
        raise StageError(f"refusing to write {path}: {e}; JSON has no NaN or infinity") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: Path, rebuild: str) -> Any:
    """A JSON output of an earlier stage; StageError naming it and `rebuild` (the command that
    writes it) if it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path} is missing: run {rebuild}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StageError(
            f"{path} is not valid JSON ({e}): restore it (dvc checkout {path}) or rebuild it "
            f"({rebuild})"
        ) from None


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    """Rows with the same keys as a CSV table (for `dvc plots`); into a staging directory."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def copy_file(source: Path, path: Path) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def tensor_layout(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """A safetensors file's metadata and each tensor's (dtype, shape), from its header alone: no
    tensor is read, so a header that claims absurd sizes costs nothing. FileNotFoundError if
    there is no file; ValueError, saying why, if it is not a valid safetensors file."""
    try:
        with safe_open(path, framework="numpy") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
            layout = {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}
            return f.metadata() or {}, layout
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as e:
        raise ValueError(f"is not a valid safetensors file ({e})") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
