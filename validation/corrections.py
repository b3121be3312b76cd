"""Corrections: data managers fix answers in a file (XLSX or CSV with the columns
root_uuid, field, row_key (for repeat rows, e.g. "2"), new_value, reason, author),
and every build applies them. A row without a new value is ignored; "(vide)" or
"(empty)" as the new value erases the answer; "(annuler)" or "(undo)" cancels the
correction recorded for that answer.

Each file adds to the corrections already recorded (a line for the same answer replaces
the earlier one): the template of a new day, which lists only the open errors, does not
undo the corrections of the day before. A correction changes the answer before typing
and validation, so a corrected submission leaves the quarantine only if it now passes
every check. Each correction is recorded with who, when and why, and with the answer it
first replaced: when the server's answer changes under it (an edit; a repeat row removed,
which moves the next rows up), it is not applied ("outdated") and is reported. One that
targets nothing (unknown submission, field or row) is reported too.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from forms.dictionary import Field, FieldDictionary
from forms.errors import TerrainError
from warehouse.typing import root_uuid_of

COLUMNS = ("root_uuid", "field", "row_key", "new_value", "reason", "author")
# Each column's French name: a heading may be either, or both as the template writes
# them ("nouvelle_valeur / new_value").
FRENCH_COLUMNS = {"root_uuid": "root_uuid", "field": "champ", "row_key": "rang", "new_value": "nouvelle_valeur",
                  "reason": "raison", "author": "auteur"}
_COLUMN_OF_FRENCH = {french: column for column, french in FRENCH_COLUMNS.items()}


def column_heading(column: str, french: str) -> str:
    """A heading in both languages, French first (one word when both are the same)."""
    return column if french == column else f"{french} / {column}"


def _column_of(heading: str) -> str:
    """The column a heading names: 'new_value', 'nouvelle_valeur' or 'nouvelle_valeur / new_value'."""
    name = heading.strip().rsplit("/", 1)[-1].strip()
    return _COLUMN_OF_FRENCH.get(name, name)
ERASE = {"(vide)", "(empty)"}  # new_value that removes an answer
UNDO = {"(annuler)", "(undo)"}  # new_value that cancels the recorded correction


class CorrectionsError(TerrainError):
    """The corrections file cannot be read."""


@dataclass
class CorrectionsResult:
    imported: int
    changed_roots: set[str]
    problems: list[str]


def read_corrections(path: Path) -> list[dict[str, Any]]:
    """Rows of a corrections file (.csv or .xlsx), with the columns of COLUMNS and the
    row's ``line`` in the file (the header is line 1)."""
    if not path.exists():
        raise CorrectionsError(f"pas de fichier de corrections à {path}", f"no corrections file at {path}")
    if path.suffix.lower() == ".csv":
        text = _csv_text(path)
        header = text.partition("\n")[0]
        # French Excel saves "CSV (séparateur: point-virgule)" with semicolons.
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=";" if header.count(";") > header.count(",") else ",")
        columns = [_column_of(h) for h in next(reader, [])]
        rows, ended = [], reader.line_num
        for cells in reader:  # a row's line is where it starts: a quoted answer may span lines
            if any(cells):  # a blank line (csv.reader gives it as []) still counts
                rows.append({**dict(zip(columns, cells)), "line": ended + 1})
            ended = reader.line_num
    elif path.suffix.lower() in (".xlsx", ".xlsm"):
        import openpyxl

        sheet = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
        values = list(sheet.iter_rows(values_only=True))
        header = [_column_of(str(h or "")) for h in values[0]] if values else []
        rows = [{**{h: ("" if v is None else str(v)) for h, v in zip(header, row)}, "line": number}
                for number, row in enumerate(values[1:], start=2)]
    else:
        raise CorrectionsError(f"{path.name} : un fichier de corrections est en .csv ou .xlsx",
                               f"{path.name}: a corrections file is .csv or .xlsx")
    missing = ", ".join(column_heading(c, FRENCH_COLUMNS[c]) for c in ("root_uuid", "field", "new_value")
                        if rows and c not in rows[0])
    if missing:
        expected = ", ".join(column_heading(c, FRENCH_COLUMNS[c]) for c in COLUMNS)
        raise CorrectionsError(f"{path.name} : il manque les colonnes {missing} (attendues : {expected})",
                               f"{path.name}: the columns {missing} are missing (expected: {expected})")
    cleaned = []
    for line in rows:
        row: dict[str, Any] = {c: (line.get(c) or "").strip() for c in COLUMNS}
        row["line"] = line["line"]  # the file's line, to say where a problem is
        # A row left empty (e.g. from the prefilled template) corrects nothing; erasing an
        # answer must be said explicitly.
        if row["root_uuid"] and row["new_value"]:
            cleaned.append(row)
    return cleaned


