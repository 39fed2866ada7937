"""Wall time of a queued sweep with `dvc queue start --jobs 1` vs `--jobs 2`, with and without
limiting each worker's threads to its share of the cores.

    uv run python bench/queue_jobs.py [--experiments 4] [--epochs 5]

Each configuration queues the same short experiments (distinct lr, so nothing comes from the
run-cache) in its own fresh clone of HEAD and waits for the queue to drain. Torch reads
OMP_NUM_THREADS, and queue workers inherit the environment of `dvc queue start`, so
`OMP_NUM_THREADS=<cores / jobs> dvc queue start --jobs <jobs>` is how a sweep shares the cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline import ENV, ROOT


def sweep_seconds(
    root: Path, name: str, jobs: int, threads: int | None, lrs: list[str], epochs: int
) -> float:
    repo = root / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = dict(ENV)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)

    def dvc(*args: str) -> None:
        subprocess.run(["dvc", *args], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)

    dvc("repro", "split")  # shared inputs first, so the sweep times training work only
    # numerics.threads: auto, so that each worker's threads come from OMP_NUM_THREADS
    dvc("exp", "run", "--queue", "-S", f"train.lr={','.join(lrs)}", "-S", "numerics.threads=auto",
        "-S", f"train.epochs={epochs}", "-S", "swa.epochs=2")  # fmt: skip
    start = time.perf_counter()
    dvc("queue", "start", "--jobs", str(jobs))
    while True:
        status = subprocess.run(
            ["dvc", "queue", "status"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(1)
    seconds = time.perf_counter() - start
    if "Failed" in status:
        sys.exit(f"{name}: an experiment failed\n{status}")
    dvc("queue", "stop")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    lrs = [f"{0.002 + 0.0005 * i:g}" for i in range(args.experiments)]
    configs = {
        f"--jobs 1, {cores} threads": (1, None),
        f"--jobs 2, {cores} threads each (oversubscribed)": (2, None),
        f"--jobs 2, OMP_NUM_THREADS={max(1, cores // 2)}": (2, max(1, cores // 2)),
    }
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        results = {
            name: sweep_seconds(Path(tmp), f"run{i}", jobs, threads, lrs, args.epochs)
            for i, (name, (jobs, threads)) in enumerate(configs.items())
        }
    print(
        f"{args.experiments} experiments ({args.epochs} train + 2 swa epochs each), {cores} cores:"
    )
    baseline = next(iter(results.values()))
    for name, seconds in results.items():
        print(f"  {name:<44} {seconds:6.1f} s  ({baseline / seconds:.2f}x)")


if __name__ == "__main__":
    main()
