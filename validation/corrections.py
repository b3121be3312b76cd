"""Corrections: data managers fix answers in a file (XLSX or CSV with the columns
root_uuid, field, row_key (for repeat rows, e.g. "2"), new_value, reason, author),
and every build applies them. A row without a new value is ignored; "(vide)" or
"(empty)" as the new value erases the answer.

A correction changes the answer before typing and validation, so a corrected
submission leaves the quarantine only if it now passes every check; removing the
correction from the file puts it back. Each correction is recorded with who, when
and why, and one that targets nothing (unknown submission, field or row) is reported.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from forms.dictionary import FieldDictionary
from forms.errors import TerrainError
from warehouse.typing import root_uuid_of

COLUMNS = ("root_uuid", "field", "row_key", "new_value", "reason", "author")
ERASE = {"(vide)", "(empty)"}  # new_value that removes an answer


class CorrectionsError(TerrainError):
    """The corrections file cannot be read."""


@dataclass
class CorrectionsResult:
    imported: int
    changed_roots: set[str]
    problems: list[str]


def read_corrections(path: Path) -> list[dict[str, str]]:
    """Rows of a corrections file (.csv or .xlsx), with the columns of COLUMNS."""
    if not path.exists():
        raise CorrectionsError(f"no corrections file at {path}")
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl

        sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
        values = list(sheet.iter_rows(values_only=True))
        header = [str(h or "").strip() for h in values[0]] if values else []
        rows = [{h: ("" if v is None else str(v)) for h, v in zip(header, row)} for row in values[1:]]
    else:
        raise CorrectionsError(f"{path.name}: a corrections file is .csv or .xlsx")
    missing = [c for c in ("root_uuid", "field", "new_value") if rows and c not in rows[0]]
    if missing:
        raise CorrectionsError(f"{path.name}: the columns {', '.join(missing)} are missing (expected: {', '.join(COLUMNS)})")
    cleaned = []
    for row in rows:
        row = {c: (row.get(c) or "").strip() for c in COLUMNS}
        # A row left empty (e.g. from the prefilled template) corrects nothing; erasing an
        # answer must be said explicitly.
        if row["root_uuid"] and row["new_value"]:
            cleaned.append(row)
    return cleaned


def import_corrections(con, rows: list[dict[str, str]], source: str, now: dt.datetime) -> CorrectionsResult:
    """Makes meta.corrections equal to the file; returns the submissions whose corrections changed."""
    before = {(r[0], r[1], r[2]): r[3] for r in con.execute(
        "SELECT root_uuid, field, row_key, new_value FROM meta.corrections").fetchall()}
    after = {(r["root_uuid"], r["field"], r["row_key"]): r["new_value"] for r in rows}
    changed = {key[0] for key in before.keys() ^ after.keys()} | {
        key[0] for key in before.keys() & after.keys() if before[key] != after[key]}
    con.execute("DELETE FROM meta.corrections")
    if rows:
        frame = pd.DataFrame(rows, columns=list(COLUMNS)).drop_duplicates(["root_uuid", "field", "row_key"], keep="last")
        frame["source_file"], frame["imported_at"] = source, now
        con.register("correction_rows", frame)
        try:
            con.execute("INSERT INTO meta.corrections (root_uuid, field, row_key, new_value, reason, author, source_file, "
                        "imported_at) SELECT * FROM correction_rows")
        finally:
            con.unregister("correction_rows")
        unknown = con.execute("SELECT root_uuid, field FROM meta.corrections c WHERE NOT EXISTS "
                              "(SELECT 1 FROM raw.submissions r WHERE r.root_uuid = c.root_uuid)").fetchall()
        for root, field_name in unknown:
            con.execute("UPDATE meta.corrections SET status = 'no_target', problem = ? WHERE root_uuid = ? AND field = ?",
                        ["no submission with this root_uuid in the warehouse", root, field_name])
    problems = [f"{root} {field_name}: {problem}" for root, field_name, problem in con.execute(
        "SELECT root_uuid, field, problem FROM meta.corrections WHERE status = 'no_target'").fetchall()]
    return CorrectionsResult(imported=len(rows), changed_roots=changed, problems=problems)


def _target(dictionary: FieldDictionary, name: str):
    for f in dictionary.fields():
        if name in (f.column, f.name, f.kobo_key):
            return f
    return None


def apply_corrections(con, dictionary: FieldDictionary, submissions: list[dict[str, Any]],
                      now: dt.datetime) -> list[dict[str, Any]]:
    """The submissions with their recorded corrections applied (copies; raw stays as received)."""
    roots = [root_uuid_of(s) for s in submissions]
    if not roots:
        return submissions
    con.register("correction_roots", pd.DataFrame({"root_uuid": roots}))
    try:
        rows = con.execute("SELECT root_uuid, field, row_key, new_value FROM meta.corrections "
                           "WHERE root_uuid IN (SELECT root_uuid FROM correction_roots)").fetchall()
    finally:
        con.unregister("correction_roots")
    if not rows:
        return submissions
    by_root: dict[str, list[tuple]] = {}
    for row in rows:
        by_root.setdefault(row[0], []).append(row)
    corrected = []
    for submission in submissions:
        todo = by_root.get(root_uuid_of(submission))
        if not todo:
            corrected.append(submission)
            continue
        submission = copy.deepcopy(submission)
        for root, name, row_key, value in todo:
            status, problem = _apply_one(dictionary, submission, name, row_key, value)
            con.execute("UPDATE meta.corrections SET status = ?, problem = ? WHERE root_uuid = ? AND field = ? "
                        "AND row_key = ?", [status, problem, root, name, row_key])
        corrected.append(submission)
    return corrected


def _apply_one(dictionary: FieldDictionary, submission: dict[str, Any], name: str, row_key: str,
               value: str | None) -> tuple[str, str | None]:
    f = _target(dictionary, name)
    if f is None:
        return "no_target", f"the form has no field '{name}'"
    table = dictionary.tables[f.table]
    container: dict[str, Any] | None = submission
    if table.is_repeat:
        if not row_key:
            return "no_target", f"'{name}' is in a repeat group: give the row_key (e.g. 2)"
        chain = []
        current = table
        while current.is_repeat:
            chain.insert(0, current)
            current = dictionary.tables[current.parent]
        positions = row_key.split(".")
        if len(positions) != len(chain):
            return "no_target", f"row_key '{row_key}' does not fit the repeat group of '{name}'"
        for repeat, position in zip(chain, positions):
            items = (container or {}).get(repeat.repeat_key) or []
            index = int(position) - 1 if position.isdigit() else -1
            if not 0 <= index < len(items):
                return "no_target", f"no row {row_key} in '{repeat.repeat_key}'"
            container = items[index]
    if value is None or value.strip().lower() in ERASE:
        container.pop(f.kobo_key, None)
    else:
        container[f.kobo_key] = value
    return "applied", None


def corrections_log(con) -> list[tuple]:
    return con.execute("SELECT root_uuid, field, row_key, new_value, author, reason, imported_at, status, problem "
                       "FROM meta.corrections ORDER BY root_uuid, field").fetchall()


