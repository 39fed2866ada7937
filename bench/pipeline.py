"""The whole pipeline's cost: `dvc repro` from scratch per stage, a no-op `dvc repro` against a
one-stage DVC project's, and what `dvc exp run` adds over running a stage directly.

    uv run python bench/pipeline.py [--repeats 5]

Works in a fresh clone of this repository's HEAD under a temporary directory (the workspace is
not touched) with this checkout's .venv first on PATH, as the stage commands call `python`.
Timings alternate between the things compared, so load on this shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
STAGE_START = re.compile(r"^Running stage '(\w+)'")


def run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def repro_per_stage(repo: Path) -> dict[str, float]:
    """Seconds per stage of one `dvc repro`, from when DVC announces a stage to the next."""
    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    with subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=ENV, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if match := STAGE_START.match(line):
                marks.append((match.group(1), time.perf_counter()))
    if proc.returncode != 0:
        sys.exit(f"dvc repro failed in {repo} (exit {proc.returncode})")
    end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [end]
    stages = {name: t1 - t0 for (name, t0), t1 in zip(marks, ends, strict=True)}
    stages["dvc start-up before the first stage"] = marks[0][1] - start
    return stages


def one_stage_project(root: Path) -> Path:
    """The smallest real DVC project: one stage with one dep and one out, reproduced once."""
    repo = root / "one-stage"
    repo.mkdir()
    (repo / "in.txt").write_text("x\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n    outs: [out.txt]\n"
    )
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        run(cmd, repo)
    return repo


def alternate(a: list[str], a_dir: Path, b: list[str], b_dir: Path, n: int) -> tuple[float, float]:
    times_a, times_b = [], []
    for _ in range(n):
        times_a.append(run(a, a_dir))
        times_b.append(run(b, b_dir))
    return statistics.median(times_a), statistics.median(times_b)


def exp_run_overhead(repo: Path, n: int) -> tuple[float, float]:
    """Median seconds of `dvc exp run -S evaluate.misclassified_grid=K` (reruns evaluate only)
    and of `python -m fashion_mnist_mlp.stages.evaluate` after the same edit, alternating; a new K each round, so
    DVC's run-cache cannot skip the work, and the same K for both, so they do the same work."""
    params = repo / "params.yaml"
    original = params.read_text()
    exp_times, direct_times = [], []
    for k in range(n):
        exp_times.append(
            run(["dvc", "exp", "run", "-S", f"evaluate.misclassified_grid={k + 2}"], repo)
        )
        params.write_text(original.replace("misclassified_grid: 6", f"misclassified_grid: {k + 2}"))
        direct_times.append(run(["python", "-m", "fashion_mnist_mlp.stages.evaluate"], repo))
        params.write_text(original)
    return statistics.median(exp_times), statistics.median(direct_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per no-op / exp timing")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        repo = root / "project"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)

        start = time.perf_counter()
        stages = repro_per_stage(repo)
        total = time.perf_counter() - start
        resources = {
            name: json.loads((repo / f"metrics/resources/{name}.json").read_text())
            for name in ("train", "swa")
        }
        scores = json.loads((repo / "metrics/test.json").read_text())

        minimal = one_stage_project(root)
        noop, noop_minimal = alternate(
            ["dvc", "repro"], repo, ["dvc", "repro"], minimal, args.repeats
        )
        exp, direct = exp_run_overhead(repo, args.repeats)

    print(f"default `dvc repro` from scratch: {total:.1f} s")
    for name, seconds in stages.items():
        print(f"  {name:<38} {seconds:6.1f} s")
    for name, figures in resources.items():
        print(
            f"  {name} peak RSS {figures['peak_rss_mb']:.0f} MiB, {figures['epoch_seconds']:.2f} s/epoch"
        )
    print("  test accuracy: " + ", ".join(f"{m} {s['accuracy']:.4f}" for m, s in scores.items()))
    print(f"no-op `dvc repro`, median of {args.repeats}:")
    print(f"  this pipeline      {noop:5.2f} s")
    print(f"  one-stage project  {noop_minimal:5.2f} s")
    print(f"  ratio              {noop / noop_minimal:5.2f}x (target <= 1.2x)")
    print(
        f"`dvc exp run` rerunning evaluate vs `python -m fashion_mnist_mlp.stages.evaluate`, median of {args.repeats}:"
    )
    print(f"  dvc exp run {exp:5.2f} s, direct {direct:5.2f} s, overhead {exp - direct:+.2f} s")


if __name__ == "__main__":
    main()
