"""`make quick`: the -S values of the command line the Makefile runs pass the validate stage (a
naive quick run, `-S split.subset=2000 -S train.epochs=2 -S swa.epochs=1`, is refused twice:
split.val_size and swa.anneal_epochs), and a rerun replaces the last one without -f (which
would skip DVC's run-cache). tests/e2e/test_experiments.py runs it through DVC."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import ROOT, Workdir
from .e2e.conftest import Project


def make_dry_run() -> list[str]:
    """The commands `make quick` runs, as make expands them (setup, its prerequisite, left
    out; its comments too)."""
    shown = subprocess.run(
        ["make", "-n", "-o", "setup", "quick"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in shown.splitlines() if not line.startswith("#")]


def quick_command() -> list[str]:
    """`make quick`'s dvc exp run command."""
    (line,) = [line for line in make_dry_run() if " dvc exp run " in line]
    words = shlex.split(line)
    return words[words.index("dvc") :]


def settings(command: list[str]) -> dict[str, object]:
    """The -S key=value pairs of a command, each value read as YAML, as DVC reads it."""
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "-S"]
    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def test_make_quick_is_a_named_temporary_experiment_that_keeps_the_run_cache() -> None:
    command = quick_command()
    assert command[:3] == ["dvc", "exp", "run"]
    assert "--temp" in command and command[command.index("-n") + 1] == "quick"
    assert not {"-f", "--force"} & set(command)  # which would rerun every unchanged stage


def test_make_quick_first_removes_the_last_quick_of_this_commit_only(tmp_path: Path) -> None:
    """Real git and DVC: the line before `dvc exp run` (DVC refuses a name this commit has)
    removes this commit's 'quick', keeps another commit's, and passes where there is none."""
    (removal,) = [line for line in make_dry_run() if "dvc exp remove" in line]
    repo = Project(tmp_path)
    repo.env["VIRTUAL_ENV"] = sys.prefix  # what `uv run` runs in, as under make
    repo.run("git", "init", "-q", "-b", "main")
    repo.run("dvc", "init", "-q")
    refs = {}
    for name in ("older", "this"):
        repo.run("git", "commit", "-q", "--allow-empty", "-m", name)
        commit = repo.run("git", "rev-parse", "HEAD").stdout.strip()
        refs[name] = f"refs/exps/{commit[:2]}/{commit[2:]}/quick"
        repo.run("git", "update-ref", refs[name], commit)
    repo.run("bash", "-c", removal)
    left = repo.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    assert left == [refs["older"]]
    again = repo.run("bash", "-c", removal)  # none left of this commit: nothing to do
    assert again.stdout == again.stderr == ""


def test_make_quicks_values_pass_the_validate_stage(tmp_path: Path) -> None:
    work = Workdir.with_project_params(tmp_path)
    changes = settings(quick_command())
    assert changes["split.subset"] <= 5000 and changes["train.epochs"] <= 3  # quick, really
    for key, value in changes.items():
        work.set(key, value)
    result = work.run("validate")
    assert result.returncode == 0, result.stderr
    assert "validate: params.yaml is valid" in result.stdout
