"""What numerics.cpu = portable costs: the train stage's median epoch time under portable and
native, alternating in one run (the machine is shared and noisy), on the full training split.

    uv run python bench/numerics_cost.py [--epochs 4] [--repeats 3] [--threads 2]

Each run is `python -m fashion_mnist_mlp.stages.train` in a temporary copy of the project with download and split
done once; the stage prints its median epoch time, which this collects.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stages import PYTHON, ROOT, set_numerics_cpu, stage_project

EPOCH_TIME = re.compile(r"([\d.]+) s per epoch \(median\)")
MODES = ["portable", "native"]


def epoch_seconds(path: Path, mode: str) -> float:
    set_numerics_cpu(path, mode)
    shutil.rmtree(path / "models", ignore_errors=True)
    out = subprocess.run(
        [PYTHON, "-m", "fashion_mnist_mlp.stages.train"],
        cwd=path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(EPOCH_TIME.findall(out)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="numerics-cost-") as tmp:
        path = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["train"]["epochs"] = args.epochs
        params["numerics"]["threads"] = args.threads
        stage_project(path, params)
        for _ in range(args.repeats):
            for mode in MODES:
                seconds[mode].append(epoch_seconds(path, mode))
    median = {mode: statistics.median(times) for mode, times in seconds.items()}
    print(f"train epoch, full split, {args.threads} threads, median of {args.repeats} runs "
          f"of {args.epochs} epochs (each run's median):")  # fmt: skip
    for mode in MODES:
        runs = ", ".join(f"{s:.2f}" for s in seconds[mode])
        print(f"  {mode:<9} {median[mode]:.2f} s  ({runs})")
    print(f"  portable / native = {median['portable'] / median['native']:.2f}x")


if __name__ == "__main__":
    main()
