"""The model's products on OpenBLAS's Haswell kernel: right, differentiable, and with bits that
neither the cache size, the user's OpenBLAS settings nor a rerun change."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from fashion_mnist_mlp.training import portable_matmul
from fashion_mnist_mlp.training.numerics import cpu_flags, portable_unsupported

from .conftest import ROOT

pytestmark = pytest.mark.skipif(
    portable_unsupported(cpu_flags()) is not None, reason="needs an x86-64 CPU with AVX2 and FMA"
)


@pytest.fixture
def openblas(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenBLAS's products for this test only; the rest of this process keeps ATen's."""
    monkeypatch.setattr(portable_matmul, "_blas", portable_matmul._OpenBLAS(2))


def layouts(rows: int, cols: int) -> list[torch.Tensor]:
    """The same matrix stored row-major, transposed, and as a strided slice of a wider one."""
    x = torch.randn(rows, cols)
    wide = torch.zeros(rows, cols + 3)
    wide[:, :cols] = x
    return [x, x.t().contiguous().t(), wide[:, :cols]]


@pytest.mark.parametrize(
    ("m", "k", "n"), [(512, 784, 512), (64, 512, 10), (7, 13, 5), (1, 10, 512), (0, 5, 3)]
)
def test_a_product_in_every_layout_matches_float64(openblas: None, m: int, k: int, n: int) -> None:
    torch.manual_seed(0)
    for a in layouts(m, k):
        for b in layouts(k, n):
            out = portable_matmul._blas.mm(a, b, torch.empty(m, n), beta=0.0)
            expected = a.double() @ b.double()
            assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-4 * max(1, k) ** 0.5)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gives_nn_linears_outputs_and_gradients(openblas: None, bias: bool) -> None:
    torch.manual_seed(0)
    layer = portable_matmul.Linear(784, 512, bias=bias)
    x = torch.randn(96, 784, requires_grad=True)
    grad = torch.randn(96, 512)
    out = layer(x)
    out.backward(grad)
    ours = [out, x.grad, *(p.grad for p in layer.parameters())]
    x.grad = None
    layer.zero_grad()
    reference = F.linear(x, layer.weight, layer.bias)
    reference.backward(grad)
    theirs = [reference, x.grad, *(p.grad for p in layer.parameters())]
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_linear_takes_nn_linears_path_where_openblas_is_not_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(portable_matmul, "_blas", None)
    layer = portable_matmul.Linear(8, 4)
    assert layer(torch.ones(2, 8)).grad_fn.name() == "AddmmBackward0"
    monkeypatch.setattr(portable_matmul, "_blas", portable_matmul._OpenBLAS(1))
    assert layer(torch.ones(2, 8)).grad_fn.name() == "_LinearFunctionBackward"
    double = portable_matmul.Linear(8, 4).double()
    assert double(torch.ones(2, 8, dtype=torch.float64)).grad_fn.name() == "AddmmBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.ones(2, 8)).dtype == torch.bfloat16  # ATen's, autocast


PRODUCTS = textwrap.dedent("""
    import hashlib, os, torch
    from fashion_mnist_mlp.training import portable_matmul
    blas = portable_matmul._OpenBLAS(2)
    torch.manual_seed(0)
    digest = hashlib.sha256()
    for m, k, n in [(512, 784, 512), (512, 512, 10), (512, 10, 512), (64, 784, 512), (10, 64, 512)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        digest.update(blas.mm(a, b, torch.empty(m, n), 0.0).numpy().tobytes())
        digest.update(blas.mm(a, b.t().contiguous().t(), torch.empty(m, n), 0.0).numpy().tobytes())
    print(blas.lib.scipy_openblas_get_corename().decode(), os.environ.get("OPENBLAS_CORETYPE"),
          digest.hexdigest())
""")


