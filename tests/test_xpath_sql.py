"""warehouse/xpath_sql.py: XLSForm expressions compiled to SQL give what the Python
evaluator (forms/expressions.py, the reference) gives, on the same answers."""

from __future__ import annotations

import itertools

import duckdb
import pytest

from forms.errors import ExpressionError
from forms.expressions import is_true
from warehouse.xpath_sql import compile_condition, sql_literal

EXPRESSIONS = [
    "${consent} = 'yes'",
    "${consent} != 'yes'",
    "${age} >= 6 and ${age} <= 16",
    "${age} > 2 or ${consent} = 'no'",
    "${age} = 7",
    "${age} != 7",
    "selected(${activities}, 'other')",
    "not(selected(${activities}, 'avec'))",
    "count-selected(${activities}) >= 2",
    "string-length(${name}) > 3",
    "${age} + 1 > 10",
    "${age} * 2 <= 20 and ${age} mod 2 = 1",
    "${age} div 2 > 3",
    "int(${age}) = 7",
    "number(${age}) < 0",
    "-${age} < -5",
    "coalesce(${name}, 'x') = 'x'",
    "concat(${consent}, ${name}) = 'yesAwa'",
    "if(${consent} = 'yes', ${age}, 0) > 5",
    "regex(${name}, '^A')",
    "boolean(${name})",
    "true() and not(false())",
    "${missing} = ''",
]
VALUES = {
    "consent": [None, "yes", "no", ""],
    "age": [None, "7", "16", "3.5", "abc", "-8"],
    "activities": [None, "avec other", "agr", "  other  "],
    "name": [None, "Awa", "Aminata", ""],
}


def scopes():
    names = list(VALUES)
    for combination in itertools.product(*(VALUES[n] for n in names)):
        yield dict(zip(names, combination))


@pytest.fixture(scope="module")
def answers():
    """Every combination of answers as rows of a table, its columns named after the questions."""
    con = duckdb.connect()
    rows = list(scopes())
    con.execute("CREATE TABLE answers (n INTEGER, consent VARCHAR, age VARCHAR, activities VARCHAR, name VARCHAR)")
    con.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?)",
                    [(i, r["consent"], r["age"], r["activities"], r["name"]) for i, r in enumerate(rows)])
    yield con, rows
    con.close()


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_sql_agrees_with_the_python_evaluator(answers, expression: str) -> None:
    con, rows = answers
    known = set(VALUES)
    sql = compile_condition(expression, lambda name: f'"{name}"' if name in known else "CAST(NULL AS VARCHAR)")
    got = dict(con.execute(f"SELECT n, {sql} FROM answers").fetchall())
    expected = {i: is_true(expression, row.get) for i, row in enumerate(rows)}
    wrong = [(rows[i], got[i], expected[i]) for i in expected if got[i] != expected[i]]
    assert not wrong, f"{expression}: {len(wrong)} rows differ, e.g. {wrong[:3]}"
    assert None not in got.values()  # never NULL: a condition is true or false


def test_unsupported_functions_are_refused_not_guessed() -> None:
    with pytest.raises(ExpressionError, match="cannot be evaluated in SQL"):
        compile_condition("selected-at(${a}, 0) = 'x'", lambda name: "a")


def test_literals_are_quoted() -> None:
    assert sql_literal("l'eau") == "'l''eau'"