def last_line_of_each_answer(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The rows of a file by the answer they correct (root_uuid, field, row_key): of two
    lines for one answer, the last is the one applied."""
    return {(r["root_uuid"], r["field"], r["row_key"]): r for r in rows}


def _csv_text(path: Path) -> str:
    """A CSV file's text: UTF-8, else the Windows encoding Excel saves "CSV" in by default."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise CorrectionsError(f"{path.name} : le fichier n'est ni en UTF-8 ni en texte Windows ; dans Excel, "
                               f"enregistrez-le en 'CSV UTF-8' (ou en .xlsx) et réessayez",
                               f"{path.name}: the file is neither UTF-8 nor Windows text; in Excel, save it as "
                               f"'CSV UTF-8' (or as .xlsx) and try again") from None


def import_corrections(con, rows: list[dict[str, str]], source: str, now: dt.datetime) -> CorrectionsResult:
    """Adds the file's corrections to meta.corrections (replacing those of the same answers,
    cancelling those marked UNDO); returns the submissions to type again: those whose
    corrections changed, and those with a correction not yet applied (an earlier run
    stopped before it retyped them)."""
    # A line as recorded and applied stays as it is; one written again after it was not
    # applied (outdated, or targeting nothing) is taken afresh.
    before = {(r[0], r[1], r[2]): r[3] for r in con.execute(
        "SELECT root_uuid, field, row_key, new_value FROM meta.corrections "
        "WHERE status NOT IN ('outdated', 'no_target')").fetchall()}
    after = last_line_of_each_answer(rows)
    undone = [key for key, row in after.items() if row["new_value"].lower() in UNDO]
    changed = [row for key, row in after.items() if key not in undone and before.get(key) != row["new_value"]]
    for root, name, row_key in undone:
        con.execute("DELETE FROM meta.corrections WHERE root_uuid = ? AND field = ? AND row_key = ?", [root, name, row_key])
    if changed:
        frame = pd.DataFrame(changed, columns=list(COLUMNS))
        frame["source_file"], frame["imported_at"] = source, now
        con.register("correction_rows", frame)
        try:
            con.execute("DELETE FROM meta.corrections WHERE (root_uuid, field, row_key) IN "
                        "(SELECT (root_uuid, field, row_key) FROM correction_rows)")
            con.execute("INSERT INTO meta.corrections (root_uuid, field, row_key, new_value, reason, author, "
                        "source_file, imported_at) SELECT * FROM correction_rows")
        finally:
            con.unregister("correction_rows")
        con.execute("UPDATE meta.corrections c SET status = 'no_target', problem = ? WHERE status = 'pending' AND NOT "
                    "EXISTS (SELECT 1 FROM raw.submissions r WHERE r.root_uuid = c.root_uuid)",
                    ["aucune soumission avec ce root_uuid dans l'entrepôt / no submission with this root_uuid in "
                     "the warehouse"])
    pending = {row[0] for row in con.execute("SELECT root_uuid FROM meta.corrections WHERE status = 'pending'").fetchall()}
    problems = [f"{root} {field_name}: {problem}" for root, field_name, problem in con.execute(
        "SELECT root_uuid, field, problem FROM meta.corrections WHERE status = 'no_target'").fetchall()]
    return CorrectionsResult(imported=len(changed) + len(undone),
                             changed_roots={key[0] for key in undone} | {r["root_uuid"] for r in changed} | pending,
                             problems=problems)


def _target(dictionary: FieldDictionary, name: str) -> Field | None:
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
        rows = con.execute("SELECT root_uuid, field, row_key, new_value, original_value, original_row "
                           "FROM meta.corrections WHERE root_uuid IN (SELECT root_uuid FROM correction_roots)").fetchall()
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
        received, submission = submission, copy.deepcopy(submission)
        for root, name, row_key, value, original, original_row in todo:
            status, problem, found, row = _apply_one(dictionary, submission, received, name, row_key, value,
                                                     original, original_row)
            con.execute("UPDATE meta.corrections SET status = ?, problem = ?, original_value = coalesce(original_value, ?), "
                        "original_row = coalesce(original_row, ?) WHERE root_uuid = ? AND field = ? AND row_key = ?",
                        [status, problem, found, row, root, name, row_key])
        corrected.append(submission)
    return corrected


