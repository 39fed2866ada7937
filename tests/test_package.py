"""The package as installed by `make setup` (`uv sync`: pyproject.toml's [tool.uv] package):
importable from any directory, while a stage run from another copy of the project (a queued
experiment's temporary directory) still runs that copy's code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def python(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """This environment's python in `cwd`, with nothing but the environment on its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_load_model_imports_from_any_directory(tmp_path: Path) -> None:
    result = python(tmp_path, "-c", "from fashion_mnist_mlp import load_model; "
                    "print(load_model.__module__, load_model.__name__)")  # fmt: skip
    assert result.returncode == 0, f"{result.stderr}\n(make setup installs the project: uv sync)"
    assert result.stdout.split() == ["fashion_mnist_mlp.training.versions", "load_model"]


def test_a_stage_run_from_another_copy_of_the_project_imports_that_copy(tmp_path: Path) -> None:
    """What dvc.yaml's `python -m fashion_mnist_mlp.stages.<name>` does in a queued experiment's
    copy: the copy's modules, not the installed project's (here a module only the copy has)."""
    copy = tmp_path / "fashion_mnist_mlp"
    shutil.copytree(ROOT / "fashion_mnist_mlp", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "stages" / "where.py").write_text("import fashion_mnist_mlp.cli\n"
                                               "print(fashion_mnist_mlp.cli.__file__)\n")  # fmt: skip
    result = python(tmp_path, "-m", "fashion_mnist_mlp.stages.where")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == copy / "cli.py"
