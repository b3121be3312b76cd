"""A small evaluator for the XPath subset that XLSForms use in relevant, constraint,
required and choice_filter columns.

Why our own: the test-data generator must answer only the questions Collect would
show, and validation must know whether an empty required answer was relevant. Both
need to evaluate the form's own expressions in Python, row by row. Supported:
``${name}``, ``.``, numbers, strings, ``= != < <= > >=``, ``+ - * div mod``,
``and or``, parentheses and the functions in FUNCTIONS. Anything else raises
ExpressionError, so an unsupported form is reported, never silently misread.

Dates are ISO strings (``2026-06-01``, or with a time for dateTime answers), as in
KoboToolbox JSON; ``today()`` and ``date('2020-01-01')`` return such strings, and a
comparison of two of them compares the moments they stand for, as XPath does.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from forms.errors import ExpressionError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<ref>\$\{[A-Za-z_][\w.\-]*\})
      | (?P<num>\d+(?:\.\d+)?|\.\d+)
      | (?P<str>'[^']*'|"[^"]*")
      | (?P<op>!=|<=|>=|=|<|>|\+|-|\*|\(|\)|,)
      | (?P<name>[A-Za-z_][\w\-]*(?::[\w\-]+)?)
      | (?P<dot>\.)
    )""",
    re.VERBOSE,
)

Resolver = Callable[[str], Any]
"""Returns the current answer (a string, or None when unanswered) of a named question."""


@dataclass(frozen=True)
class Node:
    kind: str
    value: Any = None
    args: tuple["Node", ...] = ()


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ExpressionError(f"expression illisible près de '{text[pos:pos + 20]}'",
                                  f"cannot read the expression near '{text[pos:pos + 20]}'")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


