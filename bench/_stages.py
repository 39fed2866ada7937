"""Shared by the benchmarks that run stage commands directly, without DVC: a copy of the stages
and a params.yaml in a directory, with download and split done, and one params key to change
between runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"


def stage_project(path: Path, params: dict) -> None:
    shutil.copytree(
        ROOT / "fashion_mnist_mlp",
        path / "fashion_mnist_mlp",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "split"):
        subprocess.run(
            [PYTHON, "-m", f"fashion_mnist_mlp.stages.{stage}"],
            cwd=path,
            check=True,
            capture_output=True,
        )


def set_numerics_cpu(path: Path, mode: str) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["numerics"]["cpu"] = mode
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
