"""No code path unpickles: checked on the source of every stage and benchmark, so a future
`torch.load` without weights_only=True, or a pickle import, fails here before it ships.
(tests/test_checkpoints.py and tests/test_stage_errors.py show a malicious pickle refused.)"""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any

import pytest
from dvc.fs.dvc import DVCFileSystem
from dvc.repo import Repo
from safetensors.torch import save_file

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.config.paths import EXPORT_WEIGHTS
from fashion_mnist_mlp.config.sections import MAX_DEPTH, MAX_WIDTH
from fashion_mnist_mlp.training.checkpoints import save_model
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.model_files import ITEM_SIZES, METADATA_KEY, expected_tensors
from fashion_mnist_mlp.training.versions import load_model

from .conftest import ROOT, Workdir
from .test_damaged_files import noise_png

SOURCES = sorted([*(ROOT / "fashion_mnist_mlp").rglob("*.py"), *(ROOT / "bench").glob("*.py")])
UNPICKLING_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}


def call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_source_never_unpickles(source: Path) -> None:
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not UNPICKLING_MODULES & {n.split(".")[0] for n in names}, ast.unparse(node)
        if isinstance(node, ast.Call):
            name = call_name(node)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") or (name == "load" and "weights_only" in keywords):
                assert keywords.get("weights_only") == "True", ast.unparse(node)
            if name.endswith(("np.load", "numpy.load")):
                assert keywords.get("allow_pickle", "False") == "False", ast.unparse(node)


def test_the_check_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nstate = torch.load('model.pt')\n")
    with pytest.raises(AssertionError):
        test_source_never_unpickles(bad)
    bad.write_text("from pickle import loads\n")
    with pytest.raises(AssertionError):
        test_source_never_unpickles(bad)
    bad.write_text("import torch\nstate = torch.load('model.pt', weights_only=True)\n")
    test_source_never_unpickles(bad)


# ---- a hostile model file in another repository: one error naming it, and little read ----


def a_project(
    path: Path, model: bytes, tail: int = 0, tag: str | None = None, in_git: bool = False
) -> str:
    """A git repository whose workspace (and commit `tag`, if given) holds `model` as the
    exported model, followed by `tail` zero bytes (sparse: no disk spent); its path. At `tag`
    the model is tracked by DVC, as the export stage's output is, or committed to git itself."""
    weights = path / EXPORT_WEIGHTS
    weights.parent.mkdir(parents=True)
    with weights.open("wb") as f:
        f.write(model)
        f.truncate(len(model) + tail)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    if tag:
        if not in_git:
            track_with_dvc(path, weights.parent)
        for args in (["add", "-A"], ["commit", "-q", "-m", "model"], ["tag", tag]):
            subprocess.run([*git, *args], check=True)
    return str(path)


def track_with_dvc(root: Path, output: Path) -> None:
    """Make `output` a DVC output of a new DVC project at `root` (warnings of DVC's own
    dependencies silenced: they are not this test's)."""
    with (
        warnings.catch_warnings(action="ignore", category=DeprecationWarning),
        Repo.init(str(root)) as project,
    ):
        project.add(str(output))


