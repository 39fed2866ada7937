"""A refused value costs nothing through real DVC: `dvc repro`, `dvc repro <stage>` and
`dvc exp run -S` stop in the validate stage, before DVC deletes any stage's outputs, with the
project's one clear message; every file under data/, models/ and metrics/ keeps its bytes."""

from __future__ import annotations

import hashlib

import pytest

from .conftest import Project

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
    assert "Traceback" not in output and "> python -m stages.download" not in output
    assert "> python -m stages.train" not in output
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
