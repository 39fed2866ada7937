"""The workflows the docs mark, and how a test runs them as a user types them.

Each block that README.md or a page under docs/ marks `<!-- workflow: NAME -->` is run by a test
(tests/e2e/test_readme.py; the multi-machine search blocks by test_search_across_machines.py) in
a project of this pipeline on a small subset, one command after another under `bash -euo
pipefail`. The only changes are the placeholders for what is the user's own (a directory the
team reaches, the git remote's URL, a database's host, port and password), the counts and
intervals a test makes smaller (trials, heartbeats), and `uv run`, which runs the command in the
tests' environment instead of syncing one in each temporary project."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

from ..conftest import ROOT
from .conftest import Project

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"<!-- workflow: ([\w-]+)[^>]*-->\n```(\w+)\n(.*?)\n```", re.DOTALL)
PLACEHOLDER = re.compile(r"<[a-z][\w |-]*>")
UV_SHIM = """#!/usr/bin/env bash
# `uv run [--flags] CMD ...` as the README types it: CMD in this test's environment
[ "$1" = run ] || { echo "uv (test shim): only 'uv run' is expected here, not: $*" >&2; exit 2; }
shift
while [ "${1#--}" != "$1" ]; do shift; done
exec "$@"
"""


def workflows() -> dict[str, tuple[str, str]]:
    """Name -> (language, body) of each marked block of the README and the docs pages."""
    found: dict[str, tuple[str, str]] = {}
    for page in PAGES:
        for name, language, body in MARKED.findall(page.read_text()):
            assert name not in found, f"two workflows named {name!r} (one in {page.name})"
            found[name] = (language, body)
    return found


def script(name: str, substitutions: dict[str, str]) -> str:
    """A workflow's commands (a console block's `$` lines), placeholders replaced: each one must
    be there, so a changed page fails here rather than running something else."""
    language, body = workflows()[name]
    if language == "console":
        body = "\n".join(line[2:] for line in body.splitlines() if line.startswith("$ "))
    for placeholder, value in substitutions.items():
        assert placeholder in body, f"the {name} workflow no longer has {placeholder}"
        body = body.replace(placeholder, value)
    assert not PLACEHOLDER.search(body), f"an unreplaced placeholder in {name}:\n{body}"
    return body


def shim_uv(env: dict[str, str], bin_dir: Path) -> None:
    """Put a `uv` on `env`'s PATH that runs `uv run ...`'s command in the tests' environment."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "uv").write_text(UV_SHIM)
    (bin_dir / "uv").chmod(stat.S_IRWXU)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"


def run_script(project: Project, commands: str) -> subprocess.CompletedProcess[str]:
    """`commands` as a user's shell runs them, stopping at the first that fails."""
    return project.run("bash", "-euo", "pipefail", "-c", commands)