class _Parser:
    """Recursive descent, lowest precedence first: or, and, comparison, additive, multiplicative."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ExpressionError(f"l'expression '{self.text}' s'arrête trop tôt",
                                  f"the expression '{self.text}' ends too early")
        self.pos += 1
        return token

    def expect(self, op: str) -> None:
        kind, value = self.take()
        if value != op:
            raise ExpressionError(f"'{op}' attendu mais '{value}' trouvé dans '{self.text}'",
                                  f"expected '{op}' but found '{value}' in '{self.text}'")

    def parse(self) -> Node:
        node = self.binary(0)
        if self.peek() is not None:
            raise ExpressionError(f"'{self.peek()[1]}' inattendu dans '{self.text}'",
                                  f"unexpected '{self.peek()[1]}' in '{self.text}'")
        return node

    LEVELS = (("or",), ("and",), ("=", "!=", "<", "<=", ">", ">="), ("+", "-"), ("*", "div", "mod"))

    def binary(self, level: int) -> Node:
        if level == len(self.LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while (token := self.peek()) is not None and token[1] in self.LEVELS[level] and token[0] in ("op", "name"):
            self.take()
            node = Node("binary", token[1], (node, self.binary(level + 1)))
        return node

    def unary(self) -> Node:
        token = self.peek()
        if token is not None and token[1] == "-":
            self.take()
            return Node("neg", None, (self.unary(),))
        return self.primary()

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "ref":
            return Node("ref", value[2:-1])
        if kind == "num":
            return Node("literal", float(value))
        if kind == "str":
            return Node("literal", value[1:-1])
        if kind == "dot":
            return Node("self")
        if value == "(":
            node = self.binary(0)
            self.expect(")")
            return node
        if kind == "name":
            if self.peek() is not None and self.peek()[1] == "(":
                self.take()
                args: list[Node] = []
                if self.peek() is not None and self.peek()[1] != ")":
                    args.append(self.binary(0))
                    while self.peek() is not None and self.peek()[1] == ",":
                        self.take()
                        args.append(self.binary(0))
                self.expect(")")
                if value not in FUNCTIONS:
                    raise ExpressionError(f"la fonction {value}() n'est pas prise en charge dans '{self.text}'",
                                          f"the function {value}() is not supported in '{self.text}'")
                return Node("call", value, tuple(args))
            # A bare name is a column of a choice list (in choice_filter expressions).
            return Node("name", value)
        raise ExpressionError(f"'{value}' inattendu dans '{self.text}'", f"unexpected '{value}' in '{self.text}'")


@lru_cache(maxsize=4096)
def parse(text: str) -> Node:
    """Parses an expression once; the tree is cached because forms reuse a few expressions."""
    return _Parser(text).parse()


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return not math.isnan(value) and value != 0
    return _string(value) != ""


_ISO_DATE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?)?\s*$")
_EPOCH = dt.datetime(1970, 1, 1)


def _days(value: Any) -> float:
    """An ISO date or date and time as days since 1970-01-01 (times in UTC), as XPath
    turns dates into numbers; NaN when it is not one."""
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        return math.nan
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return math.nan
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return (moment - _EPOCH) / dt.timedelta(days=1)


def today() -> dt.date:
    """The date of today()'s answer: UTC, which is Mali's time all year (no summer time)."""
    return dt.datetime.now(dt.timezone.utc).date()


def _date(value: Any) -> str:
    """XPath date(): an ISO date string, or a number of days since 1970-01-01; '' otherwise."""
    if isinstance(value, float):
        return "" if math.isnan(value) else (_EPOCH + dt.timedelta(days=math.floor(value))).date().isoformat()
    text = _string(value).strip()
    return text[:10] if not math.isnan(_days(text)) else ""


def _compare(op: str, left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        left, right = _boolean(left), _boolean(right)
    elif not math.isnan(left_days := _days(left)) and not math.isnan(right_days := _days(right)):
        left, right = left_days, right_days
    elif op in ("=", "!=") and not isinstance(left, float) and not isinstance(right, float):
        left, right = _string(left), _string(right)
    else:
        left, right = _number(left), _number(right)
        if math.isnan(left) or math.isnan(right):
            return op == "!="
    return {
        "=": left == right, "!=": left != right, "<": left < right,
        "<=": left <= right, ">": left > right, ">=": left >= right,
    }[op]


def _selected(values: Any, choice: Any) -> bool:
    return _string(choice) in _string(values).split()


def _regex(value: Any, pattern: Any) -> bool:
    return re.search(_string(pattern), _string(value)) is not None


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "selected": _selected,
    "not": lambda value: not _boolean(value),
    "regex": _regex,
    "string-length": lambda value: float(len(_string(value))),
    "count-selected": lambda value: float(len(_string(value).split())),
    "selected-at": lambda value, index: (_string(value).split() + [""] * 99)[int(_number(index))],
    "number": _number,
    "int": lambda value: float(math.trunc(_number(value))) if not math.isnan(_number(value)) else math.nan,
    "string": _string,
    "concat": lambda *values: "".join(_string(v) for v in values),
    "true": lambda: True,
    "false": lambda: False,
    "boolean": _boolean,
    "coalesce": lambda a, b: a if _string(a) != "" else b,
    "if": lambda condition, a, b: a if _boolean(condition) else b,
    "today": lambda: today().isoformat(),
    "date": _date,
}


def evaluate(expression: str, resolve: Resolver, current: Any = None, choice: dict | None = None) -> Any:
    """Evaluates ``expression``; ``current`` is the value of ``.``, ``choice`` the choice row
    that bare names refer to (choice_filter)."""

    def run(node: Node) -> Any:
        if node.kind == "literal":
            return node.value
        if node.kind == "ref":
            return resolve(node.value)
        if node.kind == "self":
            return current
        if node.kind == "name":
            if choice is None:
                raise ExpressionError(f"'{node.value}' n'est pas une référence à une question dans '{expression}'",
                                      f"'{node.value}' is not a question reference in '{expression}'")
            return choice.get(node.value)
        if node.kind == "neg":
            return -_number(run(node.args[0]))
        if node.kind == "call":
            return FUNCTIONS[node.value](*(run(arg) for arg in node.args))
        op = node.value
        if op == "or":
            return _boolean(run(node.args[0])) or _boolean(run(node.args[1]))
        if op == "and":
            return _boolean(run(node.args[0])) and _boolean(run(node.args[1]))
        left, right = run(node.args[0]), run(node.args[1])
        if op in ("=", "!=", "<", "<=", ">", ">="):
            return _compare(op, left, right)
        a, b = _number(left), _number(right)
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "div":
            return a / b if b else math.nan
        return math.fmod(a, b) if b else math.nan

    return run(parse(expression))


def is_true(expression: str | None, resolve: Resolver, current: Any = None, choice: dict | None = None) -> bool:
    """An absent expression is true, as in XLSForm (no relevant: always shown)."""
    if not expression:
        return True
    return _boolean(evaluate(expression, resolve, current, choice))


def references(expression: str | None) -> list[str]:
    """The question names an expression refers to with ${...}."""
    if not expression:
        return []
    return [value[2:-1] for kind, value in _tokenize(expression) if kind == "ref"]


_RANGE_PART = re.compile(r"^\s*\.\s*(>=|<=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
_DATE_PART = re.compile(
    r"""^\s*\.\s*(>=|<=|>|<)\s*(today\(\s*\)|date\(\s*(?:'(\d{4}-\d{2}-\d{2})'|"(\d{4}-\d{2}-\d{2})")\s*\))\s*$""")


class _Today:
    """The bound ``today()`` in date_bounds: a marker, read as a date only when checking
    (see bound_date), so that a schema built once does not keep the day it was built."""

    def __repr__(self) -> str:
        return "TODAY"


TODAY = _Today()


def bound_date(bound: dt.date | _Today) -> dt.date:
    """The date a bound of date_bounds stands for now."""
    return today() if bound is TODAY else bound


def _bounds(constraint: str | None, part: re.Pattern[str], read: Callable[[re.Match[str]], Any]) -> tuple | None:
    """Reads ``. >= a and . <= b`` style constraints as (low, high, low_inclusive,
    high_inclusive), each bound read by ``read`` from a ``part`` match; None when the
    constraint is anything else."""
    if not constraint:
        return None
    low = high = None
    low_inclusive = high_inclusive = True
    for text in re.split(r"\s+and\s+", constraint.strip()):
        match = part.match(text)
        if not match:
            return None
        op, bound = match.group(1), read(match)
        if bound is None:
            return None
        if op in (">=", ">"):
            low, low_inclusive = bound, op == ">="
        else:
            high, high_inclusive = bound, op == "<="
    return low, high, low_inclusive, high_inclusive


def numeric_bounds(constraint: str | None) -> tuple[float | None, float | None, bool, bool] | None:
    """Numeric ranges (``. >= 0 and . <= 110``), so validation can check whole columns at once."""
    return _bounds(constraint, _RANGE_PART, lambda match: float(match.group(2)))


def _date_literal(match: re.Match[str]) -> dt.date | _Today | None:
    if match.group(2).startswith("today"):
        return TODAY
    try:
        return dt.date.fromisoformat(match.group(3) or match.group(4))
    except ValueError:
        return None


def date_bounds(constraint: str | None) -> tuple[dt.date | _Today | None, dt.date | _Today | None, bool, bool] | None:
    """Date ranges against literals and today() (``. >= date('2020-01-01') and . <= today()``);
    a bound is a date or TODAY. Comparisons with other answers (``. > ${start_date}``) give None."""
    return _bounds(constraint, _DATE_PART, _date_literal)
