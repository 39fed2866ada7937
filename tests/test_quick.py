"""`make quick`: the -S values of the command line the Makefile runs pass the validate stage (a
naive quick run, `-S split.subset=2000 -S train.epochs=2 -S swa.epochs=1`, is refused twice:
split.val_size and swa.anneal_epochs). tests/e2e/test_experiments.py runs it through DVC."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml

from .conftest import ROOT, Workdir


def quick_command() -> list[str]:
    """`make quick`'s dvc command, as make expands it (setup, its prerequisite, left out)."""
    shown = subprocess.run(
        ["make", "-n", "-o", "setup", "quick"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    (line,) = [line for line in shown.splitlines() if " dvc exp run " in line]
    words = shlex.split(line)
    return words[words.index("dvc") :]


def settings(command: list[str]) -> dict[str, object]:
    """The -S key=value pairs of a command, each value read as YAML, as DVC reads it."""
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "-S"]
    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def test_make_quick_is_a_named_temporary_experiment_that_replaces_its_last_run() -> None:
    command = quick_command()
    assert command[:3] == ["dvc", "exp", "run"]
    assert {"--temp", "-f"} <= set(command) and command[command.index("-n") + 1] == "quick"


def test_make_quicks_values_pass_the_validate_stage(tmp_path: Path) -> None:
    work = Workdir.with_project_params(tmp_path)
    changes = settings(quick_command())
    assert changes["split.subset"] <= 5000 and changes["train.epochs"] <= 3  # quick, really
    for key, value in changes.items():
        work.set(key, value)
    result = work.run("validate")
    assert result.returncode == 0, result.stderr
    assert "validate: params.yaml is valid" in result.stdout
