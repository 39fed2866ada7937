"""Bad input, run through the real stage commands: each case must exit 2 with one clear message
that names the problem (no traceback), and leave every file in the working directory as it was:
nothing half-written, no earlier output lost."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import save_file

from fashion_mnist_mlp.config.paths import RAW_DIR, TRAIN_MODEL
from fashion_mnist_mlp.training.checkpoints import METADATA_KEY, read_header
from fashion_mnist_mlp.training.fashion_mnist import RAW_FILES
from fashion_mnist_mlp.training.model import MLP, MLPConfig

from .conftest import ROOT, Workdir

CLOSED_PORT_MIRROR = "http://127.0.0.1:9/"  # the discard port: nothing listens, refused at once


@pytest.fixture()
def work(tmp_path: Path) -> Workdir:
    return Workdir.with_project_params(tmp_path)


# ---- params: a stage validates the sections it reads before any work (validate: all) ----


@pytest.mark.parametrize(
    ("key", "value", "phrases"),
    [
        ("train.lrr", 0.1, ["train.lrr", "did you mean 'lr'"]),
        ("train.epochs", "ten", ["train.epochs", "'ten'"]),
        ("train.epochs", -1, ["train.epochs", "greater than or equal to 0"]),
        ("train.lr", -0.1, ["train.lr", "greater than 0"]),
        ("train.batch_size", 0, ["train.batch_size", "greater than 0"]),
        ("train.nproc", 0, ["train.nproc", "greater than or equal to 1"]),
        ("split.val_size", 60_000, ["split.val_size"]),
        ("train.optimizer", "adamx", ["train.optimizer", "'adamw'"]),
        ("train.scheduler", "cosin", ["train.scheduler", "'cosine'"]),
        ("train.loss", "hinge", ["train.loss", "'cross_entropy'"]),
        ("train.schedulers.step.T_max", 5, ["train.schedulers.step.T_max", "unknown key"]),
        ("model.dropout", 1.5, ["model.dropout"]),
    ],
)
def test_bad_params_are_refused_before_any_work(
    work: Workdir, key: str, value: object, phrases: list[str]
) -> None:
    work.set(key, value)
    earlier = work.path / "data" / "split" / "train.safetensors"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier output that must survive")
    reader = "split" if key.startswith("split.") else "train"  # train reads model's keys too
    work.assert_refused(reader, "params.yaml", *phrases)


def test_params_that_are_not_yaml_are_refused(work: Workdir) -> None:
    (work.path / "params.yaml").write_text("train: [unclosed\n")
    work.assert_refused("split", "params.yaml")


# ---- data: the download stage, offline, from a local folder holding one bad file ----


def gz(content: bytes) -> bytes:
    return gzip.compress(content, compresslevel=1, mtime=0)  # level 9 takes seconds for 47 MB


def truncated(gz_bytes: bytes) -> bytes:
    return gz_bytes[: len(gz_bytes) // 2]


def wrong_content(gz_bytes: bytes) -> bytes:
    content = bytearray(gzip.decompress(gz_bytes))
    content[-1] ^= 0xFF  # one pixel of the last image
    return gz(bytes(content))


def wrong_magic(gz_bytes: bytes) -> bytes:
    return gz(b"\x00\x00\x0d\x03" + gzip.decompress(gz_bytes)[4:])


def labels_of_the_test_set(_: bytes) -> bytes:
    # a real IDX file, but with 10,000 labels for the 60,000 training images
    return (Path("/usr/share/datasets/fashion-mnist") / RAW_FILES["test_labels"].name).read_bytes()


@pytest.mark.parametrize(
    ("key", "corrupt", "phrases"),
    [
        ("train_images", truncated, ["train-images-idx3-ubyte.gz", "not a valid gzip file"]),
        ("train_images", wrong_content, ["train-images-idx3-ubyte.gz", "sha256"]),
        ("test_images", wrong_magic, ["t10k-images-idx3-ubyte.gz", "sha256"]),
        ("train_labels", labels_of_the_test_set, ["train-labels-idx1-ubyte.gz", "sha256"]),
    ],
)
def test_bad_data_files_are_refused_and_earlier_data_kept(
    work: Workdir, raw_dir: Path, key: str, corrupt: Callable[[bytes], bytes], phrases: list[str]
) -> None:
    source = work.path / "source"
    shutil.copytree(raw_dir, source)
    bad = source / RAW_FILES[key].name
    bad.write_bytes(corrupt(bad.read_bytes()))
    work.set("download.source_dir", str(source))
    work.set("download.mirrors", [CLOSED_PORT_MIRROR])
    (work.path / RAW_DIR).mkdir(parents=True)
    (work.path / RAW_DIR / "earlier.txt").write_text("the last good download")
    work.assert_refused("download", *phrases, CLOSED_PORT_MIRROR)


def test_missing_source_dir_while_offline_names_every_source(work: Workdir) -> None:
    work.set("download.source_dir", str(work.path / "no-such-dir"))
    work.set("download.mirrors", [CLOSED_PORT_MIRROR])
    work.assert_refused("download", "no-such-dir", CLOSED_PORT_MIRROR)


# ---- models: the evaluate stage, on a real (subset) split, with one bad weights file ----


class ShellOnLoad:
    """Unpickling this would create a file: proof of whether a loader ran pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def write_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": ShellOnLoad(path.parent / "pwned")}))


