"""numerics.cpu and numerics.threads: what a stage process pins before its first kernel."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fashion_mnist_mlp.training.numerics import REQUIRED_FLAGS, cpu_flags, portable_unsupported

from .conftest import ROOT

X86 = portable_unsupported(REQUIRED_FLAGS) is None
TRAIN = "load_params().train.model_copy(update={})"
"""The project's train section with some changes (pinned() runs in the repository root)."""


@functools.cache
def native_capability() -> str:
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    ).stdout.strip()


def pinned(numerics: str, before: str = "", train: str = "None", processes: int = 1) -> str:
    """What a fresh process reports after pin(); `before` runs first (a kernel, say)."""
    code = textwrap.dedent(f"""
        import os, torch
        from fashion_mnist_mlp.training.numerics import pin
        from fashion_mnist_mlp.config.params import load_params
        from fashion_mnist_mlp.config.sections import Numerics
        {before}
        pin(Numerics.model_validate({numerics}), {processes}, {train})
        from fashion_mnist_mlp.training import portable_matmul
        print(torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_CBWR"),
              portable_matmul.threads(), torch.get_num_threads(),
              os.environ.get("ATEN_CPU_CAPABILITY"))
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    return result.stdout + result.stderr


def test_cpu_flags_reads_the_first_cpus_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") is None


@pytest.mark.skipif(not X86, reason="an x86-64 setting")
def test_a_cpu_without_avx2_or_fma_is_named() -> None:
    assert portable_unsupported({"sse2", "avx", "fma"}) == "this CPU lacks AVX2"
    assert portable_unsupported({"sse2"}) == "this CPU lacks AVX2 and FMA"
    assert "could not be read" in portable_unsupported(None)


@pytest.mark.skipif(not X86, reason="an x86-64 setting")
def test_portable_on_a_cpu_without_avx2_says_so_and_runs_its_own_kernels() -> None:
    out = pinned(
        "{'cpu': 'portable', 'threads': 1}",
        before="import fashion_mnist_mlp.training.numerics; fashion_mnist_mlp.training.numerics.cpu_flags = lambda: {'sse2', 'fma'}",
    )
    note = (
        "note: numerics.cpu = portable needs an x86-64 CPU with AVX2 and FMA, but this CPU "
        "lacks AVX2: running its own kernels, so the bytes hold on this machine only"
    )
    assert note in out, out
    assert out.split()[-5:] == [native_capability(), "None", "None", "1", "None"]  # nothing pinned


@pytest.mark.skipif(portable_unsupported(cpu_flags()) is not None, reason="no x86-64 AVX2 CPU")
def test_portable_pins_atens_avx2_kernels_the_openblas_products_and_their_threads() -> None:
    # the model's products on numerics.threads OpenBLAS threads, ATen's other kernels on one
    out = pinned("{'cpu': 'portable', 'threads': 2}")
    assert out.split() == ["AVX2", "COMPATIBLE", "2", "1", "avx2"], out
    # shared by the processes of a torchrun run
    assert pinned("{'cpu': 'portable', 'threads': 4}", processes=2).split()[-3:-1] == ["2", "1"]


def test_native_leaves_the_kernels_to_the_cpu() -> None:
    out = pinned("{'cpu': 'native', 'threads': 'auto'}")
    assert out.split() == [native_capability(), "None", "None", "1", "None"], out  # auto: OMP's 1


@pytest.mark.skipif(portable_unsupported(cpu_flags()) is not None, reason="no x86-64 AVX2 CPU")
def test_a_kernel_run_before_the_pin_is_refused_not_ignored() -> None:
    if native_capability() == "AVX2":
        pytest.skip("this CPU's own kernels are the AVX2 ones: nothing to refuse")
    out = pinned("{'cpu': 'portable', 'threads': 2}", before="torch.ones(3).add_(1)")
    assert "StageError: numerics.cpu = portable could not take effect" in out
    assert f"ATen already runs its {native_capability()} kernels" in out


@pytest.mark.skipif(portable_unsupported(cpu_flags()) is not None, reason="no x86-64 AVX2 CPU")
def test_the_choices_portable_does_not_cover_are_named() -> None:
    portable = "{'cpu': 'portable', 'threads': 1}"
    for changes, note in [
        ("{'optimizer': 'rmsprop'}", "note: rmsprop's update takes torch.sqrt"),
        ("{'optimizer': 'lbfgs'}", "note: lbfgs's strong-Wolfe line search takes torch.sqrt"),
        ("{'precision': 'bf16'}", "note: train.precision = bf16 runs oneDNN's bfloat16 kernels"),
    ]:
        assert note in pinned(portable, train=TRAIN.format(changes)), note
    assert "note:" not in pinned(portable, train=TRAIN.format("{}"))  # the default: adamw
    auto = pinned("{'cpu': 'portable', 'threads': 'auto'}")
    assert "note: numerics.threads = auto: the bytes depend on this machine's core count" in auto
    assert "note: numerics.threads = 64 on" in pinned("{'cpu': 'native', 'threads': 64}")
