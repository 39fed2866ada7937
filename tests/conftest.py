"""Shared fixtures: the project's own params.yaml and real FashionMNIST data, subset for speed."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fashion_mnist_mlp.config.params import Params, load_params
from fashion_mnist_mlp.config.paths import MODELS, PARAMS_FILE, RAW_DIR
from fashion_mnist_mlp.training import portable_matmul
from fashion_mnist_mlp.training.checkpoints import save_model
from fashion_mnist_mlp.training.data import Images
from fashion_mnist_mlp.training.fashion_mnist import read_images_and_labels
from fashion_mnist_mlp.training.model import MLP, MLPConfig
from fashion_mnist_mlp.training.numerics import PORTABLE_ENV, cpu_flags, portable_unsupported

ROOT = Path(__file__).resolve().parents[1]


def committed(path: str) -> str:
    """A file of the project as its last commit holds it. `dvc exp run -S ...` leaves its values
    in the workspace's params.yaml and dvc.lock; the tests build their own params from the
    committed ones, so an experiment in the workspace cannot change what they test."""
    shown = subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True
    )
    return shown.stdout if shown.returncode == 0 else (ROOT / path).read_text()  # no git: as is


COMMITTED_PARAMS = committed(str(PARAMS_FILE))


def pytest_configure(config: pytest.Config) -> None:
    """One thread per torch process: two pytest workers (pyproject.toml) share the cores, and
    two processes at two threads each on two cores slow each other many times over. This
    process's kernels are the portable ones, as the stages run in-process pin them
    (fashion_mnist_mlp/training/numerics.py); the variables that chose them are dropped again, so each stage
    started as a command must pin them itself."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if portable_unsupported(cpu_flags()) is None:
        os.environ.update(PORTABLE_ENV)
        torch.ones(2, 2) @ torch.ones(2, 2)  # ATen and MKL read them at the first kernel
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    drop_portable_env(os.environ)


def drop_portable_env(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    for name in PORTABLE_ENV:
        env.pop(name, None)
    return env


DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def params(tmp_path_factory: pytest.TempPathFactory) -> Params:
    path = tmp_path_factory.mktemp("committed") / "params.yaml"
    path.write_text(COMMITTED_PARAMS)
    return load_params(path)


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    if not (DATASET_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"FashionMNIST is not in {DATASET_DIR}: install it with "
            "`apt-get install dataset-fashion-mnist` (make setup does)"
        )
    return DATASET_DIR


@pytest.fixture(scope="session")
def train_arrays(raw_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_images_and_labels(raw_dir, "train")


def as_images(images: np.ndarray, labels: np.ndarray) -> Images:
    return Images(torch.from_numpy(images).float().div(255), torch.from_numpy(labels).long())


@pytest.fixture(scope="session")
def small_data(train_arrays: tuple[np.ndarray, np.ndarray]) -> tuple[Images, Images]:
    """1,000 real training images and 200 real validation images."""
    images, labels = train_arrays
    return as_images(images[:1000], labels[:1000]), as_images(images[1000:1200], labels[1000:1200])


class Workdir:
    """A stage's working directory: params.yaml, the inputs a case sets up, and earlier outputs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def with_project_params(cls, path: Path) -> Workdir:
        (path / "params.yaml").write_text(COMMITTED_PARAMS)
        work = cls(path)
        work.set("numerics.threads", 1)  # as pytest_configure gives this process
        return work

    @classmethod
    def with_raw_data(cls, path: Path, raw_dir: Path, subset: int, val_size: int) -> Workdir:
        """The project's params, the raw FashionMNIST files, and a stratified subset to split."""
        work = cls.with_project_params(path)
        shutil.copytree(raw_dir, work.path / RAW_DIR)
        work.set("split.subset", subset)
        work.set("split.val_size", val_size)
        return work

    def set(self, dotted: str, value: object) -> None:
        from fashion_mnist_mlp.config.loader import with_values

        raw = yaml.safe_load((self.path / "params.yaml").read_text())
        changed = with_values(raw, {dotted: value})
        (self.path / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))

    def run(
        self, stage: str, *launcher: str, args: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """`python [launcher ...] -m fashion_mnist_mlp.<folder>.<stage> [args ...]` in this
        directory, with this checkout's code: a stage, or a tool (predict, search, ...)."""
        env = drop_portable_env({**os.environ, "PYTHONPATH": str(ROOT)})
        env.pop("STAGES_DEBUG", None)
        return subprocess.run(
            [sys.executable, *launcher, "-m", module_of(stage), *args],
            cwd=self.path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def assert_refused(self, stage: str, *phrases: str, args: tuple[str, ...] = ()) -> str:
        """Run `stage`; it must fail cleanly (exit 2, one error, no traceback), say each of
        `phrases`, and change no file here. Returns the message."""
        before = self.snapshot()
        result = self.run(stage, args=args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        message = result.stderr.strip()
        assert message.startswith("error: "), message
        for phrase in phrases:
            assert phrase in message, message
        assert self.snapshot() == before
        return message

    def snapshot(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.path.rglob("*"))
            if p.is_file()
        }


def module_of(name: str) -> str:
    """The dotted module of a stage or a tool."""
    folder = (
        "stages" if (ROOT / "fashion_mnist_mlp" / "stages" / f"{name}.py").exists() else "tools"
    )
    return f"fashion_mnist_mlp.{folder}.{name}"


def run_in_process(work: Workdir, stage: str) -> None:
    """A stage's main() in this process, in `work` (as `python -m fashion_mnist_mlp.stages.<stage>` there, without
    paying an interpreter start per call). Its StageError propagates."""
    previous, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(work.path)
    try:
        importlib.import_module(f"fashion_mnist_mlp.stages.{stage}").main()
    finally:
        os.chdir(previous)
        torch.set_num_threads(threads)
        drop_portable_env(os.environ)  # the stage's pin() set them: no command may inherit them
        portable_matmul.use_aten()  # and the products: the next test's are ATen's again


@pytest.fixture()
def raw_params() -> dict:
    """The project's params.yaml as plain data, to change before validating."""
    return yaml.safe_load(COMMITTED_PARAMS)


def error_of_params(raw: dict, changes: dict[str, object]) -> str:
    """The StageError message that validating `raw` with `changes` (dotted keys) gives."""
    from fashion_mnist_mlp.cli import StageError
    from fashion_mnist_mlp.config.loader import with_values
    from fashion_mnist_mlp.config.params import parse_params

    with pytest.raises(StageError) as e:
        parse_params(with_values(raw, changes))
    return str(e.value)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Path:
    """A working directory after a real split (subset) and evaluate of two small models."""
    work = Workdir.with_raw_data(tmp_path_factory.mktemp("evaluated"), raw_dir, 3000, 500)
    for path in MODELS.values():
        (work.path / path).parent.mkdir(parents=True, exist_ok=True)
        save_model(MLP(MLPConfig(hidden=(16,))), work.path / path, {"final_lr": 0.0})
    for stage in ("split", "evaluate"):
        result = work.run(stage)
        assert result.returncode == 0, result.stderr
    return work.path


@pytest.fixture()
def work_with_models(evaluated: Path, tmp_path: Path) -> Workdir:
    shutil.copytree(evaluated, tmp_path / "work")
    return Workdir(tmp_path / "work")
