"""Load the exported model of any version: a git tag, a commit, a branch or a DVC experiment.

The weights are read through DVC's file system, as `dvc.api.open` reads them (from the
workspace, the local DVC cache or the remote), and parsed as safetensors: nothing is unpickled,
whatever the revision holds, and no more is read than the header, once checked, declares
(model_files.read_model_stream). A revision's model committed to git itself is refused unread:
git unpacks a blob whole before a byte of it can be checked.

    from fashion_mnist_mlp import load_model   # from any directory (make setup installs it)
    model = load_model(rev="v1.0.0")          # the current directory's repository
    model = load_model(rev="exp-name", repo="https://github.com/org/project")

From another project, with this one installed (pyproject.toml), the same import, with `repo`
naming this project.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import EXPORT_WEIGHTS
from fashion_mnist_mlp.training.checkpoints import load_checkpoint
from fashion_mnist_mlp.training.model import MLP, fold_temperature
from fashion_mnist_mlp.training.model_files import read_model_stream

if TYPE_CHECKING:
    from dvc.repo import Repo


def read_model_bytes(
    rev: str | None = None, repo: str | None = None, path: Path = EXPORT_WEIGHTS
) -> bytes:
    from dvc.exceptions import DvcException
    from dvc_data.index.index import DataIndexDirError
    from scmrepo.exceptions import SCMError

    where = _where(rev, repo)
    try:
        with _open(path, rev, repo) as f:
            return read_model_stream(f, f"{path} of {where}")
    except FileNotFoundError:
        raise StageError(
            f"{path} not found in {where}: was the export stage run and committed there?"
        ) from None
    except DataIndexDirError:
        # dvc.lock names the model, but neither the workspace nor the DVC cache holds it
        raise StageError(f"{path} of {where} is not here: {_how_to_get(rev)}") from None
    except (DvcException, SCMError) as e:
        raise StageError(f"cannot read {path} from {where}: {e}") from None


@contextlib.contextmanager
def _open(path: Path, rev: str | None, repo: str | None) -> Iterator[IO[bytes]]:
    """`path` of `repo` at `rev`, found as dvc.api.open finds it: the revision's git tree
    first, then its DVC outputs; a git blob is refused before it is opened."""
    from dvc.fs.dvc import DVCFileSystem
    from dvc.repo import Repo

    with Repo.open(repo, rev=rev, subrepos=True, uninitialized=True) as project:
        _refuse_a_git_blob(project, path, _where(rev, repo))
        fs = DVCFileSystem(repo=project, subrepos=True)
        with fs.open(fs.from_os_path(str(path)), mode="rb") as f:
            yield f


def _refuse_a_git_blob(project: Repo, path: Path, where: str) -> None:
    """Git unpacks a blob whole into memory before the first byte can be read: a model file
    of gigabytes of zeros, a few megabytes in git, would cost gigabytes before
    read_model_stream saw its header. The export stage writes a DVC output, never a blob; the
    tree's entry says which, without unpacking it."""
    from dvc.fs import GitFileSystem

    tree = project.fs  # a revision's git tree; the workspace's files are read as a stream
    if isinstance(tree, GitFileSystem) and tree.isfile(tree.join(project.root_dir, *path.parts)):
        raise StageError(
            f"{path} of {where} is committed to git, not tracked by DVC as the export stage "
            "writes it: git would unpack all of it into memory before its header could be "
            "checked, so it is not read. To load it anyway, check that revision out and load "
            "it from the workspace, where no more is read than its header declares"
        )


def load_model(rev: str | None = None, repo: str | None = None) -> MLP:
    """The exported model of `rev` in `repo` (default: this repository's workspace), in eval mode."""
    name = f"{EXPORT_WEIGHTS} of {_where(rev, repo)}"
    return model_from_bytes(read_model_bytes(rev, repo), name)[0]