def _row_of(dictionary: FieldDictionary, submission: dict[str, Any], f: Field,
            row_key: str) -> tuple[dict[str, Any] | None, str | None]:
    """Where the answer ``f`` of row ``row_key`` lives in the submission (the submission
    itself, or a repeat's row), or why there is no such place."""
    table = dictionary.tables[f.table]
    if not table.is_repeat:
        return submission, None
    if not row_key:
        return None, (f"'{f.name}' est dans un groupe répété : donnez le row_key (par exemple 2) / "
                      f"'{f.name}' is in a repeat group: give the row_key (e.g. 2)")
    chain = []
    current = table
    while current.is_repeat:
        chain.insert(0, current)
        current = dictionary.tables[current.parent]
    positions = row_key.split(".")
    if len(positions) != len(chain):
        return None, (f"le row_key '{row_key}' ne correspond pas au groupe répété de '{f.name}' / "
                      f"row_key '{row_key}' does not fit the repeat group of '{f.name}'")
    container: dict[str, Any] = submission
    for repeat, position in zip(chain, positions):
        items = container.get(repeat.repeat_key) or []
        index = int(position) - 1 if position.isdigit() else -1
        if not 0 <= index < len(items):
            return None, f"pas de ligne {row_key} dans '{repeat.repeat_key}' / no row {row_key} in '{repeat.repeat_key}'"
        container = items[index]
    return container, None


def _apply_one(dictionary: FieldDictionary, submission: dict[str, Any], received: dict[str, Any], name: str,
               row_key: str, value: str | None, original: str | None,
               original_row: str | None = None) -> tuple[str, str | None, str | None, str | None]:
    """Applies one correction to ``submission`` (a copy of ``received``, the submission as
    the server sent it): its status, the problem if any, the answer it found there (JSON),
    to be kept as the one the correction replaced, and for a repeat's row the row's other
    answers as received (JSON), kept to tell that row from another one moved into its place."""
    f = _target(dictionary, name)
    if f is None:
        return "no_target", f"le formulaire n'a pas de champ '{name}' / the form has no field '{name}'", None, None
    container, problem = _row_of(dictionary, submission, f, row_key)
    if container is None:
        return "no_target", problem, None, None
    found = json.dumps(container.get(f.kobo_key), ensure_ascii=False)
    row = None
    if dictionary.tables[f.table].is_repeat:  # as received: other corrections of the row do not change it
        as_received, _ = _row_of(dictionary, received, f, row_key)
        # Its own answers only: a row added to a repeat within it does not make it another row.
        row = json.dumps({k: v for k, v in (as_received or {}).items() if k != f.kobo_key and not isinstance(v, list)},
                         ensure_ascii=False, sort_keys=True)
    if original is not None and found != original:
        was, now = json.loads(original), json.loads(found)
        return ("outdated", f"la réponse a changé sur le serveur depuis cette correction (elle était {was!r}, elle "
                f"est {now!r}) : vérifiez-la, puis écrivez de nouveau la correction ou annulez-la / the answer changed "
                f"on the server since this correction (it was {was!r}, it is {now!r}): check it, then write the "
                f"correction again or cancel it", found, row)
    if original_row is not None and row != original_row:
        return ("outdated", f"la ligne {row_key} a changé sur le serveur depuis cette correction (une ligne "
                f"retirée avant elle ? d'autres réponses modifiées ?) : vérifiez-la, puis écrivez de nouveau la "
                f"correction ou annulez-la / row {row_key} changed on the server since this correction (a row "
                f"removed before it? other answers edited?): check it, then write the correction again or cancel it",
                found, row)
    if value is None or value.strip().lower() in ERASE:
        container.pop(f.kobo_key, None)
    else:
        container[f.kobo_key] = value
    return "applied", None, found, row


def corrections_log(con) -> list[tuple]:
    return con.execute("SELECT root_uuid, field, row_key, new_value, author, reason, imported_at, status, problem "
                       "FROM meta.corrections ORDER BY root_uuid, field").fetchall()