def saved(config: MLPConfig, metadata: str | None = None) -> bytes:
    """A model file of `config`, as save_model writes it, or with this metadata instead."""
    model = MLP(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        if metadata is None:
            save_model(model, path)
        else:
            save_file(model.state_dict(), path, metadata={METADATA_KEY: metadata})
        return path.read_bytes()


def header_only(config: MLPConfig, tensors: dict[str, tuple[str, tuple]]) -> bytes:
    """A safetensors header declaring `config` and these tensors (laid end to end), no data."""
    entries, offset = {}, 0
    for key, (dtype, shape) in tensors.items():
        size = ITEM_SIZES[dtype] * math.prod(shape)
        entries[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    metadata = json.dumps({"config": config.to_dict()})
    raw = json.dumps({"__metadata__": {METADATA_KEY: metadata}, **entries}).encode()
    return len(raw).to_bytes(8, "little") + raw


SMALL = MLPConfig(hidden=(8,))
BIGGEST = MLPConfig(hidden=(MAX_WIDTH,) * MAX_DEPTH, batch_norm=True)  # 1.9 GB of tensors


@pytest.fixture()
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the reads made on every file DVC's file system opens (the real one's files)."""
    real_open, sizes = DVCFileSystem.open, []

    class Counted:
        def __init__(self, f: IO[bytes]) -> None:
            self.f = f

        def read(self, size: int = -1) -> bytes:
            data = self.f.read(size)
            sizes.append(len(data))
            return data

        def __enter__(self) -> Counted:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def counting_open(fs: DVCFileSystem, *args: Any, **kwargs: Any) -> Counted:
        return Counted(real_open(fs, *args, **kwargs))

    monkeypatch.setattr(DVCFileSystem, "open", counting_open)
    return sizes


@pytest.mark.parametrize("depth", [20_000, 200_000])  # within the size cap, and past it
def test_a_metadata_bomb_from_another_repository_is_one_error_naming_it(
    tmp_path: Path, depth: int
) -> None:
    """json.loads of 20,000 nested lists raises RecursionError, no decode error."""
    repo = a_project(tmp_path, saved(SMALL, "[" * depth), tag="v1")
    with pytest.raises(StageError) as e:
        load_model(repo=repo, rev="v1")
    assert str(e.value).startswith(f"{EXPORT_WEIGHTS} of {repo} at v1 "), str(e.value)
    assert "never unpickled" in str(e.value)


def test_predict_refuses_a_metadata_bomb_from_another_repository(tmp_path: Path) -> None:
    repo = a_project(tmp_path / "other", saved(SMALL, "[" * 200_000))
    here = Workdir(tmp_path / "here")
    here.path.mkdir()
    (here.path / "shirt.png").write_bytes(noise_png())
    here.assert_refused(
        "predict", f"error: {EXPORT_WEIGHTS} of {repo} at the workspace ", "never unpickled",
        args=("shirt.png", "--repo", repo),
    )  # fmt: skip


def test_a_repository_without_the_model_says_so(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with pytest.raises(StageError) as e:
        load_model(repo=str(tmp_path))
    assert str(e.value) == (
        f"{EXPORT_WEIGHTS} not found in {tmp_path} at the workspace: was the export stage run "
        "and committed there?"
    )


TAIL = 64 << 20
"""Zero bytes after each hostile file's header: reading them all is what must not happen."""


@pytest.mark.parametrize(
    ("model", "phrase"),
    [
        (bytes(1024), "not a valid safetensors file (its header is not valid JSON"),
        ((2**40).to_bytes(8, "little"), "its header claims 1,099,511,627,776 bytes"),
        (
            header_only(SMALL, {"net.1.weight": ("F32", (2**20, 2**20))}),
            "net.1.weight F32 [1048576, 1048576] instead of F32 [8, 784]",
        ),
        (saved(SMALL, "[" * 20_000), "has metadata that is not valid JSON"),
        (saved(SMALL), f"it is longer than the {len(saved(SMALL)):,} bytes its header declares"),
    ],
    ids=["zero-filled", "header-length", "huge-tensors", "metadata-bomb", "trailing-bytes"],
)
def test_a_file_claiming_more_than_it_holds_is_refused_before_its_body_is_read(
    tmp_path: Path, bytes_read: list[int], model: bytes, phrase: str
) -> None:
    repo = a_project(tmp_path, model, tail=TAIL)
    with pytest.raises(StageError) as e:
        load_model(repo=repo)
    assert 0 < sum(bytes_read) <= len(model) + 1, f"{sum(bytes_read):,} bytes read"
    assert str(e.value).startswith(f"{EXPORT_WEIGHTS} of {repo} at the workspace ")
    assert phrase in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("model", "declared", "delivered"),
    [
        (saved(SMALL)[:-100], 25_480, 25_380),  # (784 x 8 + 8 + 8 x 10 + 10) x 4 bytes
        (header_only(BIGGEST, expected_tensors(BIGGEST)) + bytes(1 << 20), 1_906_376_808, 1 << 20),
    ],
    ids=["cut-short", "biggest-network-claimed"],
)
def test_a_truncated_model_from_another_repository_is_refused(
    tmp_path: Path, model: bytes, declared: int, delivered: int
) -> None:
    repo = a_project(tmp_path, model, tag="v1")
    with pytest.raises(StageError) as e:
        load_model(repo=repo, rev="v1")
    assert str(e.value).startswith(
        f"{EXPORT_WEIGHTS} of {repo} at v1 is not a valid safetensors file (it is truncated: it "
        f"ends {declared - delivered:,} bytes short of the {declared:,} bytes of tensors its "
        "header declares)"
    ), str(e.value)


PEAK_GROWTH = """
import resource, sys
import dvc.fs.dvc, dvc.repo  # what a first load imports: not the model file's cost
from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.training.versions import load_model
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
before = peak()
try:
    load_model(rev=sys.argv[1], repo=sys.argv[2] or None)
except StageError as e:
    print(e)
print(peak() - before)
"""
"""Loads a model in a process of its own; prints the error, then how much its peak memory grew."""


@pytest.fixture(scope="module")
def model_in_git(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A valid model and 512 MiB of zeros after it, committed to git at v1: half a megabyte in
    git, which unpacks a blob whole, twice over, before a byte of it can be read."""
    return a_project(tmp_path_factory.mktemp("git"), saved(SMALL), 512 << 20, "v1", in_git=True)


@pytest.mark.parametrize("from_inside", [False, True], ids=["repo-path", "workspace-repo"])
def test_a_model_committed_to_git_is_refused_before_git_unpacks_it(
    model_in_git: str, from_inside: bool
) -> None:
    repo = "" if from_inside else model_in_git
    result = subprocess.run(
        [sys.executable, "-c", PEAK_GROWTH, "v1", repo],
        cwd=model_in_git, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    message, growth = result.stdout.strip().rsplit("\n", 1)
    assert message.startswith(
        f"{EXPORT_WEIGHTS} of {repo or 'this repository'} at v1 is committed to git, not "
        "tracked by DVC as the export stage writes it"
    ), message
    assert int(growth) < 200 << 20, f"peak memory grew by {int(growth):,} bytes"
