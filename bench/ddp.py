"""The train stage as one process vs as DistributedDataParallel processes (`train.nproc`).

    uv run python bench/ddp.py [--nproc 2] [--epochs 5] [--repeats 3]

Runs `python -m fashion_mnist_mlp.stages.train` in a temporary directory holding this checkout's params.yaml and a
real split (made by the split stage), alternating the process counts so load on this shared
machine hits both alike. Reports the median epoch time (from metrics/resources/train.json), the
wall time including start-up, and the last validation accuracy. On CPU each of N processes gets
1/N of the cores, so DDP can only win where the single process leaves cores idle; on a machine
with N GPUs it is one process per GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pipeline import ENV, ROOT

PYTHON_ENV = {**ENV, "PYTHONPATH": str(ROOT)}


def set_param(work: Path, dotted: str, value: object) -> None:
    raw = yaml.safe_load((work / "params.yaml").read_text())
    section, key = dotted.split(".")
    raw[section][key] = value
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def stage(work: Path, name: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"fashion_mnist_mlp.stages.{name}"], cwd=work, env=PYTHON_ENV,
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start


def train_once(work: Path, nproc: int) -> dict[str, float]:
    set_param(work, "train.nproc", nproc)
    wall = stage(work, "train")
    resources = json.loads((work / "metrics/resources/train.json").read_text())
    metrics = json.loads((work / "metrics/train/metrics.json").read_text())
    return {"epoch": resources["epoch_seconds"], "wall": wall, "acc": metrics["val"]["acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(ROOT / "params.yaml", work / "params.yaml")
        set_param(work, "train.epochs", args.epochs)
        for name in ("download", "split"):
            stage(work, name)
        runs: dict[int, list[dict[str, float]]] = {1: [], args.nproc: []}
        for _ in range(args.repeats):
            for nproc in runs:
                runs[nproc].append(train_once(work, nproc))

    median = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    one = median[1]
    print(f"train stage, {args.epochs} epochs on the full split, median of {args.repeats}, "
          f"alternating")  # fmt: skip
    for nproc, m in median.items():
        print(f"  {nproc} process(es): {m['epoch']:.2f} s/epoch ({one['epoch'] / m['epoch']:.2f}x)"
              f", {m['wall']:.1f} s wall with start-up ({one['wall'] / m['wall']:.2f}x), "
              f"val acc {m['acc']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
