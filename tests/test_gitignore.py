"""Every folder the documentation's commands write into the project (`dvc get ... -o NAME`) is
git-ignored: a reader who follows the examples keeps a clean `git status`."""

from __future__ import annotations

import re
import subprocess

from .conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OUTPUT = re.compile(r"^(?:\$ )?(?:uv run )?dvc [^\n#]* -o (\S+)", re.MULTILINE)
"""A documented dvc command that writes to `-o NAME`, from a code block's line."""


def documented_outputs() -> set[str]:
    return {name for doc in DOCUMENTS for name in OUTPUT.findall(doc.read_text())}


def test_the_folders_the_documented_commands_write_are_git_ignored() -> None:
    outputs = documented_outputs()
    assert {"artifact", "exported"} <= outputs, outputs  # the README's retrieval examples
    paths = [f"{name}/model.safetensors" for name in sorted(outputs)]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert ignored == paths
