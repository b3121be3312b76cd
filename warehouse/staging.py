"""Typed staging in SQL: KoboToolbox submissions (JSON, answers as text) -> one typed
table per form table, generated from the field dictionary.

Why SQL: typing every answer of every submission in Python was most of a sync's
time. Here a batch of submissions (the temp table ``batch_docs``: root_uuid,
submission_id, doc) is typed by DuckDB in a few statements per table, whatever the
number of rows. A value that cannot be cast is never dropped silently: its column
stays empty, its raw text stays beside it (``__raw__<column>``), and a ``type``
issue keeps it (contract 3). For required questions whose relevance depends on other
answers, the form's ``relevant`` is compiled to SQL (warehouse/xpath_sql.py) and
kept as a hidden ``__relevant__<column>`` flag that validation reads.

Each table's stage is ``stage__<table>``; a repeat's entries are unnested
(``items__<table>``) from the text of its list its parent's stage kept, keyed by
root_uuid and a row_key of positions ("2", "2.1" for a nested repeat).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from forms.dictionary import Field, FieldDictionary, Table
from forms.errors import ExpressionError
from warehouse.store import quote
from warehouse.typing import RELEVANT_PREFIX, TYPE_WORDS, Issue, label_of
from warehouse.xpath_sql import compile_condition, sql_literal

log = logging.getLogger(__name__)
RAW_PREFIX = "__raw__"
GEO_PREFIX = "__geo__"
CHOSEN_PREFIX = "__chosen__"  # a select_multiple's answer as a list of choice names, split once
REPEAT_PREFIX = "__repeat__"  # a repeat's entries as the JSON text of a list, in its parent's stage
BATCH_DOCS = "batch_docs"
PANDAS_DTYPES = {"BIGINT": "Int64", "DOUBLE": "Float64", "VARCHAR": "string", "BOOLEAN": "boolean"}
# The form version uid: older KoboToolbox submissions may carry it as _version_ or
# _version__001 instead (kobo-api.md §4; the landing reads the same keys, land_raw.sql).
VERSION_PATHS = ("$.__version__", "$._version_", "$._version__001")
MAIN_SYSTEM_KEYS = {  # column: JSON paths of the submission's metadata, the first present taken
    "uuid": ("$._uuid",), "form_version": VERSION_PATHS, "submission_time": ("$._submission_time",),
    "submitted_by": ("$._submitted_by",), "validation_status": ("$._validation_status.uid",),
}
CASTABLE = {"integer", "decimal", "range", "date", "today", "dateTime", "start", "end", "time", "geopoint"}


def json_path(key: str) -> str:
    """A JSONPath to a top-level key (KoboToolbox keys hold slashes: 'group/question')."""
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_list(text: str) -> str:
    """SQL: the text (of a repeat's entries) is a JSON list."""
    return f"starts_with({text}, '[') AND json_valid({text})"


def stage_name(table: str) -> str:
    return f"stage__{table}"


def items_name(table: str) -> str:
    return f"items__{table}"


def _typed(f: Field, raw: str) -> list[tuple[str, str]]:
    """(column, SQL expression) of the columns a field fills, from its raw text ``raw``."""
    kind = f.xlsform_type
    if kind == "integer":
        number = f"TRY_CAST({raw} AS DOUBLE)"
        return [(f.column, f"TRY_CAST(CASE WHEN {number} = trunc({number}) THEN {number} END AS BIGINT)")]
    if kind in ("decimal", "range"):  # 'NaN' and 'Infinity' read as numbers, and are not answers
        number = f"TRY_CAST({raw} AS DOUBLE)"
        return [(f.column, f"CASE WHEN isfinite({number}) THEN {number} END")]
    if kind in ("date", "today"):
        return [(f.column, f"TRY_CAST(left({raw}, 10) AS DATE)")]
    if kind in ("dateTime", "start", "end"):
        return [(f.column, f"TRY_CAST({raw} AS TIMESTAMPTZ)")]
    if kind == "time":
        return [(f.column, f"TRY_CAST({raw} AS TIMETZ)")]
    if kind == "geopoint":
        parts = raw.replace(quote(RAW_PREFIX + f.column), quote(GEO_PREFIX + f.column))
        valid = f"(len({parts}) BETWEEN 2 AND 4 AND len(list_filter({parts}, lambda v: v IS NULL)) = 0)"
        return [(column, f"CASE WHEN {valid} THEN {parts}[{i}] END")
                for i, (column, _) in enumerate(f.columns(), start=1)]
    if kind == "select_multiple":
        chosen = raw.replace(quote(RAW_PREFIX + f.column), quote(CHOSEN_PREFIX + f.column))
        columns = f.columns()
        out = [(columns[0][0], chosen), (columns[1][0], raw)]
        out += [(column, f"list_contains({chosen}, {sql_literal(name)})")
                for (column, _), name in zip(columns[2:], f.choice_names)]
        return out
    return [(f.column, raw)]


def _type_failed(f: Field, stage: str) -> str:
    """Where a raw answer is there but its typed column is empty: it could not be cast."""
    raw = f"{stage}.{quote(RAW_PREFIX + f.column)}"
    first = f"{stage}.{quote(f.columns()[0][0])}"
    return f"{raw} IS NOT NULL AND {first} IS NULL"


def _type_message(f: Field, raw: str) -> str:
    """The bilingual message of a type issue, as a SQL expression around the raw value."""
    shown = f"left({raw}, 80)"
    fr = TYPE_WORDS.get(f.xlsform_type, ("valide", "valid"))
    return (f"{sql_literal(f'La réponse à « {label_of(f)} » ({f.kobo_key}) devrait être {fr[0]}, mais vaut ' + chr(39))}"
            f" || {shown} || {sql_literal(chr(39) + f' / The answer to {f.kobo_key} should be {fr[1]}, but is ' + chr(39))}"
            f" || {shown} || ''''")


@dataclass
class StagedBatch:
    """The typed frames of a batch (for pandera and the rules) and its type issues."""

    tables: dict[str, pd.DataFrame]
    issues: list[Issue] = field(default_factory=list)


class StagingPlan:
    """The SQL that types one form version, generated once from its field dictionary."""

    def __init__(self, dictionary: FieldDictionary):
        self.dictionary = dictionary
        self.order: list[Table] = []
        pending = [dictionary.main_table]
        while pending:  # parents before children
            table = pending.pop(0)
            self.order.append(table)
            pending.extend(dictionary.children_of(table.name))
        self.statements = [(t.name, self._items_sql(t), self._stage_sql(t)) for t in self.order]

    # -- generation ---------------------------------------------------------------------
    def ancestors(self, table: Table) -> list[Table]:
        chain, current = [], table
        while current.parent:
            current = self.dictionary.tables[current.parent]
            chain.append(current)
        return chain

    def _items_sql(self, table: Table) -> str:
        """The rows of a table before typing: the submission itself, or the entries of a
        repeat, from the list its parent's stage kept as text (``__repeat__<table>``)."""
        if not table.is_repeat:
            return (f"CREATE OR REPLACE TEMP VIEW {quote(items_name(table.name))} AS SELECT root_uuid, submission_id, "
                    f"CAST(NULL AS VARCHAR) AS row_key, doc AS item FROM {BATCH_DOCS}")
        parent, parent_key, entries = self._entries(table)
        return (
            f"CREATE OR REPLACE TEMP TABLE {quote(items_name(table.name))} AS "
            f"SELECT root_uuid, submission_id, row_key AS parent_row_key, "
            f"coalesce(row_key || '.', '') || CAST(position AS VARCHAR) AS row_key, position, item FROM ("
            f"SELECT root_uuid, submission_id, row_key, unnest(entries) AS item, "
            f"CAST(generate_subscripts(entries, 1) AS BIGINT) AS position FROM ("
            f"SELECT root_uuid, submission_id, {parent_key} AS row_key, TRY(json_extract({entries}, '$[*]')) AS entries "
            f"FROM {quote(stage_name(parent.name))} WHERE {_is_list(entries)}))")

    def _entries(self, table: Table) -> tuple[Table, str, str]:
        """A repeat's parent, the parent rows' key (SQL) and the column of its stage that
        holds the repeat's entries as text."""
        parent = self.dictionary.tables[table.parent]
        return parent, "row_key" if parent.is_repeat else "CAST(NULL AS VARCHAR)", quote(REPEAT_PREFIX + table.name)

    def _resolver(self, table: Table):
        """${name} in an expression of ``table``: the raw text of that question in this row or
        an ancestor's row; anything else is unanswered, as in the Python evaluator's scope."""
        owners = {f.name: ("r", f) for f in table.fields}
        for depth, ancestor in enumerate(self.ancestors(table), start=1):
            for f in ancestor.fields:
                owners.setdefault(f.name, (f"p{depth}", f))
        used: set[int] = set()

        def resolve(name: str) -> str:
            if name not in owners:
                return "CAST(NULL AS VARCHAR)"
            alias, f = owners[name]
            if alias != "r":
                used.add(int(alias[1:]))
            return f"{alias}.{quote(RAW_PREFIX + f.column)}"

        return resolve, used

    def _relevance(self, table: Table) -> tuple[list[tuple[str, str]], set[int]]:
        resolve, used = self._resolver(table)
        flags = []
        for f in table.fields:
            if not (f.required and f.relevant):
                continue
            raw = f"r.{quote(RAW_PREFIX + f.column)}"
            try:
                condition = compile_condition(f.relevant, resolve)
            except ExpressionError as error:
                # An empty answer is then not reported as missing (rather than quarantining
                # answers Collect may rightly have skipped).
                log.warning("%s.%s : pertinence non vérifiée / relevance not checked (%s)", self.dictionary.form_id,
                            f.name, error)
                condition = "FALSE"
            flags.append((RELEVANT_PREFIX + f.column, f"({raw} IS NOT NULL OR {condition})"))
        return flags, used

    def _stage_sql(self, table: Table) -> str:
        items = quote(items_name(table.name))
        system = (["root_uuid", "submission_id", "row_key", "parent_row_key", "position"] if table.is_repeat
                  else ["root_uuid", "submission_id"])
        children = self.dictionary.children_of(table.name)
        # One json_extract_string per document (see land_raw.sql on memory): the answers,
        # the submission's metadata, and the text of each repeat's list of entries.
        paths = [json_path(f.kobo_key) for f in table.fields]
        if not table.is_repeat:
            paths += [path for paths_of_column in MAIN_SYSTEM_KEYS.values() for path in paths_of_column]
        paths += [json_path(child.repeat_key) for child in children]
        texts = f"json_extract_string(item, [{', '.join(sql_literal(p) for p in paths)}])"
        raw_columns = [f"nullif(t[{i}], '') AS {quote(RAW_PREFIX + f.column)}" for i, f in enumerate(table.fields, 1)]
        raw_columns += [f"CASE WHEN t[{i}] IS NULL THEN NULL ELSE list_transform(regexp_split_to_array(trim(t[{i}]), "
                        f"'\\s+'), lambda v: TRY_CAST(v AS DOUBLE)) END AS {quote(GEO_PREFIX + f.column)}"
                        for i, f in enumerate(table.fields, 1) if f.xlsform_type == "geopoint"]
        # Split once here: each choice's boolean column reads the list (DuckDB does not
        # share a subexpression between columns; splitting per choice cost 6 of 34 ms a batch).
        raw_columns += [f"CASE WHEN nullif(t[{i}], '') IS NOT NULL THEN list_filter(regexp_split_to_array(trim(t[{i}]), "
                        f"'\\s+'), lambda w: w <> '') END AS {quote(CHOSEN_PREFIX + f.column)}"
                        for i, f in enumerate(table.fields, 1) if f.xlsform_type == "select_multiple"]
        position = len(table.fields)
        if not table.is_repeat:
            for column, column_paths in MAIN_SYSTEM_KEYS.items():
                texts_of_column = [f"scalar_text(t[{position + i}])" for i in range(1, len(column_paths) + 1)]
                position += len(column_paths)
                text = texts_of_column[0] if len(texts_of_column) == 1 else f"coalesce({', '.join(texts_of_column)})"
                if column == "submission_time":
                    text = f"TRY_CAST({text} AS TIMESTAMPTZ)"
                raw_columns.append(f"{text} AS {quote(column)}")
        for child in children:
            position += 1
            raw_columns.append(f"t[{position}] AS {quote(REPEAT_PREFIX + child.name)}")
        extracted = f"SELECT {', '.join(system)}, {', '.join(raw_columns)} FROM (SELECT *, {texts} AS t FROM {items})"
        flags, used = self._relevance(table)
        joins = []
        previous = "r"
        for depth, ancestor in enumerate(self.ancestors(table), start=1):
            if depth > max(used, default=0):
                break
            alias, stage = f"p{depth}", quote(stage_name(ancestor.name))
            key = "" if not ancestor.is_repeat else f" AND {alias}.row_key = {previous}.parent_row_key"
            joins.append(f"LEFT JOIN {stage} AS {alias} ON {alias}.root_uuid = r.root_uuid{key}")
            previous = alias
        typed = [f"{sql} AS {quote(column)}" for f in table.fields
                 for column, sql in _typed(f, f"r.{quote(RAW_PREFIX + f.column)}")]
        typed += [f"{sql} AS {quote(column)}" for column, sql in flags]
        return (f"CREATE OR REPLACE TEMP TABLE {quote(stage_name(table.name))} AS "
                f"SELECT r.*{', ' if typed else ''}{', '.join(typed)} FROM ({extracted}) AS r {' '.join(joins)}")

    # -- columns ------------------------------------------------------------------------
    def clean_columns(self, table: Table) -> list[str]:
        return [column for column, _ in table.column_types()]

    def frame_columns(self, table: Table) -> list[str]:
        return self.clean_columns(table) + [RELEVANT_PREFIX + f.column for f in table.fields
                                            if f.required and f.relevant]

    def issues_sql(self, table: Table) -> str | None:
        stage = "s"
        parts = []
        for f in table.fields:
            if f.xlsform_type not in CASTABLE:
                continue
            raw = f"{stage}.{quote(RAW_PREFIX + f.column)}"
            row_key = f"{stage}.row_key" if table.is_repeat else "CAST(NULL AS VARCHAR)"
            parts.append(f"SELECT {stage}.root_uuid, {row_key} AS row_key, {sql_literal(f.column)} AS column_name, "
                         f"left({raw}, 500) AS value, {_type_message(f, raw)} AS message "
                         f"FROM {quote(stage_name(table.name))} AS {stage} WHERE {_type_failed(f, stage)}")
        not_list = None
        if table.is_repeat:
            parent, parent_key, entries = self._entries(table)
            message = sql_literal(f"Le groupe répété « {table.repeat_key} » n'est pas une liste / "
                                  f"The repeat group '{table.repeat_key}' is not a list of entries")
            not_list = (f"SELECT root_uuid, {parent_key} AS row_key, NULL AS column_name, left({entries}, 200) AS value, "
                        f"{message} AS message FROM {quote(stage_name(parent.name))} "
                        f"WHERE {entries} <> '' AND NOT ({_is_list(entries)})")
        if not parts and not not_list:
            return None
        typed = " UNION ALL ".join(parts) if parts else None
        pieces = []
        if typed:
            pieces.append(f"SELECT root_uuid, row_key, column_name, value, message, 'type' AS check_code, "
                          f"{sql_literal(table.name)} AS table_name FROM ({typed})")
        if not_list:
            pieces.append(f"SELECT root_uuid, row_key, column_name, value, message, 'type.repeat' AS check_code, "
                          f"{sql_literal(table.name)} AS table_name FROM ({not_list})")
        return " UNION ALL ".join(pieces)

    # -- running ------------------------------------------------------------------------
    def run(self, con: duckdb.DuckDBPyConnection) -> StagedBatch:
        """Types ``batch_docs`` into the stage tables; returns their frames and type issues."""
        for _, items_sql, stage_sql in self.statements:
            con.execute(items_sql)
            con.execute(stage_sql)
        ids = dict(con.execute(f"SELECT root_uuid, submission_id FROM {BATCH_DOCS}").fetchall())
        issues: list[Issue] = []
        tables: dict[str, pd.DataFrame] = {}
        for table in self.order:
            sql = self.issues_sql(table)
            if sql:
                for root, row_key, column, value, message, code, table_name in con.execute(sql).fetchall():
                    issues.append(Issue(root, ids.get(root), table_name, column, row_key, code, value, "error", message))
            tables[table.name] = self.frame(con, table)
        return StagedBatch(tables=tables, issues=issues)

    def frame(self, con: duckdb.DuckDBPyConnection, table: Table) -> pd.DataFrame:
        """A stage table as pandas, with the dtypes validation and the rules expect."""
        columns = ", ".join(quote(c) for c in self.frame_columns(table))
        frame = con.execute(f"SELECT {columns} FROM {quote(stage_name(table.name))}").df()
        for column, duck_type in table.column_types():
            dtype = PANDAS_DTYPES.get(duck_type)
            if dtype:
                frame[column] = frame[column].astype(dtype)
            elif duck_type == "DATE":
                frame[column] = pd.Series([None if pd.isna(v) else v.date() for v in frame[column]],
                                          index=frame.index, dtype="object")
            elif duck_type == "VARCHAR[]":
                frame[column] = pd.Series([list(v) if isinstance(v, (list, tuple)) or hasattr(v, "__array__") else None
                                           for v in frame[column]],
                                          index=frame.index, dtype="object")
            elif duck_type == "TIMESTAMPTZ":
                frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        """Drops the stage tables: otherwise a batch's live beside the next one's until that
        one replaces them and commits (DuckDB keeps a replaced table for its transaction)."""
        for table in self.order:
            kind = "TABLE" if table.is_repeat else "VIEW"
            con.execute(f"DROP {kind} IF EXISTS {quote(items_name(table.name))}")
            con.execute(f"DROP TABLE IF EXISTS {quote(stage_name(table.name))}")

    def insert_clean(self, con: duckdb.DuckDBPyConnection, keep_out: str) -> None:
        """Inserts the staged rows into the clean tables, except the submissions ``keep_out``
        (a SQL relation of root_uuids) lists."""
        for table in self.order:
            columns = ", ".join(quote(c) for c in self.clean_columns(table))
            con.execute(f"INSERT INTO {quote(table.name)} ({columns}) SELECT {columns} FROM "
                        f"{quote(stage_name(table.name))} WHERE root_uuid NOT IN (SELECT root_uuid FROM {keep_out})")

