"""What numerics.cpu = portable costs: the train stage's median epoch time under portable and
native, alternating in one run (the machine is shared and noisy), on the full training split.

    uv run python bench/numerics_cost.py [--epochs 4] [--repeats 3] [--threads 2]

Each run is `python -m stages.train` in a temporary copy of the project with download and split
done once; the stage prints its median epoch time, which this collects.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
EPOCH_TIME = re.compile(r"([\d.]+) s per epoch \(median\)")
MODES = ["portable", "native"]


def project(path: Path, epochs: int, threads: int) -> None:
    shutil.copytree(ROOT / "stages", path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epochs"] = epochs
    params["numerics"]["threads"] = threads
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("download", "split"):
        subprocess.run([PYTHON, "-m", f"stages.{stage}"], cwd=path, check=True, capture_output=True)


def epoch_seconds(path: Path, mode: str) -> float:
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["numerics"]["cpu"] = mode
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(path / "models", ignore_errors=True)
    out = subprocess.run(
        [PYTHON, "-m", "stages.train"], cwd=path, check=True, capture_output=True, text=True
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
        project(path, args.epochs, args.threads)
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
