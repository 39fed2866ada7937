"""What decides the bytes a CPU run writes, pinned so that any x86-64 machine writes the same.

Three things choose a float32 run's rounding on a CPU: ATen's kernels follow the CPU's widest
instruction set (AVX-512 here, AVX2 elsewhere); MKL's matrix products take a code path per CPU
model, and on AMD it ignores every MKL_CBWR branch but COMPATIBLE (SSE2, 2.2x slower); and the
thread count decides how reductions and products are split. `portable` pins all three: ATen's
AVX2 kernels, the model's matrix products on OpenBLAS's Haswell kernel (portable_matmul.py),
`numerics.threads` threads for those products, and ATen's other kernels on one thread.
MKL_CBWR=COMPATIBLE still covers any product outside the model's Linear layers. The variables
are read when the first kernel runs, not when torch is imported, so a stage pins them before it
computes anything.

Not covered: MKL's vector `sqrt` (torch.sqrt on float tensors) starts from the CPU's
approximate reciprocal square root, whose bits differ between CPU models under every branch;
the optimizer table says which optimizers' steps call it (OptimizerKind.sqrt in
fashion_mnist_mlp/config/optimizers.py).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fashion_mnist_mlp.cli import StageError
from fashion_mnist_mlp.training import portable_matmul

if TYPE_CHECKING:
    from fashion_mnist_mlp.config.sections import Numerics
    from fashion_mnist_mlp.config.train import Train

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}
PORTABLE_CAPABILITY = "AVX2"
REQUIRED_FLAGS = {"avx2", "fma"}
"""What ATen's AVX2 kernels execute; ATen does not check it before it runs them."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The instruction-set flags of this machine's first CPU; None where they cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def portable_unsupported(flags: set[str] | None) -> str | None:
    """Why this machine cannot run the portable kernels, or None when it can."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return f"it is an x86-64 setting and this is {platform.machine()}"
    if flags is None:
        return "this CPU's instruction sets could not be read (/proc/cpuinfo)"
    missing = REQUIRED_FLAGS - flags
    if missing:
        return "this CPU lacks " + " and ".join(sorted(flag.upper() for flag in missing))
    return None


def in_effect() -> list[object]:
    """What this process computes with: what a resume state must match besides the params."""
    return [
        torch.get_num_threads(),
        torch.backends.cpu.get_cpu_capability(),
        os.environ.get("MKL_CBWR"),
        portable_matmul.threads(),
    ]


def pin(numerics: Numerics, processes: int = 1, train: Train | None = None) -> None:
    """Make this process compute as `numerics` says, as one of `processes` that share
    numerics.threads; call it before the first tensor operation. `train`: the settings of
    the stage's training, if it trains, whose bytes some choices tie to one CPU model."""
    notes = []
    threads = None if numerics.threads == "auto" else numerics.threads // processes
    portable_matmul.use_aten()  # until the portable kernels are known to run here
    if numerics.cpu == "portable":
        unsupported = portable_unsupported(cpu_flags())
        if unsupported:
            notes.append(
                f"numerics.cpu = portable needs an x86-64 CPU with AVX2 and FMA, but "
                f"{unsupported}: running its own kernels, so the bytes hold on this machine only"
            )
        else:
            os.environ.update(PORTABLE_ENV)
            capability = torch.backends.cpu.get_cpu_capability()
            if capability != PORTABLE_CAPABILITY:
                raise StageError(
                    f"numerics.cpu = portable could not take effect: ATen already runs its "
                    f"{capability} kernels in this process (a tensor operation ran before the "
                    "stage pinned them). Start the stage in a fresh process (python -m "
                    "fashion_mnist_mlp.stages.<name>, or dvc repro)"
                )
            notes += unportable_choices(numerics, train)
            # ATen on one thread: its pool and OpenBLAS's would spin against each other
            portable_matmul.use_openblas(threads or torch.get_num_threads())
            threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    if numerics.threads != "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if cores and numerics.threads > cores:
            notes.append(
                f"numerics.threads = {numerics.threads} on {cores} cores: the threads take turns, "
                "which is slower than one per core; the bytes depend on the count, so it is kept"
            )
    if os.environ.get("RANK", "0") == "0":
        for note in notes:
            print(f"note: {note}")


def unportable_choices(numerics: Numerics, train: Train | None) -> list[str]:
    """Settings whose bytes the portable kernels do not make the same on every CPU."""
    notes = []
    if numerics.threads == "auto":
        notes.append(
            "numerics.threads = auto: the bytes depend on this machine's core count (or "
            "OMP_NUM_THREADS); give a number for the same bytes on every CPU"
        )
    if train is None:
        return notes
    if train.sqrt_note is not None:
        notes.append(train.sqrt_note)
    if train.precision == "bf16":
        notes.append(
            "train.precision = bf16 runs oneDNN's bfloat16 kernels, which follow the CPU's "
            "instruction set: this run's bytes hold on this CPU model only"
        )
    return notes
