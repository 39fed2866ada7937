"""The model's matrix products on one fixed kernel: OpenBLAS's Haswell sgemm, on any x86-64 CPU.

MKL picks its matrix-product code by CPU model, and its one branch that gives the same bits on
Intel and AMD (MKL_CBWR=COMPATIBLE) is SSE2, 2.2x slower here. OpenBLAS takes its kernel from
OPENBLAS_CORETYPE: pinned to Haswell (AVX2 + FMA), every such CPU runs the same instructions in
the same order. Its blocking does not follow the cache size (OPENBLAS_L2_SIZE 64 to 4096 KiB
gave the same bits); how its threads share a product, and so the bits, depends on the shape and
the thread count alone (tests/test_portable_matmul.py).

The library is scipy-openblas32, the 32-bit-index build of the OpenBLAS that SciPy and NumPy
wheels bundle, pinned in uv.lock; this module loads it itself, with its kernel chosen, so
NumPy's copy and the user's OPENBLAS_* settings are left alone. ATen runs on one thread beside
its workers: two pools spinning on the same cores took 5x as long an epoch.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from fashion_mnist_mlp.cli import StageError

CORETYPE = "Haswell"
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
MAX_THREADS = 64  # scipy-openblas32's build (MAX_THREADS=64 in its config)
# 2^20 cycles (about 0.4 ms) of spinning before a worker sleeps: it bridges the gaps between one
# step's products, and sleeps through the rest (OpenBLAS's default, 2^28, spins for 0.1 s)
_LOAD_ENV = {"OPENBLAS_CORETYPE": CORETYPE, "OPENBLAS_THREAD_TIMEOUT": "20"}
# Products summing fewer terms run on one thread: OpenBLAS's split of a 512x10 by 10x512
# product took 0.28 ms on two threads against 0.08 ms on one
_THREADED_MIN_K = 32


class _OpenBLAS:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.lib = _load_library()
        self.lib.scipy_openblas_set_num_threads(threads)
        sgemm = self.lib.scipy_cblas_sgemm
        i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
        sgemm.restype = None
        self.sgemm = sgemm

    def mm(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, beta: float) -> torch.Tensor:
        """out = a @ b + beta * out, for 2-D float32 CPU tensors; `out` contiguous."""
        (m, k), n = a.shape, b.shape[1]
        if m == 0 or n == 0:
            return out
        self._run_on(self.threads if k >= _THREADED_MIN_K else 1)
        a, trans_a, lda = _operand(a)
        b, trans_b, ldb = _operand(b)
        self.sgemm(
            _ROW_MAJOR, trans_a, trans_b, m, n, k, 1.0,
            a.data_ptr(), lda, b.data_ptr(), ldb, beta, out.data_ptr(), max(1, n),
        )  # fmt: skip
        return out

    def _run_on(self, threads: int) -> None:
        """How a product is split is part of its bits: a function of its shape alone. Asked of
        the library each time, as the count is the library's, not this object's."""
        if threads != self.running:
            self.lib.scipy_openblas_set_num_threads(threads)

    @property
    def running(self) -> int:
        return self.lib.scipy_openblas_get_num_threads()


def _load_library() -> ctypes.CDLL:
    """Load OpenBLAS with the Haswell kernel. It reads its settings once, when first loaded:
    they are set for that moment and put back after (at a stage's start, before any other
    thread runs)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        raise StageError(
            "numerics.cpu = portable runs the model's products on scipy-openblas32, which is not "
            "installed: run `uv sync` (or `make setup`), or set numerics.cpu = native"
        )
    # not `import scipy_openblas32`: importing it loads the library before the settings are set
    path = Path(spec.submodule_search_locations[0]) / "lib" / "libscipy_openblas.so"
    saved = {key: os.environ.get(key) for key in _LOAD_ENV}
    os.environ.update(_LOAD_ENV)
    try:
        lib = ctypes.CDLL(str(path))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
    core = lib.scipy_openblas_get_corename().decode()
    if core != CORETYPE:
        raise StageError(
            f"numerics.cpu = portable needs OpenBLAS's {CORETYPE} kernel, but scipy-openblas32 "
            f"was loaded in this process before the stage pinned it, and runs its {core} kernel "
            "(`import scipy_openblas32` loads it). Start the stage in a fresh process (python -m "
            "fashion_mnist_mlp.stages.<name>, or dvc repro), or set numerics.cpu = native"
        )
    return lib


def _operand(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """`x` as BLAS reads it: the tensor, whether it is stored transposed, its leading dimension."""
    rows, cols = x.shape
    if x.stride(1) == 1 and x.stride(0) >= max(1, cols):
        return x, _NO_TRANS, x.stride(0)
    if x.stride(0) == 1 and x.stride(1) >= max(1, rows):
        return x, _TRANS, x.stride(1)
    x = x.contiguous()
    return x, _NO_TRANS, max(1, cols)


_blas: _OpenBLAS | None = None


def use_openblas(threads: int) -> None:
    """Route every Linear's float32 CPU products through OpenBLAS's Haswell kernel, on
    `threads` threads (64 at most: this build's limit), from now on in this process."""
    global _blas
    _blas = _OpenBLAS(min(threads, MAX_THREADS))


def use_aten() -> None:
    """Give every Linear's products back to ATen (nn.Linear's own path)."""
    global _blas
    _blas = None


def threads() -> int | None:
    """OpenBLAS's thread count in this process; None where the model's products are ATen's."""
    return None if _blas is None else _blas.threads


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = _empty(x.shape[0], weight.shape[0])
        if bias is None:
            return _blas.mm(x, weight.t(), out, beta=0.0)
        # a copy, never bias.expand(...).contiguous(): for one row that is the bias itself
        return _blas.mm(x, weight.t(), out.copy_(bias), beta=1.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _blas.mm(grad, weight, _empty(*x.shape), beta=0.0)
        if ctx.needs_input_grad[1]:
            grad_w = _blas.mm(grad.t(), x, _empty(*weight.shape), beta=0.0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def _empty(rows: int, cols: int) -> torch.Tensor:
    """Room for a float32 product (whatever torch's default dtype is)."""
    return torch.empty(rows, cols, dtype=torch.float32)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) whose float32 CPU products take the fixed
    kernel once `use_openblas` was called; everything else is nn.Linear's own path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            _blas is None
            or x.dim() != 2
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or self.weight.dtype != torch.float32
            or (self.bias is not None and self.bias.dtype != torch.float32)
            or torch.is_autocast_enabled("cpu")
        ):
            return F.linear(x, self.weight, self.bias)
        return _LinearFunction.apply(x, self.weight, self.bias)
