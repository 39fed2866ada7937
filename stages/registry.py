"""Load the exported model of any version: a git tag, a commit, a branch or a DVC experiment.

The weights are read through `dvc.api` (from the workspace, the local DVC cache or the remote)
and parsed as safetensors: nothing is unpickled, whatever the revision holds.

    from stages.registry import load_model
    model = load_model(rev="v1.0.0")          # this repository
    model = load_model(rev="exp-name", repo="https://github.com/org/project")
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from stages.checkpoints import load_model as load_model_file
from stages.cli import StageError
from stages.model import MLP
from stages.paths import EXPORT_WEIGHTS


def read_model_bytes(
    rev: str | None = None, repo: str | None = None, path: Path = EXPORT_WEIGHTS
) -> bytes:
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    where = f"{repo or 'this repository'} at {rev or 'the workspace'}"
    try:
        with dvc.api.open(str(path), repo=repo, rev=rev, mode="rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StageError(
            f"{path} not found in {where}: was the export stage run and committed there?"
        ) from None
    except (DvcException, SCMError) as e:
        raise StageError(f"cannot read {path} from {where}: {e}") from None


def load_model(rev: str | None = None, repo: str | None = None) -> MLP:
    """The exported model of `rev` in `repo` (default: this repository's workspace), in eval mode."""
    data = read_model_bytes(rev, repo)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / EXPORT_WEIGHTS.name
        path.write_bytes(data)
        model, _ = load_model_file(path)
    return model
