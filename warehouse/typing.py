"""Typing: KoboToolbox submissions (answers as text) -> one typed DataFrame per table.

The typing itself is SQL generated from the field dictionary (warehouse/staging.py);
this module holds what the rest of the pipeline shares about it (issues, words for
messages) and ``type_submissions``, which types a list of submissions on an
in-memory DuckDB, for tests and tools that have submissions in hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from forms.dictionary import Field, FieldDictionary

RELEVANT_PREFIX = "__relevant__"
TYPE_WORDS = {  # (French, English)
    "integer": ("un nombre entier", "a whole number"), "decimal": ("un nombre", "a number"),
    "range": ("un nombre", "a number"), "date": ("une date", "a date"), "today": ("une date", "a date"),
    "dateTime": ("une date et une heure", "a date and time"), "start": ("une date et une heure", "a date and time"),
    "end": ("une date et une heure", "a date and time"), "time": ("une heure", "a time"),
    "geopoint": ("un point GPS (latitude longitude altitude précision)",
                 "a GPS point (latitude longitude altitude accuracy)"),
}


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


def root_uuid_of(submission: dict[str, Any]) -> str:
    """The stable key of a submission (kobo-api.md §3.6): meta/rootUuid, else its first _uuid."""
    return str(submission.get("meta/rootUuid") or f"uuid:{submission.get('_uuid')}")


def label_of(f: Field, language: str | None = None) -> str:
    labels = f.labels or {}
    return labels.get(language or "", "") or next(iter(labels.values()), "") or f.name


def type_submissions(dictionary: FieldDictionary, submissions: list[dict[str, Any]]):
    """Types submissions of one form version (a StagedBatch: frames per table, type issues)."""
    import duckdb

    from warehouse.staging import BATCH_DOCS, StagingPlan
    from warehouse.store import create_macros

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        create_macros(con)
        con.execute(f"CREATE TEMP TABLE {BATCH_DOCS} (root_uuid VARCHAR, submission_id BIGINT, doc JSON)")
        rows = [(root_uuid_of(s), int(s["_id"]) if str(s.get("_id", "")).isdigit() else None,
                 json.dumps(s, ensure_ascii=False)) for s in submissions]
        if rows:
            con.executemany(f"INSERT INTO {BATCH_DOCS} VALUES (?, ?, ?)", rows)
        return StagingPlan(dictionary).run(con)
    finally:
        con.close()
