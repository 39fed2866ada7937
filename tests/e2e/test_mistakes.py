"""A refused value costs nothing through real DVC: `dvc repro`, `dvc repro <stage>` and
`dvc exp run -S` stop in the validate stage, before DVC deletes any stage's outputs, with the
project's one clear message; every file under data/, models/ and metrics/ keeps its bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import Project, restore_workspace

pytestmark = pytest.mark.e2e

KEPT = ("data", "models", "metrics", "params.schema.json")


def snapshot(project: Project) -> dict[str, str]:
    """sha256 of every file the pipeline wrote, by path."""
    roots = [project.path / name for name in KEPT]
    files = [p for root in roots for p in (root, *root.rglob("*"))]
    return {
        str(p.relative_to(project.path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file()
    }


def refused(project: Project, *command: str) -> str:
    """Run a command that must fail; return its output, the workspace's params restored."""
    before = snapshot(project)
    try:
        result = project.run(*command, check=False)
    finally:
        after = snapshot(project)
        project.run("git", "checkout", "-q", "params.yaml")
    assert result.returncode != 0, result.stdout
    assert after == before, "a refused value cost files: " + ", ".join(
        sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    )
    output = result.stdout + result.stderr
    assert (
        "Traceback" not in output and "> python -m fashion_mnist_mlp.stages.download" not in output
    )
    assert "> python -m fashion_mnist_mlp.stages.train" not in output
    return output


# params.yaml values: the issue's own examples, and mistakes across keys
BAD_VALUES = [
    ({"train": {"lr": -0.001}}, "train.lr = -0.001"),
    ({"swa": {"epochs": "ten"}}, "swa.epochs = 'ten'"),
    ({"export": {"model": "best"}}, "export.model = 'best'"),
    ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size = 0"),
    ({"split": {"subset": 400, "val_size": 500}}, "split.val_size = 500 must be smaller"),
    ({"swa": {"epochs": 2, "anneal_epochs": 3}}, "swa.anneal_epochs = 3 is longer than the run"),
    (
        {"train": {"scheduler": "multistep", "schedulers": {"multistep": {"milestones": [1, 5]}}}},
        "milestones",
    ),
    (
        {
            "train": {
                "scheduler": "lambda",
                "schedulers": {"lambda": {"formula": "__import__('os')"}},
            }
        },
        "calls '__import__'",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=lambda v: str(v)[:40])
def test_a_refused_params_value_stops_dvc_repro_before_any_output_is_touched(
    reproduced: Project, override: dict, message: str
) -> None:
    reproduced.set_params(override)
    output = refused(reproduced, "dvc", "repro")
    assert message in output


def test_dvc_repro_of_one_stage_validates_first(reproduced: Project) -> None:
    reproduced.set_params({"train": {"lr": -1.0}})
    assert "train.lr = -1.0" in refused(reproduced, "dvc", "repro", "train")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.optimizer=adamx", "train.optimizer = 'adamx'"),
        ("split.val_size=0", "split.val_size = 0"),
    ],
)
def test_a_refused_exp_run_set_value_costs_nothing(
    reproduced: Project, setting: str, message: str
) -> None:
    output = refused(reproduced, "dvc", "exp", "run", "-S", setting)
    assert message in output
    reproduced.assert_clean()


def user_shell(project: Project, launcher: str) -> dict[str, str]:
    """The environment of a user's shell: with the project's environment on its PATH (an
    activated .venv), or, for `uv run` users, without it: uv puts it on its commands' PATH."""
    env = {k: v for k, v in project.env.items() if k not in ("UV_RUN_RECURSION_DEPTH", "UV")}
    if launcher == "uv run":
        venv_bin = Path(sys.executable).parent.resolve()
        env["PATH"] = os.pathsep.join(
            p for p in env["PATH"].split(os.pathsep) if p and Path(p).resolve() != venv_bin
        )
        env["VIRTUAL_ENV"] = sys.prefix  # the environment uv runs in (no project file here)
        assert shutil.which("dvc", path=env["PATH"]) is None, "dvc outside the environment"
        assert shutil.which("uv", path=env["PATH"]), "no uv (make setup installs it)"
    return env


@pytest.mark.parametrize(("launcher", "dvc"), [("", "dvc"), ("uv run", "uv run dvc")])
def test_a_failed_workspace_experiment_ends_with_the_way_back_which_works(
    reproduced: Project, launcher: str, dvc: str
) -> None:
    """A stage that fails under a workspace `dvc exp run -S` (after validate: here export's
    parity check, held to an impossible tolerance) ends with the one command back to the last
    commit's params and outputs; typed as printed in the user's shell, it leaves the workspace
    as committed. Under `uv run`, that shell has no `dvc`: the way back says `uv run dvc`."""
    env = user_shell(reproduced, launcher)

    def shell(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=reproduced.path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    try:
        result = shell(f"{launcher} dvc exp run -S export.atol=1e-12 -S export.rtol=0")
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "ONNX parity check failed" in output, output
        way_back = output[output.index("error: ") :].splitlines()[1]
        assert way_back.endswith(f": git checkout params.yaml dvc.lock && {dvc} checkout"), output
        # what a newcomer is left with: the failed value in params.yaml, export's outputs gone
        # (DVC writes 1e-12, which YAML 1.2 reads as a number and PyYAML's 1.1 as a string)
        assert float(yaml.safe_load(reproduced.read("params.yaml"))["export"]["atol"]) == 1e-12
        assert not (reproduced.path / "models" / "export").exists()
        typed = shell(way_back.split(": ", 1)[1])
        assert typed.returncode == 0, typed.stdout + typed.stderr
        reproduced.assert_clean()
    finally:
        restore_workspace(reproduced)  # for the tests after this one, whatever happened


def test_a_failed_temporary_experiment_says_the_workspace_is_untouched(
    reproduced: Project,
) -> None:
    result = reproduced.run(
        "dvc", "exp", "run", "--temp", "-S", "export.atol=1e-12", "-S", "export.rtol=0",
        check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "ONNX parity check failed" in output, output
    assert "ran in a temporary copy, queued or --temp: your workspace is as it was" in output
    assert "git checkout params.yaml" not in output
    reproduced.assert_clean()
