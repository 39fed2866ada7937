"""What decides the bytes a CPU run writes, pinned so that any x86-64 machine writes the same.

Three things choose a float32 run's rounding on a CPU (measured, ../shared/NOTES.md 2026-12-04):
ATen's kernels follow the CPU's widest instruction set (AVX-512 here, AVX2 elsewhere); MKL's
matrix products take a code path per CPU model, and on AMD it ignores every MKL_CBWR branch but
COMPATIBLE; and the thread count decides how reductions are split. `portable` pins all three:
ATen's AVX2 kernels, MKL's COMPATIBLE branch (the one Intel documents for identical results on
Intel and compatible CPUs), and `numerics.threads`. Both variables are read when the first
kernel runs, not when torch is imported, so a stage pins them before it computes anything.

Not covered: MKL's vector `sqrt` (torch.sqrt on float tensors) starts from the CPU's
approximate reciprocal square root, whose bits differ between CPU models under every branch;
the optimizers whose update calls it are named in SQRT_OPTIMIZERS.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from stages.cli import StageError

if TYPE_CHECKING:
    from stages.params import Numerics

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}
PORTABLE_CAPABILITY = "AVX2"
REQUIRED_FLAGS = {"avx2", "fma"}
"""What ATen's AVX2 kernels execute; ATen does not check it before it runs them."""

SQRT_OPTIMIZERS = {"nadam", "radam", "rmsprop", "adadelta"}
"""Their torch.optim update takes torch.sqrt (the fused Adam, AdamW and Adagrad kernels take
the exact instruction instead)."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of this machine's first CPU (empty where Linux does not say)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def portable_unsupported(flags: set[str]) -> str | None:
    """Why this machine cannot run the portable kernels, or None when it can."""
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return f"it is an x86-64 setting and this is {platform.machine()}"
    missing = REQUIRED_FLAGS - flags
    if missing:
        return "this CPU lacks " + " and ".join(sorted(flag.upper() for flag in missing))
    return None


def pin(numerics: Numerics, processes: int = 1, optimizer: str | None = None) -> None:
    """Make this process compute as `numerics` says, as one of `processes` that share
    numerics.threads; call it before the first tensor operation. `optimizer`: the one the
    stage trains with, if any."""
    if numerics.threads != "auto":
        torch.set_num_threads(max(1, numerics.threads // processes))
    if numerics.cpu == "native":
        return
    unsupported = portable_unsupported(cpu_flags())
    if unsupported:
        print(f"note: numerics.cpu = portable needs an x86-64 CPU with AVX2 and FMA, but "
              f"{unsupported}: running its own kernels, so the bytes hold on this machine only")  # fmt: skip
        return
    os.environ.update(PORTABLE_ENV)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PORTABLE_CAPABILITY:
        raise StageError(
            f"numerics.cpu = portable could not take effect: ATen already runs its {capability} "
            "kernels in this process (a tensor operation ran before the stage pinned them). "
            "Start the stage in a fresh process (python -m stages.<name>, or dvc repro)"
        )
    if optimizer in SQRT_OPTIMIZERS and os.environ.get("RANK", "0") == "0":
        print(f"note: {optimizer}'s update takes torch.sqrt, whose MKL kernel rounds differently "
              "on other CPU models: this run's bytes hold on this CPU model only "
              "(sgd, adam, adamw, adamax, adagrad, asgd, rprop and lbfgs are portable)")  # fmt: skip
