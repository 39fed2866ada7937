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

from fashion_mnist_mlp.cli import StageError

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # some writers (safetensors) create files 0600

PARTIAL_SUFFIX = ".partial"
"""Staging names end with this; .gitignore ignores them, so an interrupted write stays out of git."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` to write; on success it is renamed onto `path`.
    The bytes reach the disk before the new name does, so even a power loss leaves the old file
    or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself
    finally:
        tmp.unlink(missing_ok=True)


READY, OLD = ".ready", ".old"
"""atomic_dir's staging folder is renamed `<name>.ready.partial` once it is complete, and the
output it replaces `<name>.old.partial` while the two are swapped: validate (recover_dir) tells
from the names alone which folder an interrupted write left is whole."""


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `path`; on success it replaces `path`. Killed at
    any point, it leaves a complete copy, the old or the new one, that recover_dir puts at
    `path`, and no unfinished one it could mistake for complete."""
    staging, ready, _ = _swap_names(path)
    recover_dir(path)  # whatever an interrupted write of the same folder left
    staging.mkdir(parents=True)
    try:
        yield staging
        _fsync_tree(staging)
        os.rename(staging, ready)  # the commit: from here on, the new copy is the one kept
        _fsync(path.parent)
        _swap_in(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def recover_dir(path: Path) -> list[str]:
    """Finish or undo what an atomic_dir(path) that was killed left: a complete new copy goes to
    `path`, else the old one comes back where `path` is missing; an unfinished staging folder is
    removed. What it did, one line each."""
    staging, ready, old = _swap_names(path)
    done = []
    if staging.exists():
        shutil.rmtree(staging)
        done.append(f"removed {staging}, an unfinished write")
    if old.exists() and path.exists():
        _discard_old(path)
        done.append(f"removed {old}, the copy {path} replaced")
    if ready.exists():
        _swap_in(path)
        done.append(f"finished an interrupted write: {ready} is now {path}")
    elif old.exists():
        os.rename(old, path)
        _fsync(path.parent)
        done.append(f"restored {path} from {old}, which an interrupted write had moved away")
    return done


def swapped_path(leftover: Path) -> Path:
    """The output an atomic_dir staging folder (of any of its three names) belongs to."""
    name = leftover.name.removesuffix(PARTIAL_SUFFIX)
    for role in (READY, OLD):
        name = name.removesuffix(role)
    return leftover.with_name(name)


def _swap_names(path: Path) -> tuple[Path, Path, Path]:
    """Staging (being written), ready (complete) and old (the replaced output)."""
    staging, ready, old = (path.with_name(path.name + r + PARTIAL_SUFFIX) for r in ("", READY, OLD))
    return staging, ready, old


def _swap_in(path: Path) -> None:
    """Put the ready copy at `path` by renames: a complete copy stands at one of the three names
    at every point."""
    _, ready, old = _swap_names(path)
    if path.exists():
        os.rename(path, old)
    os.rename(ready, path)
    _fsync(path.parent)
    _discard_old(path)


def _discard_old(path: Path) -> None:
    """Remove the old copy, first renamed to the staging name, which is never restored: a kill
    while it is being deleted leaves a part of it only under that name."""
    staging, _, old = _swap_names(path)
    if old.exists():
        os.rename(old, staging)
        shutil.rmtree(staging)


def _fsync(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries (a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for parent, _, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(parent, name))
        _fsync(Path(parent))


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
