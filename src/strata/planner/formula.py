"""Arithmetic over a plan's named figures, for checking a document's claims.

``api.together_70b.input_cost + api.together_70b.output_cost`` is evaluated
with exact decimals over the names ``cost_plan`` exposes. Only numbers, names,
+ - * / ( ), unary minus and min/max/ceil are allowed: a plan file is data, and
evaluating it must never run code.
"""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Callable
from decimal import Decimal, DivisionByZero, InvalidOperation

from strata.errors import ConfigError

_OPS: dict[type, Callable[[Decimal, Decimal], Decimal]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_FUNCS: dict[str, Callable[..., Decimal]] = {
    "min": lambda *a: min(a),
    "max": lambda *a: max(a),
    "ceil": lambda a: Decimal(math.ceil(a)),
}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def evaluate(formula: str, names: dict[str, Decimal]) -> Decimal:
    """The formula's value; ConfigError names an unknown name or a bad construct."""
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError:
        raise ConfigError(f"formula {formula!r}: not an arithmetic expression") from None
    try:
        return _eval(tree.body, names, formula)
    except (DivisionByZero, InvalidOperation, ZeroDivisionError):
        raise ConfigError(f"formula {formula!r}: division by zero") from None


def _eval(node: ast.expr, names: dict[str, Decimal], formula: str) -> Decimal:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ConfigError(f"formula {formula!r}: booleans are not numbers")
        return Decimal(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left, names, formula), _eval(node.right, names, formula)
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand, names, formula)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = _FUNCS.get(node.func.id)
        if fn is not None and node.args:
            return fn(*(_eval(a, names, formula) for a in node.args))
    name = _name(node)
    if name is not None:
        if name in names:
            return names[name]
        close = difflib.get_close_matches(name, list(names), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"formula {formula!r}: unknown name {name!r}{hint}")
    raise ConfigError(
        f"formula {formula!r}: only numbers, names, + - * / and min/max/ceil are allowed"
    )