def write_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def write_wrong_shapes(path: Path) -> None:
    # the weights of a (8,)-hidden MLP under the metadata of the (16,)-hidden one it replaces
    metadata = {METADATA_KEY: json.dumps(read_header(path, str(path))[0], sort_keys=True)}
    save_file(MLP(MLPConfig(hidden=(8,))).state_dict(), path, metadata=metadata)


@pytest.mark.parametrize(
    ("damage", "phrases"),
    [
        (write_pickle, ["not a valid safetensors file", "never unpickled"]),
        (write_truncated, ["not a valid safetensors file"]),
        (write_wrong_shapes, ["do not fit"]),
    ],
)
def test_bad_weights_files_are_refused_without_running_them(
    work_with_models: Workdir, damage: Callable[[Path], None], phrases: list[str]
) -> None:
    damage(work_with_models.path / TRAIN_MODEL)
    work_with_models.assert_refused("evaluate", str(TRAIN_MODEL), *phrases)
    assert not (work_with_models.path / TRAIN_MODEL).with_name("pwned").exists()


def test_onnx_parity_failure_reports_the_largest_difference(work_with_models: Workdir) -> None:
    work_with_models.set("export.atol", 1e-12)
    work_with_models.set("export.rtol", 0.0)
    message = work_with_models.assert_refused(
        "export", "export.atol 1e-12 + export.rtol 0", "Nothing was exported"
    )
    largest = float(message.split("max |logit difference| ")[1].split()[0])
    assert 0 < largest < 1e-3  # a real float32 difference, reported, not a placeholder


def test_stages_debug_shows_the_traceback(work: Workdir) -> None:
    work.set("split.val_size", 60_000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STAGES_DEBUG": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "fashion_mnist_mlp.stages.split"],
        cwd=work.path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "split.val_size" in result.stderr


def test_params_changed_while_a_stage_ran_fail_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `dvc exp run` in the same workspace rewrites params.yaml under a running stage;
    DVC would then record values the stage did not use. The stage fails instead, naming it."""
    from fashion_mnist_mlp.cli import run_stage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train: {lr: 0.002}\n")

    def main() -> None:
        (tmp_path / "params.yaml").write_text("train: {lr: 0.006}\n")

    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "params.yaml changed while test_stage_errors ran" in message
    assert "dvc queue start -j N" in message
    run_stage(lambda: None)  # unchanged: nothing to say
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("launcher", "command"),
    [({}, "dvc checkout"), ({"UV_RUN_RECURSION_DEPTH": "1"}, "uv run dvc checkout")],
    ids=["dvc on the shell's PATH", "uv run dvc"],
)
def test_the_way_back_is_a_command_the_users_shell_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    launcher: dict[str, str],
    command: str,
) -> None:
    """A stage failing under a workspace `dvc exp run` ends with the way back. Started by `uv
    run dvc ...` (uv marks its children with UV_RUN_RECURSION_DEPTH), the shell that typed it
    has no `dvc` of its own: the command printed is `uv run dvc checkout` then."""
    from fashion_mnist_mlp.cli import StageError, run_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UV_RUN_RECURSION_DEPTH", raising=False)  # make test runs under uv run
    monkeypatch.delenv("STAGES_DEBUG", raising=False)
    for name, value in {"DVC_STAGE": "export", "DVC_ROOT": str(tmp_path), **launcher}.items():
        monkeypatch.setenv(name, value)

    def main() -> None:
        raise StageError("a problem")

    with pytest.raises(SystemExit):
        run_stage(main, check_params=False)
    way_back = capsys.readouterr().err.strip().splitlines()[-1]
    assert way_back.endswith(f": git checkout params.yaml dvc.lock && {command}"), way_back
