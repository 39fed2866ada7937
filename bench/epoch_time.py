"""Epoch time side by side: the lesson's loop, the train stage under both numerics, the bound.

    make bench    (or: uv run --group bench python bench/epoch_time.py [--repeats 3] [--epochs 4])

Every row is a real process as a user starts it, alternated in one run (the machine is shared
and noisy): the lesson's own loop (bench/lesson_loop.py: torchvision + ToTensor + DataLoader,
batch 64, SGD lr 1e-3); `python -m fashion_mnist_mlp.stages.train` at the lesson's settings
(batch 64, SGD lr 1e-3, no BatchNorm, dropout or scheduler: fashion_mnist_mlp/tools/lesson.py)
and at params.yaml's default, each under `numerics.cpu: portable` and `native`; on a GPU, the
default on it. Each stage row is the median over runs of the epoch time the stage prints
(training and validation, 50,000 + 10,000 images). The bound is the matmul FLOPs of one epoch
(forward + backward = 3x the forward's: 200 GFLOP) at the rate a 4096x4096 float32 product
runs in this run (each CPU's fastest kernel, numerics.threads threads).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stages import PYTHON, ROOT, stage_project
from fashion_mnist_mlp.config.loader import with_values
from fashion_mnist_mlp.tools.lesson import LESSON

FLOP_PER_EPOCH = 50_000 * 3 * 2 * (784 * 512 + 512 * 512 + 512 * 10)
STAGE_SECONDS = re.compile(r"([\d.]+) s per epoch \(median\)")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def stage_seconds(project: Path, params: dict) -> float:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(project / "models", ignore_errors=True)
    return printed_seconds([PYTHON, "-m", "fashion_mnist_mlp.stages.train"], cwd=project)


def lesson_seconds(epochs: int, threads: int) -> float:
    script = ROOT / "bench" / "lesson_loop.py"
    return printed_seconds([PYTHON, script, f"--epochs={epochs}", f"--threads={threads}"])


def printed_seconds(command: list, cwd: Path | None = None) -> float:
    """The `X s per epoch (median)` a process prints; its output if it fails."""
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{run.stdout}{run.stderr}")
    return float(STAGE_SECONDS.findall(run.stdout)[-1])


def matmul_flops(threads: int) -> float:
    """float32 FLOP/s of a 4096x4096 product, best of 5, in a fresh process (ATen's own kernels)."""
    code = (
        "import sys, time, torch\n"
        "torch.set_num_threads(int(sys.argv[1]))\n"
        "a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)\n"
        "a @ b\n"
        "times = []\n"
        "for _ in range(5):\n"
        "    start = time.perf_counter(); a @ b; times.append(time.perf_counter() - start)\n"
        "print(2 * 4096**3 / min(times))\n"
    )
    run = subprocess.run(
        [PYTHON, "-c", code, str(threads)], check=True, capture_output=True, text=True
    )
    return float(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each row, alternated")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per stage run")
    args = parser.parse_args()
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    threads = default["numerics"]["threads"]
    if threads == "auto":
        threads = len(os.sched_getaffinity(0))
    base = with_values(default, {"train.epochs": args.epochs, "train.device": "cpu"})
    lesson = with_values(
        base, {k: v for k, v in LESSON.items() if k.startswith(("train.", "model."))}
    )
    lesson["train"]["epochs"] = args.epochs
    rows: dict[str, dict | None] = {
        "lesson's loop (torchvision DataLoader), batch 64, SGD": None,
        "train stage, lesson's settings, portable": with_values(
            lesson, {"numerics.cpu": "portable"}
        ),
        "train stage, lesson's settings, native": with_values(lesson, {"numerics.cpu": "native"}),
        "train stage, default, portable": with_values(base, {"numerics.cpu": "portable"}),
        "train stage, default, native": with_values(base, {"numerics.cpu": "native"}),
    }
    if _cuda_available():
        rows["train stage, default, GPU"] = with_values(
            default, {"train.epochs": args.epochs, "train.device": "cuda"}
        )
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    flops: list[float] = []
    with tempfile.TemporaryDirectory(prefix="epoch-time-") as tmp:
        project = Path(tmp)
        stage_project(project, base)
        for repeat in range(args.repeats):
            for name, params in rows.items():
                if params is None:
                    seconds[name].append(lesson_seconds(args.epochs, threads))
                else:
                    seconds[name].append(stage_seconds(project, params))
                print(
                    f"  run {repeat + 1}/{args.repeats}: {name}: {seconds[name][-1]:.2f} s",
                    file=sys.stderr,
                )
            flops.append(matmul_flops(threads))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    bound = FLOP_PER_EPOCH / statistics.median(flops)
    print(
        f"{cpu_model()}, {threads} threads; s per epoch (50,000 training images), median of "
        f"{args.repeats} runs alternated; fp32 matmul {statistics.median(flops) / 1e9:.0f} GFLOP/s"
    )
    print("| | s/epoch | runs |\n|---|---|---|")
    for name, value in median.items():
        runs = ", ".join(f"{s:.2f}" for s in seconds[name])
        print(f"| {name} | {value:.2f} | {runs} |")
    print(f"| fp32 matmul bound (200 GFLOP at the measured rate) | {bound:.2f} | |")
    names = list(rows)
    lesson_loop, lesson_portable, lesson_native, portable, native = (median[n] for n in names[:5])
    print(f"default: portable / native {portable / native:.2f}x (target <= 1.15x), "
          f"portable / bound {portable / bound:.2f}x (target <= 1.3x), native / bound {native / bound:.2f}x")  # fmt: skip
    print(f"lesson's settings: lesson's loop / stage {lesson_loop / lesson_portable:.2f}x portable "
          f"(target >= 2.5x), {lesson_loop / lesson_native:.2f}x native")  # fmt: skip


def _cuda_available() -> bool:
    run = subprocess.run(
        [PYTHON, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
    )
    return run.stdout.strip() == "True"


if __name__ == "__main__":
    main()
