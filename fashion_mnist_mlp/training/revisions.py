"""train.init: the commit a tag or a commit hash names.

validate resolves it on every `dvc repro` and records it in models/init.json, which train
depends on and reads: moving a tag (`git tag -f`) changes nothing DVC sees but that file, which
then reruns train. Cheap to import (no torch), since validate runs on every `dvc repro`."""

from __future__ import annotations

import json
import re
import subprocess

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import TRAIN_INIT
from fashion_mnist_mlp.training.files import write_json

KEY = "train.init"


def fixed_commit(rev: str) -> str:
    """The commit a tag or a commit hash names. A branch, HEAD or any other moving name is
    refused: it moves with every commit, and train, which depends on the commit, would rerun
    after each."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit is None:
        raise StageError(
            f"{KEY} = '{rev}' is not a tag or commit of this repository (git tag lists the "
            "tags). Queued and --temp experiments run in a copy that has no tags: name the "
            "commit instead"
        )
    is_tag = _git("show-ref", "--verify", "--quiet", f"refs/tags/{rev}") is not None
    is_hash = re.fullmatch(r"[0-9a-f]{7,40}", rev) is not None and commit.startswith(rev)
    if not (is_tag or is_hash):
        raise StageError(
            f"{KEY} = '{rev}' is a moving name (a branch, HEAD, ...): it moves with every commit, "
            f"and train, which depends on the commit it names, would rerun after each. Name a "
            f"tag, or its commit: {commit}"
        )
    return commit


def record_init(rev: str | None) -> bool:
    """Record in models/init.json what train.init = `rev` names now (null for none). The file
    is rewritten only when that changes, so its bytes, and train with them, change only when the
    commit does. True if it was rewritten."""
    record = {KEY: rev, "commit": None if rev is None else fixed_commit(rev)}
    if _recorded() == record:
        return False
    write_json(TRAIN_INIT, record)
    return True


def recorded_init(rev: str) -> str:
    """The commit validate recorded for train.init = `rev`: what train starts from, so that the
    model matches the dependency DVC records for it."""
    record = _recorded()
    commit = record.get("commit") if isinstance(record, dict) and record.get(KEY) == rev else None
    if not isinstance(commit, str):
        raise StageError(
            f"{TRAIN_INIT} does not record the commit of {KEY} = '{rev}': run python -m "
            "fashion_mnist_mlp.stages.validate, which resolves it (dvc repro runs it first)"
        )
    return commit


def _recorded() -> object:
    """models/init.json's content; None if it is missing or damaged."""
    try:
        return json.loads(TRAIN_INIT.read_text())
    except (OSError, ValueError):
        return None


def _git(*args: str) -> str | None:
    result = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None
