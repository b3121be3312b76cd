"""XLSForm expressions (the XPath subset of forms/expressions.py) compiled to DuckDB SQL.

Why: whether an empty required answer was relevant must be known for every row of
every page; evaluating the form's ``relevant`` in Python row by row was the slowest
part of a sync. Compiled once per form version, the same expression runs as one
vectorised SQL expression over a staging table. The semantics follow the Python
evaluator (forms/expressions.py), which stays the reference: answers are text,
an unanswered question is the empty string or NaN, a comparison with NaN is false
except ``!=``. Anything not covered raises ExpressionError; the caller decides.
"""

from __future__ import annotations

from typing import Callable

from forms.errors import ExpressionError
from forms.expressions import Node, parse

Resolver = Callable[[str], str]
"""Returns the SQL expression (text, NULL when unanswered) of a named question."""

_COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
_ARITHMETIC = {"+": "+", "-": "-", "*": "*"}


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _num(sql: str, kind: str) -> str:
    if kind == "num":
        return sql
    if kind == "bool":
        return f"(CASE WHEN {sql} THEN 1.0 ELSE 0.0 END)"
    return f"TRY_CAST(nullif(trim({sql}), '') AS DOUBLE)"


def _str(sql: str, kind: str) -> str:
    if kind == "str":
        return f"coalesce({sql}, '')"
    if kind == "bool":
        return f"(CASE WHEN {sql} THEN 'true' ELSE 'false' END)"
    return (f"(CASE WHEN {sql} IS NULL THEN 'nan' WHEN {sql} = trunc({sql}) THEN CAST(CAST({sql} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST({sql} AS VARCHAR) END)")


def _bool(sql: str, kind: str) -> str:
    if kind == "bool":
        return f"coalesce({sql}, FALSE)"
    if kind == "num":
        return f"coalesce({sql} <> 0 AND NOT isnan({sql}), FALSE)"
    return f"(coalesce({sql}, '') <> '')"


def _words(sql: str, kind: str) -> str:
    """The space-separated items of a select_multiple answer."""
    return f"list_filter(regexp_split_to_array(trim({_str(sql, kind)}), '\\s+'), lambda w: w <> '')"


class _Compiler:
    def __init__(self, expression: str, resolve: Resolver):
        self.expression = expression
        self.resolve = resolve

    def unsupported(self, what_fr: str, what_en: str) -> ExpressionError:
        return ExpressionError(f"{what_fr} : impossible à évaluer en SQL dans '{self.expression}'",
                               f"{what_en} cannot be evaluated in SQL in '{self.expression}'")

    def run(self, node: Node) -> tuple[str, str]:
        if node.kind == "literal":
            if isinstance(node.value, float):
                return f"CAST({node.value!r} AS DOUBLE)", "num"
            return sql_literal(node.value), "str"
        if node.kind == "ref":
            return self.resolve(node.value), "str"
        if node.kind == "neg":
            return f"(-{_num(*self.run(node.args[0]))})", "num"
        if node.kind == "call":
            return self.call(node)
        if node.kind != "binary":
            raise self.unsupported(f"'{node.kind}'", f"'{node.kind}'")
        op = node.value
        left, right = self.run(node.args[0]), self.run(node.args[1])
        if op in ("or", "and"):
            return f"({_bool(*left)} {op.upper()} {_bool(*right)})", "bool"
        if op in _COMPARISONS:
            return self.compare(op, left, right), "bool"
        a, b = _num(*left), _num(*right)
        if op in _ARITHMETIC:
            return f"({a} {_ARITHMETIC[op]} {b})", "num"
        if op == "div":
            return f"({a} / nullif({b}, 0))", "num"
        if op == "mod":
            return f"fmod({a}, nullif({b}, 0))", "num"
        raise self.unsupported(f"l'opérateur '{op}'", f"the operator '{op}'")

    @staticmethod
    def compare(op: str, left: tuple[str, str], right: tuple[str, str]) -> str:
        sql_op = "<>" if op == "!=" else op
        if "bool" in (left[1], right[1]):
            return f"({_bool(*left)} {sql_op} {_bool(*right)})"
        if op in ("=", "!=") and "num" not in (left[1], right[1]):
            return f"({_str(*left)} {sql_op} {_str(*right)})"
        # A missing or non-numeric side is NaN: every comparison is false but "!=".
        return f"coalesce({_num(*left)} {sql_op} {_num(*right)}, {'TRUE' if op == '!=' else 'FALSE'})"

    def call(self, node: Node) -> tuple[str, str]:
        name, args = node.value, [self.run(a) for a in node.args]
        if name == "selected" and len(args) == 2:
            return f"list_contains({_words(*args[0])}, {_str(*args[1])})", "bool"
        if name == "count-selected" and len(args) == 1:
            return f"CAST(len({_words(*args[0])}) AS DOUBLE)", "num"
        if name == "not" and len(args) == 1:
            return f"(NOT {_bool(*args[0])})", "bool"
        if name == "boolean" and len(args) == 1:
            return _bool(*args[0]), "bool"
        if name in ("true", "false") and not args:
            return name.upper(), "bool"
        if name == "string-length" and len(args) == 1:
            return f"CAST(length({_str(*args[0])}) AS DOUBLE)", "num"
        if name == "number" and len(args) == 1:
            return _num(*args[0]), "num"
        if name == "int" and len(args) == 1:
            return f"trunc({_num(*args[0])})", "num"
        if name == "string" and len(args) == 1:
            return _str(*args[0]), "str"
        if name == "concat":
            return "(" + " || ".join(_str(*a) for a in args) + ")" if args else "''", "str"
        if name == "regex" and len(args) == 2:
            return f"regexp_matches({_str(*args[0])}, {_str(*args[1])})", "bool"
        if name == "coalesce" and len(args) == 2:
            return f"coalesce(nullif({_str(*args[0])}, ''), {_str(*args[1])})", "str"
        if name == "if" and len(args) == 3:
            (a, a_kind), (b, b_kind) = args[1], args[2]
            if a_kind != b_kind:
                (a, a_kind), (b, b_kind) = (_str(a, a_kind), "str"), (_str(b, b_kind), "str")
            return f"(CASE WHEN {_bool(*args[0])} THEN {a} ELSE {b} END)", a_kind
        raise self.unsupported(f"la fonction {name}()", f"the function {name}()")


def compile_condition(expression: str, resolve: Resolver) -> str:
    """A SQL boolean expression (never NULL) that is true where ``expression`` is."""
    compiler = _Compiler(expression, resolve)
    return _bool(*compiler.run(parse(expression)))