def products(**env: str) -> list[str]:
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", PRODUCTS], env={**base, **env}, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_the_bits_follow_neither_the_cache_size_nor_the_users_openblas_settings() -> None:
    core, preset, digest = products()
    assert (core, preset) == ("Haswell", "None")
    # the user's settings stay theirs (NumPy's copy reads them), and do not reach ours
    for env in [{"OPENBLAS_L2_SIZE": "64"}, {"OPENBLAS_L2_SIZE": "4096"}]:
        assert products(**env) == ["Haswell", "None", digest], env
    for coretype in ["SkylakeX", "Zen", "Haswell"]:
        assert products(OPENBLAS_CORETYPE=coretype) == ["Haswell", coretype, digest], coretype
    assert products(OPENBLAS_NUM_THREADS="1") == ["Haswell", "None", digest]


def test_a_small_sum_runs_on_one_thread_and_the_split_is_kept_per_shape(openblas: None) -> None:
    blas = portable_matmul._blas
    torch.manual_seed(0)
    a, b = torch.randn(512, 10), torch.randn(10, 512)
    first = blas.mm(a, b, torch.empty(512, 512), 0.0)
    assert blas.running == 1
    big = torch.randn(512, 512)
    blas.mm(big, big, torch.empty(512, 512), 0.0)
    assert blas.running == 2
    again = blas.mm(a, b, torch.empty(512, 512), 0.0)
    assert (
        hashlib.sha256(first.numpy().tobytes()).digest()
        == hashlib.sha256(again.numpy().tobytes()).digest()
    )


@pytest.mark.parametrize("rows", [0, 1, 2])
def test_a_batch_of_any_size_leaves_the_parameters_alone(openblas: None, rows: int) -> None:
    # for one row, bias.expand(...).contiguous() is the bias itself: the product must not land there
    torch.manual_seed(0)
    layer = portable_matmul.Linear(4, 3)
    before = {name: p.clone() for name, p in layer.named_parameters()}
    x = torch.randn(rows, 4)
    first, second = layer(x), layer(x)
    assert torch.equal(first, second)
    assert torch.allclose(first, F.linear(x, layer.weight, layer.bias), atol=1e-6)
    for name, p in layer.named_parameters():
        assert torch.equal(p, before[name]), name
    assert rows == 0 or first.data_ptr() != layer.bias.data_ptr()


def test_the_products_are_float32_whatever_the_default_dtype(openblas: None) -> None:
    layer = portable_matmul.Linear(4, 3, bias=False)
    x = torch.randn(2, 4, requires_grad=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = layer(x)
        out.sum().backward()
    finally:
        torch.set_default_dtype(previous)
    assert out.dtype == x.grad.dtype == layer.weight.grad.dtype == torch.float32
    assert torch.allclose(out, x.detach() @ layer.weight.detach().t(), atol=1e-6)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
    )


def test_a_later_native_pin_gives_the_products_back_to_aten() -> None:
    run = run_python("""
        from fashion_mnist_mlp.config.sections import Numerics
        from fashion_mnist_mlp.training import portable_matmul
        from fashion_mnist_mlp.training.numerics import pin
        pin(Numerics(cpu="portable", threads=2))
        print(portable_matmul.threads())
        pin(Numerics(cpu="native", threads=2))
        print(portable_matmul.threads())
    """)
    assert run.stdout.split() == ["2", "None"], run.stdout + run.stderr


def test_an_openblas_loaded_before_the_pin_is_refused_with_the_way_out() -> None:
    run = run_python("""
        import scipy_openblas32, ctypes
        from fashion_mnist_mlp.training import portable_matmul
        lib = scipy_openblas32.dll
        lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
        print(lib.scipy_openblas_get_corename().decode())
        try:
            portable_matmul.use_openblas(2)
        except Exception as e:
            print(f"{type(e).__name__}: {e}")
    """)
    own_core, _, message = run.stdout.partition("\n")
    if own_core == portable_matmul.CORETYPE:
        pytest.skip("this CPU's own OpenBLAS kernel is the Haswell one: nothing to refuse")
    assert message.startswith(
        "StageError: numerics.cpu = portable needs OpenBLAS's Haswell kernel"
    ), run.stdout + run.stderr
    assert (
        f"runs its {own_core} kernel" in message and "Start the stage in a fresh process" in message
    )
