"""`when` conditions: a small, safe expression language over inputs, trigger and upstream nodes.

    when: "nodes.scan.output.violations > 0 and inputs.env in ['staging', 'prod']"
    when: "not nodes.check.output.clean or len(nodes.scan.output.files) >= 3"
    when: "nodes.build.status == 'failed'"

Comparisons (``== != < <= > >=``), ``and``/``or``/``not``, ``in``/``not in``, literals (strings,
numbers, ``true``/``false``/``null`` and their Python spellings, lists) and one function,
``len()``. Dotted names are paths into the run's data, not attribute access; nothing else is
allowed, and nothing is evaluated with ``eval``. The expression may be wrapped in ``{{ }}``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from typing import Any

from shared.workflow.templates import ROOTS, Ref, TemplateError, lookup

_WRAPPED = re.compile(r"^\s*\{\{(.*)\}\}\s*$", re.DOTALL)
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_COMPARE = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
MAX_LENGTH = 2000


class ExpressionError(ValueError):
    pass


def parse(expression: str) -> ast.Expression:
    """Parse and check an expression; raises ExpressionError saying what is not allowed."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("the condition is empty; write e.g. \"inputs.env == 'prod'\"")
    if len(expression) > MAX_LENGTH:
        raise ExpressionError(f"the condition is longer than {MAX_LENGTH} characters")
    m = _WRAPPED.match(expression)
    text = m.group(1) if m else expression
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"cannot read {expression!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        _check(node, expression)
    return tree


def _check(node: ast.AST, text: str) -> None:
    allowed = (
        ast.Expression,
        ast.BoolOp,
        ast.And,
        ast.Or,
        ast.UnaryOp,
        ast.Not,
        ast.USub,
        ast.Compare,
        ast.Constant,
        ast.Name,
        ast.Load,
        ast.Attribute,
        ast.Subscript,
        ast.List,
        ast.Tuple,
        ast.Call,
        *_COMPARE,
    )
    if not isinstance(node, allowed):
        raise ExpressionError(
            f"{text!r}: {type(node).__name__} is not allowed; use comparisons, and/or/not, in, literals and len()"
        )
    is_len = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len"
    if isinstance(node, ast.Call) and (not is_len or node.keywords or len(node.args) != 1):
        raise ExpressionError(f"{text!r}: the only function is len(x)")
    if isinstance(node, ast.Name) and node.id not in ROOTS and node.id not in _LITERALS and node.id != "len":
        raise ExpressionError(f"{text!r}: unknown name {node.id!r}; start paths with {', '.join(ROOTS)}")
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        raise ExpressionError(f"{text!r}: names starting with '_' are not allowed")
    if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Constant):
        raise ExpressionError(f"{text!r}: use a literal index or key in [...]")
    if isinstance(node, ast.Constant) and not isinstance(node.value, str | int | float | bool | type(None)):
        raise ExpressionError(f"{text!r}: only string, number, boolean and null literals are allowed")


def references(tree: ast.Expression, text: str) -> Iterator[Ref]:
    """The data paths the expression reads, as template references (for validation)."""
    for node in ast.walk(tree):
        path = _path(node)
        if path is not None and isinstance(getattr(node, "ctx", None), ast.Load) and not _is_inner(node, tree):
            yield Ref(text=text, root=str(path[0]), path=tuple(path[1:]))


def _is_inner(node: ast.AST, tree: ast.Expression) -> bool:
    # Only the outermost node of a path chain counts: `nodes.a.output` not also `nodes.a`.
    return any(isinstance(p, ast.Attribute | ast.Subscript) and p.value is node for p in ast.walk(tree))


def _path(node: ast.AST) -> list[str | int] | None:
    if isinstance(node, ast.Name):
        return [node.id] if node.id in ROOTS else None
    if isinstance(node, ast.Attribute):
        base = _path(node.value)
        return None if base is None else [*base, node.attr]
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        base = _path(node.value)
        return None if base is None else [*base, node.slice.value]
    return None


def evaluate(expression: str, context: Mapping[str, Any]) -> bool:
    """Evaluate to a boolean; raises ExpressionError with a plain reason on bad data."""
    tree = parse(expression)
    try:
        return bool(_eval(tree.body, context, expression))
    except TemplateError as exc:
        raise ExpressionError(str(exc)) from None
    except TypeError as exc:
        raise ExpressionError(f"{expression!r}: {exc}") from None


def _eval(node: ast.AST, ctx: Mapping[str, Any], text: str) -> Any:
    path = _path(node)
    if path is not None:
        return lookup(Ref(text=text, root=str(path[0]), path=tuple(path[1:])), ctx)
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name) if name in _LITERALS:
            return _LITERALS[name]
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            return [_eval(e, ctx, text) for e in elts]
        case ast.BoolOp(op=ast.And(), values=values):
            return all(_eval(v, ctx, text) for v in values)
        case ast.BoolOp(op=ast.Or(), values=values):
            return any(_eval(v, ctx, text) for v in values)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return not _eval(operand, ctx, text)
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_eval(operand, ctx, text)
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            current = _eval(left, ctx, text)
            for op, right_node in zip(ops, comparators, strict=True):
                right = _eval(right_node, ctx, text)
                if not _COMPARE[type(op)](current, right):
                    return False
                current = right
            return True
        case ast.Call(args=[arg]):
            value = _eval(arg, ctx, text)
            if not isinstance(value, str | list | dict):
                raise ExpressionError(f"{text!r}: len() needs a string, list or object, got {value!r}")
            return len(value)
        case ast.Subscript() | ast.Attribute():
            raise ExpressionError(f"{text!r}: indexing is only for paths under {', '.join(ROOTS)}")
    raise ExpressionError(f"{text!r}: cannot evaluate {type(node).__name__}")