def _how_to_get(rev: str | None) -> str:
    if rev is None:
        return (
            "neither the workspace nor the DVC cache has it. Build it (make repro), or fetch it "
            "(uv run dvc pull models/export, which needs a DVC remote: dvc remote add -d)"
        )
    return (
        f"neither the workspace nor the DVC cache has it. Build it (git checkout {rev}, then "
        f"uv run dvc repro export), or fetch it (uv run dvc pull models/export at {rev}; for an "
        f"experiment, uv run dvc exp pull -f <git remote> {rev}). `dvc exp pull` brings an "
        "experiment's outputs only through a DVC remote of the committed .dvc/config, and "
        "without one it brings the git refs and no data: commit the team's remote (uv run dvc "
        "remote add -d NAME URL; git commit .dvc/config), then push the experiment again "
        "(dvc exp push <git remote> EXP) and pull it"
    )


def _where(rev: str | None, repo: str | None) -> str:
    return f"{repo or 'this repository'} at {rev or 'the workspace'}"


def model_from_bytes(data: bytes, name: str) -> tuple[MLP, dict]:
    """The model a file's bytes hold, and the rest of its metadata."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / EXPORT_WEIGHTS.name
        path.write_bytes(data)
        return load_checkpoint(path, name=name)


def warm_start(model: MLP, commit: str, rev: str, key: str = "train.init") -> None:
    """Load the exported weights of `commit` (what `rev` names) into `model`, layer by layer,
    without the export's calibration temperature: dropout may differ (it has no weights), the
    layers may not. A model of another
    architecture is refused with both shapes."""
    name = f"{EXPORT_WEIGHTS} of {_where(rev, None)}"
    source, info = model_from_bytes(read_model_bytes(commit), name)
    # export folds a calibration temperature into the last layer; training starts from the
    # uncalibrated network (the temperature was fitted on the validation split it ranks on)
    fold_temperature(source, 1 / _temperature(info, name))
    ours, theirs = _weighted_layers(model), _weighted_layers(source)
    if [_shapes(m) for m in ours] != [_shapes(m) for m in theirs]:
        fix = (
            "model.batch_norm"
            if model.config.batch_norm != source.config.batch_norm
            else "model.hidden"
        )
        raise StageError(
            f"{key} = '{rev}': its model is {_layers(source)}, but params.yaml's model is "
            f"{_layers(model)} ({fix}): set {fix} to match, or start from another version"
        )
    with torch.no_grad():
        for target, layer in zip(ours, theirs, strict=True):
            target.load_state_dict(layer.state_dict())
        _renormalize_first_layer(model, source.config.pixel_mean, source.config.pixel_std)


def _temperature(info: dict, name: str) -> float:
    """The calibration temperature export recorded (1 without one): a positive number."""
    temperature = info.get("temperature", 1.0)
    if type(temperature) not in (int, float) or not 0 < temperature < math.inf:
        raise StageError(
            f"{name} has temperature = {str(temperature)[:40]} in its metadata, not a positive "
            "number: it was not written by the export stage. Start from another version"
        )
    return temperature


def _weighted_layers(model: MLP) -> list[torch.nn.Module]:
    return [m for m in model.net if isinstance(m, torch.nn.Linear | torch.nn.BatchNorm1d)]


def _shapes(layer: torch.nn.Module) -> tuple:
    return type(layer).__name__, *(tuple(v.shape) for v in layer.state_dict().values())


def _renormalize_first_layer(model: MLP, mean: float, std: float) -> None:
    """The source was trained on inputs normalized with its own pixel statistics; fold the
    change to `model`'s into the first layer, so the warm-started network computes exactly
    the function the source did: W(x - m)/s = (W s'/s)(x - m')/s' + W(m' - m)/s."""
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    new_mean, new_std = model.config.pixel_mean, model.config.pixel_std
    first.bias += first.weight.sum(1) * (new_mean - mean) / std
    first.weight *= new_std / std


def _layers(model: MLP) -> str:
    widths = [model.config.in_features, *model.config.hidden, model.config.num_classes]
    return "-".join(map(str, widths)) + (" with BatchNorm" if model.config.batch_norm else "")
