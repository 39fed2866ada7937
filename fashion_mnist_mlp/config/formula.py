"""A safe evaluator for the learning-rate formulas params.yaml may hold (`0.95 ** epoch`).

The formula is parsed with `ast` and only a small arithmetic language is evaluated: numbers,
the variable `epoch`, + - * / // % **, comparisons, `and`/`or`/`not`, `a if c else b`, and the
functions and constants in FUNCTIONS. Everything is computed in floats, so `10 ** 10 ** 10`
overflows at once instead of building a huge integer. Nothing is ever passed to `eval`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_LENGTH = 500
MAX_NODES = 64
"""Operations, numbers and names in one formula: the check evaluates it at every epoch of the
run (up to train.MAX_EPOCHS), and each node costs a Python call there."""
MAX_POWER = 1e6
"""Powers beyond this magnitude only overflow or vanish; refusing them keeps evaluation cheap."""

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs,
    "cos": math.cos, "sin": math.sin, "tanh": math.tanh, "exp": math.exp, "log": math.log,
    "sqrt": math.sqrt, "floor": math.floor, "ceil": math.ceil,
}  # fmt: skip
CONSTANTS = {"pi": math.pi, "e": math.e}
VARIABLE = "epoch"

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}  # fmt: skip
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}  # fmt: skip
ALLOWED = (
    f"numbers, '{VARIABLE}', + - * / // % **, comparisons, and/or/not, 'a if c else b', "
    f"{', '.join(CONSTANTS)} and {', '.join(f'{f}()' for f in FUNCTIONS)}"
)


class FormulaError(ValueError):
    pass


def parse(formula: str) -> ast.Expression:
    """The formula's syntax tree, once every node in it has been checked against the language."""
    if len(formula) > MAX_LENGTH:
        raise FormulaError(f"is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as e:
        raise FormulaError(f"is not a valid expression ({e.msg})") from None
    nodes = sum(not isinstance(n, ast.expr_context) for n in ast.walk(tree.body))
    if nodes > MAX_NODES:
        raise FormulaError(f"has {nodes} operations, numbers and names: at most {MAX_NODES}")
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        _check(node)
        if isinstance(node, ast.Name) and node.id in FUNCTIONS and id(node) not in called:
            raise FormulaError(f"uses the function '{node.id}' without calling it")
    return tree


def _check(node: ast.AST) -> None:
    allowed_kinds = (
        ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call,
        ast.Name, ast.Constant, ast.Load, ast.And, ast.Or, *_BINARY, *_UNARY, *_COMPARE,
    )  # fmt: skip
    if not isinstance(node, allowed_kinds):
        raise FormulaError(f"uses {type(node).__name__}, which is not allowed (allowed: {ALLOWED})")
    if isinstance(node, ast.Constant) and (
        isinstance(node.value, bool) or not isinstance(node.value, int | float)
    ):
        raise FormulaError(f"uses the constant {node.value!r}: only numbers are allowed")
    if isinstance(node, ast.Name) and node.id not in (VARIABLE, *CONSTANTS, *FUNCTIONS):
        raise FormulaError(f"uses the name '{node.id}' (allowed: {ALLOWED})")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise FormulaError(f"calls '{called}', which is not one of {', '.join(FUNCTIONS)}")
        if node.keywords or not node.args:
            raise FormulaError(f"calls {node.func.id}() with keywords or no arguments")


def evaluate(tree: ast.Expression, epoch: float) -> float:
    """The formula's value at `epoch`; FormulaError if it is not a finite number."""
    try:
        value = float(_eval(tree.body, float(epoch)))
    except (ArithmeticError, ValueError, TypeError) as e:
        raise FormulaError(f"cannot be computed at epoch {epoch:g} ({e})") from None
    if not math.isfinite(value):
        raise FormulaError(f"is {value} at epoch {epoch:g}")
    return value


def _eval(node: ast.AST, epoch: float) -> float | bool:
    match node:
        case ast.Constant(value=value):
            return float(value)
        case ast.Name(id=name) if name == VARIABLE:
            return epoch
        case ast.Name(id=name) if name in CONSTANTS:
            return CONSTANTS[name]
        case ast.BinOp(left=left, op=op, right=right):
            a, b = float(_eval(left, epoch)), float(_eval(right, epoch))
            if isinstance(op, ast.Pow) and abs(b) > MAX_POWER:
                raise OverflowError(f"a power of {b:g}")
            return _BINARY[type(op)](a, b)
        case ast.UnaryOp(op=op, operand=operand):
            return _UNARY[type(op)](_eval(operand, epoch))
        case ast.BoolOp(op=op, values=[first, *rest]):
            # Python's meaning: `and` gives the first false value, `or` the first true one
            value = _eval(first, epoch)
            for v in rest:
                if bool(value) != isinstance(op, ast.And):
                    break
                value = _eval(v, epoch)
            return value
        case ast.Compare(left=left, ops=ops, comparators=rights):
            values = [_eval(left, epoch), *(_eval(r, epoch) for r in rights)]
            return all(
                _COMPARE[type(op)](a, b)
                for op, a, b in zip(ops, values[:-1], values[1:], strict=True)
            )
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval(body, epoch) if _eval(test, epoch) else _eval(orelse, epoch)
        case ast.Call(func=ast.Name(id=name), args=args):
            return FUNCTIONS[name](*(float(_eval(a, epoch)) for a in args))
    raise FormulaError(f"uses {ast.unparse(node)!r} as a value (allowed: {ALLOWED})")


def compile_formula(formula: str) -> Callable[[float], float]:
    tree = parse(formula)
    return lambda epoch: evaluate(tree, epoch)
