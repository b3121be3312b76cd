"""Typing: KoboToolbox submissions (all values strings) -> one DataFrame per table.

The field dictionary says each field's table and type. A value that cannot be cast
is never dropped silently: its column stays empty and an issue keeps the raw value
(contract 3). For required questions whose relevance depends on other answers,
relevance is evaluated here, where the whole submission is at hand, and passed on
as a hidden ``__relevant__<column>`` flag that validation reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from forms.dictionary import Field, FieldDictionary, Table
from forms.expressions import is_true

RELEVANT_PREFIX = "__relevant__"
PANDAS_DTYPES = {"BIGINT": "Int64", "DOUBLE": "Float64", "VARCHAR": "string", "BOOLEAN": "boolean"}


@dataclass
class Issue:
    """One problem in one submission (contract 4), before it is stored."""

    root_uuid: str
    submission_id: int | None
    table_name: str
    column_name: str | None
    row_key: str | None
    check_code: str
    value: str | None
    severity: str
    message: str


@dataclass
class TypedBatch:
    tables: dict[str, pd.DataFrame]
    issues: list[Issue] = field(default_factory=list)
    root_uuids: list[str] = field(default_factory=list)


def _integer(raw: str) -> int:
    number = float(raw)
    if not number.is_integer():
        raise ValueError(raw)
    return int(number)


def _timestamp(raw: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(raw)
    if value.tzinfo is None:  # KoboToolbox's _submission_time is UTC without an offset
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def root_uuid_of(submission: dict[str, Any]) -> str:
    """The stable key of a submission (kobo-api.md §3.6): meta/rootUuid, else its first _uuid."""
    return str(submission.get("meta/rootUuid") or f"uuid:{submission.get('_uuid')}")


def _safe_timestamp(raw: Any) -> dt.datetime | None:
    """A server time that cannot be read is left empty (the raw payload keeps it)."""
    try:
        return _timestamp(str(raw)) if raw else None
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _geopoint(raw: str) -> list[float]:
    parts = [float(p) for p in raw.split()]
    if len(parts) < 2 or len(parts) > 4:
        raise ValueError(raw)
    return (parts + [None, None])[:4]


CASTS: dict[str, Callable[[str], Any]] = {
    "integer": _integer,
    "decimal": float,
    "range": float,
    "date": lambda raw: dt.date.fromisoformat(raw[:10]),
    "today": lambda raw: dt.date.fromisoformat(raw[:10]),
    "dateTime": _timestamp,
    "start": _timestamp,
    "end": _timestamp,
    "time": lambda raw: dt.time.fromisoformat(raw),
    "geopoint": _geopoint,
    "select_multiple": lambda raw: raw.split(),
}
TYPE_WORDS = {  # (French, English)
    "integer": ("un nombre entier", "a whole number"), "decimal": ("un nombre", "a number"),
    "range": ("un nombre", "a number"), "date": ("une date", "a date"), "today": ("une date", "a date"),
    "dateTime": ("une date et une heure", "a date and time"), "start": ("une date et une heure", "a date and time"),
    "end": ("une date et une heure", "a date and time"), "time": ("une heure", "a time"),
    "geopoint": ("un point GPS (latitude longitude altitude précision)",
                 "a GPS point (latitude longitude altitude accuracy)"),
}


def label_of(f: Field, language: str | None = None) -> str:
    labels = f.labels or {}
    return labels.get(language or "", "") or next(iter(labels.values()), "") or f.name


class _Columns:
    """Column-wise buffers for one table (faster than building a row dict each time)."""

    def __init__(self, table: Table):
        self.table = table
        self.data: dict[str, list[Any]] = {c: [] for c in table.system_columns()}
        for f in table.fields:
            for column, _ in f.columns():
                self.data[column] = []
            if f.required and f.relevant:
                self.data[RELEVANT_PREFIX + f.column] = []

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.data)
        for f in self.table.fields:
            for column, duck_type in f.columns():
                dtype = PANDAS_DTYPES.get(duck_type)
                if dtype:
                    frame[column] = frame[column].astype(dtype)
                elif duck_type == "TIMESTAMPTZ":
                    frame[column] = pd.to_datetime(frame[column], utc=True)
        if not self.table.is_repeat:
            frame["submission_time"] = pd.to_datetime(frame["submission_time"], utc=True)
            frame["submission_id"] = frame["submission_id"].astype("Int64")
        else:
            frame["position"] = frame["position"].astype("Int64")
        return frame


class _Typer:
    def __init__(self, dictionary: FieldDictionary):
        self.dictionary = dictionary
        self.buffers = {name: _Columns(t) for name, t in dictionary.tables.items()}
        self.issues: list[Issue] = []
        # Worked out once per table, not once per row: each field's columns and buffers.
        self.plans = {
            name: [(f, [self.buffers[name].data[c] for c, _ in f.columns()],
                    self.buffers[name].data.get(RELEVANT_PREFIX + f.column) if f.required and f.relevant else None)
                   for f in t.fields]
            for name, t in dictionary.tables.items()
        }
        self.children = {name: self.dictionary.children_of(name) for name in dictionary.tables}

    def add(self, submission: dict[str, Any]) -> str:
        root_uuid = root_uuid_of(submission)
        submission_id = submission.get("_id")
        main = self.dictionary.main_table
        answers: dict[str, Any] = {}
        system = {
            "root_uuid": root_uuid,
            "submission_id": int(submission_id) if submission_id is not None else None,
            "uuid": _text(submission.get("_uuid")),
            "form_version": _text(submission.get("__version__")),
            "submission_time": _safe_timestamp(submission.get("_submission_time")),
            "submitted_by": _text(submission.get("_submitted_by")),
            "validation_status": _text((submission.get("_validation_status") or {}).get("uid"))
            if isinstance(submission.get("_validation_status"), dict) else None,
        }
        self._row(main, submission, system, answers, root_uuid, submission_id, None)
        return root_uuid

    def _row(self, table: Table, source: dict[str, Any], system: dict[str, Any], answers: dict[str, Any],
             root_uuid: str, submission_id: Any, row_key: str | None) -> None:
        buffer = self.buffers[table.name]
        for column, value in system.items():
            buffer.data[column].append(value)
        scope = dict(answers)
        plan = self.plans[table.name]
        for f, _, _ in plan:
            raw = source.get(f.kobo_key)
            scope[f.name] = raw if raw is None else str(raw)
        for f, buffers, relevant in plan:
            raw = scope[f.name]
            values = self._cast(f, raw, len(buffers), root_uuid, submission_id, table.name, row_key)
            for target, value in zip(buffers, values):
                target.append(value)
            if relevant is not None:
                # Relevance matters only for a missing answer: an answer meets "required" anyway.
                relevant.append(True if raw not in (None, "") else is_true(f.relevant, scope.get))
        for child in self.children[table.name]:
            items = source.get(child.repeat_key) or []
            if not isinstance(items, list):
                self.issues.append(Issue(root_uuid, submission_id, child.name, None, row_key, "type.repeat",
                                         str(items)[:200], "error",
                                         f"Le groupe répété « {child.repeat_key} » n'est pas une liste / "
                                         f"The repeat group '{child.repeat_key}' is not a list of entries"))
                continue
            for position, item in enumerate(items, start=1):
                key = f"{row_key}.{position}" if row_key else str(position)
                child_system = {"root_uuid": root_uuid, "row_key": key, "parent_row_key": row_key,
                                "position": position}
                self._row(child, item if isinstance(item, dict) else {}, child_system, scope, root_uuid,
                          submission_id, key)

    def _cast(self, f: Field, raw: Any, width: int, root_uuid: str, submission_id: Any, table: str,
              row_key: str | None) -> list[Any]:
        if raw is None or raw == "":
            return [None] * width
        if f.xlsform_type == "select_multiple":
            chosen = raw.split()
            return [chosen, raw] + [name in chosen for name in f.choice_names]
        cast = CASTS.get(f.xlsform_type)
        if cast is None:
            return [raw]
        try:
            value = cast(raw)
        except (ValueError, TypeError, OverflowError):
            self.issues.append(Issue(
                root_uuid, submission_id, table, f.column, row_key, "type", str(raw)[:500], "error",
                f"La réponse à « {label_of(f)} » ({f.kobo_key}) devrait être "
                f"{TYPE_WORDS.get(f.xlsform_type, ('valide',))[0]}, mais vaut '{str(raw)[:80]}' / "
                f"The answer to {f.kobo_key} should be {TYPE_WORDS.get(f.xlsform_type, ('', 'valid'))[1]}, "
                f"but is '{str(raw)[:80]}'",
            ))
            return [None] * width
        return list(value) if f.xlsform_type == "geopoint" else [value]


def type_submissions(dictionary: FieldDictionary, submissions: list[dict[str, Any]]) -> TypedBatch:
    """Types a batch of submissions of one form version into one DataFrame per table."""
    typer = _Typer(dictionary)
    root_uuids = [typer.add(s) for s in submissions]
    tables = {name: buffer.frame() for name, buffer in typer.buffers.items()}
    return TypedBatch(tables=tables, issues=typer.issues, root_uuids=root_uuids)
