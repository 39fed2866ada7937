from __future__ import annotations

import math

import pytest

from fashion_mnist_mlp.config.formula import FormulaError, compile_formula


@pytest.mark.parametrize(
    ("formula", "epoch", "expected"),
    [
        ("0.95 ** epoch", 3, 0.95**3),
        ("1 / (1 + epoch // 30)", 61, 1 / 3),
        ("max(0.1, cos(pi * epoch / 40))", 20, max(0.1, math.cos(math.pi / 2))),
        ("exp(-0.1 * epoch)", 5, math.exp(-0.5)),
        ("1 if epoch < 5 else 0.1", 7, 0.1),
        ("epoch > 3 and 0.5 or 1", 4, 0.5),
        ("(epoch < 2) * 0.5 + 0.5", 1, 1.0),
        ("min(1, (epoch + 1) / 5) * sqrt(abs(-4)) / 2", 1, 0.4),
        ("-epoch % 3 + 1", 1, 3.0),
    ],
)
def test_accepted_formulas_mean_what_python_would(
    formula: str, epoch: int, expected: float
) -> None:
    assert compile_formula(formula)(epoch) == pytest.approx(expected)


ATTACKS = [
    "__import__('os').system('echo pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()",
    "eval('1')",
    "exec('import os')",
    "globals()",
    "epoch.__class__",
    "(lambda: 1)()",
    "[x for x in range(10)]",
    "{'a': 1}",
    "'a' * 10",
    "f'{epoch}'",
    "math.cos(epoch)",
    "cos",
    "min(epoch, key=abs)",
    "x",
    "True",
    "epoch; import os",
    "(y := 1)",
    "10 ** 10 ** 10",
    "9" * 600,
]


@pytest.mark.parametrize("formula", ATTACKS)
def test_anything_outside_the_language_is_refused(formula: str) -> None:
    with pytest.raises(FormulaError):
        compile_formula(formula)(1)


def test_values_that_are_not_finite_are_refused() -> None:
    with pytest.raises(FormulaError, match="is inf at epoch 2"):
        compile_formula("1e300 * 1e300 * epoch")(2)
    with pytest.raises(FormulaError, match="cannot be computed at epoch 2"):
        compile_formula("1e300 ** epoch")(2)  # overflows
    with pytest.raises(FormulaError, match="cannot be computed at epoch 0"):
        compile_formula("log(epoch)")(0)


def test_a_formula_too_long_to_check_at_every_epoch_is_refused() -> None:
    """The check evaluates the formula at every epoch, up to 10,000: its size is bounded."""
    compile_formula("+".join(["cos(epoch) * exp(-epoch / 100)"] * 4))(1)  # 58 nodes
    with pytest.raises(FormulaError, match="has 73 operations, numbers and names: at most 64"):
        compile_formula("+".join(["cos(epoch) * exp(-epoch / 100)"] * 5))
