"""Every benchmark starts the way the docs and the Makefile run it (`python bench/<name>.py`
from the repository root): a file that shadows a module torch imports, or an import that broke,
fails here instead of in a user's hands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


def start(name: str) -> subprocess.Popen[str]:
    command = [sys.executable, f"bench/{name}", "--help"]
    return subprocess.Popen(
        command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_every_benchmark_starts_as_the_readme_runs_it() -> None:
    assert len(BENCHMARKS) >= 8
    started = {path.name: start(path.name) for path in BENCHMARKS}
    for name, process in started.items():
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0 and "usage:" in output, f"bench/{name}:\n{output}"
