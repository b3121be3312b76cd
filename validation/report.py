"""The quality report: what a data manager reads every morning, as an Excel workbook.

``terrain report`` writes one XLSX with a summary per form, the open issues grouped
by check, statistics per enumerator, coverage by commune and the list of open
issues, with native Excel charts. Every number comes from SQL on the warehouse
(read-only is enough); the workbook only presents them. Text from the field is
always written as text (``write_string``), never as a formula.

Per-submission facts come from ``raw.submissions`` (current, not deleted versions),
because quarantined submissions are not in the clean tables: the enumerator is
``_submitted_by``, else ``username``; the commune is the answer of the form's
``commune`` field; the interview duration is ``end - start``.

``corrections_template_rows`` / ``write_corrections_template`` give one row per open
error, in the layout ``terrain`` reads back as a corrections file (validation/corrections.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import xlsxwriter
from xlsxwriter.utility import xl_range_abs, xl_rowcol_to_cell

from validation.corrections import (FRENCH_COLUMNS, UNDO, CorrectionsError, column_heading, last_line_of_each_answer,
                                    read_corrections)
from warehouse.staging import json_path
from warehouse.store import Warehouse, quote
from warehouse.xpath_sql import sql_literal

log = logging.getLogger(__name__)

# Answers counted as "don't know"; compared lower-cased, whole answer or one choice of a
# select_multiple. Our forms have no such choice yet: a programme adds its own codes.
DONT_KNOW_VALUES: frozenset[str] = frozenset({"dont_know", "ne_sait_pas", "dk", "nsp", "-99", "-999", "999", "-88"})
# Question types that are not answers given by the respondent (metadata, calculations).
NOT_ANSWERS = {"start", "end", "today", "deviceid", "username", "audit", "subscriberid", "simserial",
               "phonenumber", "email", "calculate", "hidden", "start-geopoint", "background-audio"}
UNKNOWN_ENUMERATOR = "(inconnu / unknown)"
NO_COMMUNE = "(sans commune / no commune)"
COMMUNE_FIELDS = ("commune",)
COMMUNE_FALLBACK_KEYS = ("identification/commune", "place/commune", "session/commune", "commune")
EXCEL_MAX_ROWS = 1_048_576
HEADER_ROW = 2  # 0-based: title on row 1, a note on row 2, the headings on row 3

SHEETS = {
    "summary": "Résumé - Summary",
    "checks": "Par contrôle - Issues by check",
    "enumerators": "Enquêteurs - Enumerators",
    "coverage": "Couverture - Coverage",
    "open_issues": "Problèmes ouverts - Open issues",
}
TITLES = {
    "summary": "Résumé / Summary",
    "checks": "Problèmes par contrôle / Issues by check",
    "enumerators": "Enquêteurs / Enumerators",
    "coverage": "Couverture par commune / Coverage by commune",
    "open_issues": "Problèmes ouverts / Open issues",
}
SEVERITY_LABELS = {"error": "erreur / error", "warning": "avertissement / warning"}

SUMMARY_HEADINGS = [
    "Formulaire / Form", "Titre / Title", "Soumissions reçues / Submissions received", "Propres / Clean",
    "En quarantaine / Quarantined", "Part en quarantaine / Share quarantined", "Erreurs ouvertes / Open errors",
    "Avertissements ouverts / Open warnings", "Dernière soumission (UTC) / Last submission (UTC)",
]
CHECK_HEADINGS = [
    "Formulaire / Form", "Contrôle / Check", "Gravité / Severity", "Problèmes ouverts / Open issues",
    "Soumissions concernées / Submissions affected", "Champs / Fields", "Exemple de message / Example message",
]
ENUMERATOR_HEADINGS = [
    "Formulaire / Form", "Enquêteur / Enumerator", "Soumissions / Submissions", "Jours travaillés / Days worked",
    "Soumissions par jour / Submissions per day", "Durée médiane (min) / Median duration (min)",
    "Soumissions avec erreur / Submissions with an error", "Taux d'erreur / Error rate",
    "Soumissions avec avertissement / Submissions with a warning", "Réponses / Answers",
    "Réponses « ne sait pas » / \"Don't know\" answers", "Taux « ne sait pas » / \"Don't know\" rate",
]
COVERAGE_HEADINGS = [
    "Formulaire / Form", "Commune / Commune", "Code / Code", "Soumissions / Submissions", "Propres / Clean",
    "En quarantaine / Quarantined", "Part en quarantaine / Share quarantined",
]
OPEN_ISSUE_HEADINGS = [
    "Formulaire / Form", "N° de soumission / Submission id", "root_uuid", "Table / Table", "Colonne / Column",
    "Ligne / Row", "Contrôle / Check", "Gravité / Severity", "Valeur / Value", "Message / Message",
    "Enquêteur / Enumerator", "Détecté le (UTC) / Detected at (UTC)",
]
# The corrections file: the columns validation/corrections.py reads, then context.
TEMPLATE_COLUMNS = ["root_uuid", "field", "row_key", "new_value", "reason", "author",
                    "form_id", "table", "submission_id", "enumerator", "check", "current_value", "message"]
TEMPLATE_EDITABLE = ("new_value", "reason", "author")
# The template's headings, French first (the file is read back by either name: see
# validation/corrections.py); the context columns are not read back.
TEMPLATE_FRENCH = {**FRENCH_COLUMNS, "form_id": "formulaire", "table": "table", "submission_id": "_id",
                   "enumerator": "enquêteur", "check": "contrôle", "current_value": "valeur_actuelle",
                   "message": "message"}


# -- data ---------------------------------------------------------------------------------
@dataclass
class FormSummary:
    form_id: str
    title: str
    received: int  # current, not deleted submissions in raw.submissions
    clean: int  # of those, in the form's clean table
    quarantined: int  # of those, with an open error
    open_errors: int
    open_warnings: int
    last_submission: dt.datetime | None


@dataclass
class CheckCount:
    form_id: str
    check_code: str
    severity: str
    open_issues: int
    submissions: int
    columns: str
    example_message: str


@dataclass
class EnumeratorStats:
    form_id: str
    enumerator: str
    submissions: int
    days_worked: int
    per_day: float
    median_minutes: float | None
    with_errors: int
    error_rate: float
    with_warnings: int
    answers: int
    dont_know: int
    dont_know_rate: float


@dataclass
class CommuneCoverage:
    form_id: str
    commune: str | None  # the answer (choice name); None when not answered
    label: str  # the commune's name, else its code
    submissions: int
    clean: int
    quarantined: int


@dataclass
class OpenIssue:
    issue_id: int
    form_id: str
    submission_id: int | None
    root_uuid: str
    table_name: str
    column_name: str | None
    row_key: str | None
    check_code: str
    severity: str
    value: str | None
    message: str
    enumerator: str | None
    detected_at: dt.datetime | None


@dataclass
class ReportData:
    generated_at: dt.datetime
    forms: list[FormSummary] = field(default_factory=list)
    checks: list[CheckCount] = field(default_factory=list)
    enumerators: list[EnumeratorStats] = field(default_factory=list)
    communes: list[CommuneCoverage] = field(default_factory=list)
    open_issues: list[OpenIssue] = field(default_factory=list)
    dont_know_values: tuple[str, ...] = ()


# -- SQL ----------------------------------------------------------------------------------
CURRENT = "r.is_current AND r.deleted_at IS NULL"


@dataclass
class _FormInfo:
    form_id: str
    title: str
    main_table: str | None
    answer_keys: dict[str | None, list[str]]  # JSONPath to a repeat's rows (None: the submission) -> keys
    start_key: str
    end_key: str
    today_key: str
    username_key: str
    commune_keys: list[str]
    commune_lists: list[str]


def _rows_path(tables: dict[str, Any], table: dict[str, Any]) -> str | None:
    """The JSONPath to every row of a repeat table in a submission (nested repeats: through
    their parents' rows); None for the main table."""
    if table.get("parent") is None:
        return None
    parent = _rows_path(tables, tables[table["parent"]]) or "$"
    return parent + json_path(table["repeat_key"])[1:] + "[*]"


def _form_infos(con: duckdb.DuckDBPyConnection) -> list[_FormInfo]:
    """Every form of the warehouse, with what its field dictionaries say (all versions)."""
    ids = [r[0] for r in con.execute(
        "SELECT form_id FROM meta.form_versions UNION SELECT form_id FROM raw.submissions ORDER BY 1").fetchall()]
    infos = []
    for form_id in ids:
        rows = con.execute("SELECT dictionary::VARCHAR FROM meta.form_versions WHERE form_id = ? ORDER BY first_seen",
                           [form_id]).fetchall()
        dictionaries = [json.loads(r[0]) for r in rows]
        title, main_table = form_id, None
        answer_keys: dict[str | None, list[str]] = {}
        keys = {"start": [], "end": [], "today": [], "username": []}
        commune_keys: list[str] = []
        commune_lists: list[str] = []
        for dictionary in dictionaries:  # oldest first: the latest wins for title and table
            title = dictionary.get("title") or form_id
            for table in dictionary["tables"].values():
                if table.get("parent") is None:
                    main_table = table["name"]
                rows = _rows_path(dictionary["tables"], table)
                for f in table["fields"]:
                    kind, key = f["xlsform_type"], f["kobo_key"]
                    if kind in keys and table.get("parent") is None:
                        keys[kind].append(key)
                    if kind not in NOT_ANSWERS and key not in answer_keys.setdefault(rows, []):
                        answer_keys[rows].append(key)
                    if f["name"] in COMMUNE_FIELDS and table.get("parent") is None:
                        commune_keys.append(key)
                        if f.get("list_name"):
                            commune_lists.append(f["list_name"])
        commune_keys = list(dict.fromkeys(commune_keys[::-1] + list(COMMUNE_FALLBACK_KEYS)))
        infos.append(_FormInfo(
            form_id=form_id, title=title, main_table=main_table, answer_keys=answer_keys,
            start_key=(keys["start"] or ["start"])[-1], end_key=(keys["end"] or ["end"])[-1],
            today_key=(keys["today"] or ["today"])[-1], username_key=(keys["username"] or ["username"])[-1],
            commune_keys=commune_keys, commune_lists=list(dict.fromkeys(commune_lists))))
    return infos


def _table_exists(con: duckdb.DuckDBPyConnection, name: str | None, schema: str = "main") -> bool:
    if not name:
        return False
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                            [schema, name]).fetchone()[0])


def _enumerator_of(submitted_by: str, username: str) -> str:
    """SQL for a submission's enumerator from the texts of its ``_submitted_by`` (the
    KoboToolbox account) and of the form's username question, in that order."""
    return (f"coalesce(nullif(trim({submitted_by}), ''), nullif(trim({username}), ''), "
            f"{sql_literal(UNKNOWN_ENUMERATOR)})")


def _payload_enumerator_texts(info: _FormInfo) -> str:
    """SQL for the two texts (a list) a raw submission ``r`` of this form names its
    enumerator by, read in one call: each JSON function parses its whole vector of
    payloads (some 8x their text), and two calls held two parses at once."""
    return f"json_extract_string(r.payload, ['$._submitted_by', {sql_literal(json_path(info.username_key))}])"


def _facts(con: duckdb.DuckDBPyConnection, info: _FormInfo) -> tuple[str, list[Any]]:
    """A CTE ``facts``: one row per current submission of the form, with its enumerator,
    commune, times and whether it is clean, quarantined or has a warning."""
    # The answers are read from the payload in one expression, before the joins: a join
    # would otherwise carry every payload along (out of memory on a large project).
    paths = ["$._submitted_by", json_path(info.username_key), json_path(info.start_key), json_path(info.end_key),
             json_path(info.today_key), *[json_path(k) for k in info.commune_keys]]
    answers = "json_extract_string(r.payload, [" + ", ".join(sql_literal(p) for p in paths) + "])"
    commune = ("coalesce(" + ", ".join(f"a[{6 + i}]" for i in range(len(info.commune_keys))) + ")"
               if info.commune_keys else "CAST(NULL AS VARCHAR)")
    clean_join = (f"LEFT JOIN (SELECT DISTINCT root_uuid FROM main.{quote(info.main_table)}) c ON c.root_uuid = s.root_uuid"
                  if _table_exists(con, info.main_table) else
                  "LEFT JOIN (SELECT NULL::VARCHAR AS root_uuid WHERE false) c ON c.root_uuid = s.root_uuid")
    sql = f"""
    WITH flags AS (
        SELECT asset_uid, root_uuid, bool_or(severity = 'error') AS has_error,
               bool_or(severity = 'warning') AS has_warning
        FROM quality.issues WHERE resolved_at IS NULL GROUP BY asset_uid, root_uuid
    ), submitted AS MATERIALIZED (
        SELECT asset_uid, root_uuid, submission_id, submission_time,
               {_enumerator_of("a[1]", "a[2]")} AS enumerator,
               nullif(trim({commune}), '') AS commune,
               try_cast(a[3] AS TIMESTAMPTZ) AS started,
               try_cast(a[4] AS TIMESTAMPTZ) AS ended,
               try_cast(a[5] AS DATE) AS today
        FROM (SELECT r.asset_uid, r.root_uuid, r.submission_id, r.submission_time, {answers} AS a
              FROM raw.submissions r WHERE r.form_id = ? AND {CURRENT})
    ), base AS (
        SELECT s.*, c.root_uuid IS NOT NULL AS is_clean,
               coalesce(f.has_error, false) AS has_error,
               coalesce(f.has_warning, false) AS has_warning
        FROM submitted s
        {clean_join}
        LEFT JOIN flags f ON f.asset_uid = s.asset_uid AND f.root_uuid = s.root_uuid
    ), facts AS (
        SELECT *, coalesce(today, CAST(timezone('UTC', started) AS DATE),
                           CAST(timezone('UTC', submission_time) AS DATE)) AS work_day
        FROM base
    )"""
    return sql, [info.form_id]


def _commune_labels(con: duckdb.DuckDBPyConnection, info: _FormInfo) -> dict[str, str]:
    """Commune code -> name (French if there is one), from the stored choice labels."""
    if not info.commune_lists or not _table_exists(con, "latest_choice_labels", "meta"):
        return {}
    rows = con.execute(
        "SELECT choice_name, arg_min(label, CASE WHEN language = 'fr' THEN 0 ELSE 1 END) "
        "FROM meta.latest_choice_labels WHERE form_id = ? AND list_contains(?, list_name) AND label IS NOT NULL "
        "GROUP BY choice_name", [info.form_id, info.commune_lists]).fetchall()
    return {code: label for code, label in rows}


def _answers_sql(info: _FormInfo) -> tuple[str, str]:
    """SQL for (``t``: the texts of a raw submission ``r``'s own keys, ``_submitted_by``
    and the username first; its answers): the answers (its repeats' included) as a list of
    texts, lower-cased and trimmed, empty ones left out. The submission's own keys are read
    in one parse: each JSON function call holds the parse of 2,048 documents, and a few
    more ran out of memory."""
    own = ["$._submitted_by", json_path(info.username_key)] + [json_path(k) for k in info.answer_keys.get(None, [])]
    lists = ["t[3:]"]
    for rows, keys in info.answer_keys.items():
        if rows is not None:
            paths = "[" + ", ".join(sql_literal(json_path(k)) for k in keys) + "]"
            lists.append(f"flatten(list_transform(json_extract(r.payload, {sql_literal(rows)}), "
                         f"lambda row: json_extract_string(row, {paths})))")
    answers = f"list_filter(list_transform(flatten([{', '.join(lists)}]), lambda a: lower(trim(a))), lambda a: a <> '')"
    texts = "json_extract_string(r.payload, [" + ", ".join(sql_literal(p) for p in own) + "])"
    return texts, answers


# Counted per submission, then summed.
DONT_KNOW_SQL = """
SELECT enumerator, sum(answered), sum(dont_know)
FROM (SELECT {enumerator} AS enumerator, len(answers) AS answered,
             len(list_filter(answers, lambda a: list_contains($values, a)
                                                OR list_has_any(string_split(a, ' '), $values))) AS dont_know
      FROM (SELECT t, {answers} AS answers
            FROM (SELECT r.payload, {texts} AS t FROM raw.submissions r
                  WHERE r.form_id = $form_id AND {current}) AS r))
GROUP BY enumerator"""


def _dont_know_counts(con: duckdb.DuckDBPyConnection, info: _FormInfo,
                      values: list[str]) -> dict[str, tuple[int, int]]:
    """Enumerator -> (answers, "don't know" answers), over every answer the form's
    dictionaries know (repeat groups included); an answer counts when it, or one of its
    words, is in ``values``."""
    texts, answers = _answers_sql(info)
    sql = DONT_KNOW_SQL.format(enumerator=_enumerator_of("t[1]", "t[2]"), texts=texts, answers=answers,
                               current=CURRENT)
    rows = con.execute(sql, {"values": values, "form_id": info.form_id}).fetchall()
    return {enumerator: (int(answers or 0), int(dont_know or 0)) for enumerator, answers, dont_know in rows}


# The form's totals, its enumerators and its communes, each sorted as the report shows them.
FACT_GROUPS_SQL = """
SELECT CASE grouping(enumerator, commune) WHEN 3 THEN 'form' WHEN 1 THEN 'enumerator' ELSE 'commune' END,
       enumerator, commune, count(*), count(*) FILTER (WHERE is_clean), count(*) FILTER (WHERE has_error),
       count(*) FILTER (WHERE has_warning), max(submission_time), count(DISTINCT work_day),
       median(epoch(ended - started) / 60.0) FILTER (WHERE ended >= started)
FROM facts
GROUP BY GROUPING SETS ((), (enumerator), (commune))
ORDER BY grouping(enumerator, commune) DESC, enumerator, commune NULLS LAST"""


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def build_report_data(con: duckdb.DuckDBPyConnection, dont_know_values: Iterable[str] = DONT_KNOW_VALUES,
                      now: dt.datetime | None = None, dont_know: bool = True,
                      open_issues: bool = True) -> ReportData:
    """Everything the report shows, computed with SQL on the warehouse (a read-only
    connection is enough). Without ``dont_know``, no "don't know" counts (they read every
    answer of every submission: 30 s at 1,000,000); without ``open_issues``, no list of
    the open issues (write_report reads them as it writes them).
    report_markdown needs neither."""
    values = sorted({str(v).strip().lower() for v in dont_know_values if str(v).strip()})
    data = ReportData(generated_at=now or dt.datetime.now(dt.timezone.utc), dont_know_values=tuple(values))
    issue_counts = {form_id: (errors, warnings) for form_id, errors, warnings in con.execute(
        "SELECT form_id, count(*) FILTER (WHERE severity = 'error'), count(*) FILTER (WHERE severity = 'warning') "
        "FROM quality.issues WHERE resolved_at IS NULL GROUP BY form_id").fetchall()}
    infos = _form_infos(con)
    for info in infos:
        facts, parameters = _facts(con, info)
        # One pass over the payloads for the three groupings: each pass parses every one.
        rows = con.execute(f"{facts} {FACT_GROUPS_SQL}", parameters).fetchall()
        errors, warnings = issue_counts.get(info.form_id, (0, 0))
        dont_know_counts = _dont_know_counts(con, info, values) if dont_know else {}
        labels = _commune_labels(con, info)
        for grouping, enumerator, commune, submissions, clean, with_errors, with_warnings, last, days, median in rows:
            if grouping == "form":
                data.forms.append(FormSummary(info.form_id, info.title, submissions, clean, with_errors, errors,
                                              warnings, last))
            elif grouping == "enumerator":
                answers, dk = dont_know_counts.get(enumerator, (0, 0))
                data.enumerators.append(EnumeratorStats(
                    form_id=info.form_id, enumerator=enumerator, submissions=submissions, days_worked=days,
                    per_day=round(submissions / days, 2) if days else float(submissions),
                    median_minutes=round(float(median), 1) if median is not None else None,
                    with_errors=with_errors, error_rate=_rate(with_errors, submissions), with_warnings=with_warnings,
                    answers=answers, dont_know=dk, dont_know_rate=_rate(dk, answers)))
            else:
                label = NO_COMMUNE if commune is None else labels.get(commune, commune)
                data.communes.append(CommuneCoverage(info.form_id, commune, label, submissions, clean, with_errors))

    data.checks = [CheckCount(*row) for row in con.execute(
        """SELECT form_id, check_code, severity, count(*) AS open_issues, count(DISTINCT root_uuid),
                  coalesce(string_agg(DISTINCT column_name, ', ' ORDER BY column_name), ''),
                  arg_min(message, issue_id)
           FROM quality.issues WHERE resolved_at IS NULL
           GROUP BY form_id, check_code, severity
           ORDER BY form_id, open_issues DESC, severity, check_code""").fetchall()]
    if open_issues:
        data.open_issues = list(_open_issues(con, infos))
    return data


OPEN_ISSUES_SQL = """
WITH open_issues AS (
    SELECT * FROM quality.issues i WHERE i.resolved_at IS NULL {where}
), enumerators AS (
    {enumerators}
)
SELECT i.issue_id, i.form_id, i.submission_id, i.root_uuid, i.table_name, i.column_name, i.row_key, i.check_code,
       i.severity, i.value, i.message, e.enumerator, i.detected_at
FROM open_issues i
LEFT JOIN enumerators e ON e.asset_uid = i.asset_uid AND e.root_uuid = i.root_uuid
ORDER BY CASE i.severity WHEN 'error' THEN 0 ELSE 1 END, i.form_id, i.submission_id, i.issue_id"""
# One form's part of ``enumerators``: read from the payloads of the submissions with open
# issues only, before any join (a join carrying the payloads ran out of memory at 1,000,000).
OPEN_ISSUE_ENUMERATORS_SQL = """
SELECT asset_uid, root_uuid, {enumerator} AS enumerator
FROM (SELECT r.asset_uid, r.root_uuid, {texts} AS a
      FROM raw.submissions r
      WHERE r.rowid IN (SELECT k.rowid FROM raw.submissions k
                        JOIN (SELECT DISTINCT asset_uid, root_uuid FROM open_issues) o USING (asset_uid, root_uuid)
                        WHERE k.form_id = {form_id} AND k.is_current))"""


OPEN_ISSUES_CHUNK = 10_000


def _open_issues(con: duckdb.DuckDBPyConnection, infos: list[_FormInfo], errors_only: bool = False,
                 limit: int | None = None) -> Iterator[OpenIssue]:
    """The open issues (``errors_only``: the open errors; ``limit``: the first ones), with
    their submissions' enumerators, read a chunk at a time."""
    enumerators = " UNION ALL ".join(
        OPEN_ISSUE_ENUMERATORS_SQL.format(enumerator=_enumerator_of("a[1]", "a[2]"), texts=_payload_enumerator_texts(info),
                                          form_id=sql_literal(info.form_id))
        for info in infos) or "SELECT NULL::VARCHAR AS asset_uid, NULL::VARCHAR AS root_uuid, NULL::VARCHAR AS enumerator"
    sql = OPEN_ISSUES_SQL.format(where="AND i.severity = 'error'" if errors_only else "", enumerators=enumerators)
    cursor = con.execute(sql + ("" if limit is None else f" LIMIT {int(limit)}"))
    while rows := cursor.fetchmany(OPEN_ISSUES_CHUNK):
        yield from (OpenIssue(*row) for row in rows)


# -- markdown -----------------------------------------------------------------------------
def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(data: ReportData, top_checks: int = 5) -> str:
    """A short summary for the Prefect flow's artifact."""
    lines = [
        "# Rapport qualité / Quality report",
        "",
        f"Généré le / Made at: {_stamp(data.generated_at)} UTC",
        "",
        "| Formulaire / Form | Reçues / Received | Propres / Clean | Quarantaine / Quarantined | "
        "Erreurs / Errors | Avertissements / Warnings | Dernière / Last |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for f in data.forms:
        lines.append(f"| {_md(f.form_id)} | {f.received} | {f.clean} | {f.quarantined} | {f.open_errors} | "
                     f"{f.open_warnings} | {_stamp(f.last_submission) if f.last_submission else '-'} |")
    lines.append(f"| **Total** | {sum(f.received for f in data.forms)} | {sum(f.clean for f in data.forms)} | "
                 f"{sum(f.quarantined for f in data.forms)} | {sum(f.open_errors for f in data.forms)} | "
                 f"{sum(f.open_warnings for f in data.forms)} | |")
    checks = sorted(data.checks, key=lambda c: (-c.open_issues, c.form_id, c.check_code))[:top_checks]
    if checks:
        lines += ["", "## Contrôles les plus fréquents / Most frequent checks", "",
                  "| Formulaire / Form | Contrôle / Check | Gravité / Severity | Problèmes / Issues | Soumissions / Submissions |",
                  "|---|---|---|---:|---:|"]
        lines += [f"| {_md(c.form_id)} | {_md(c.check_code)} | {c.severity} | {c.open_issues} | {c.submissions} |"
                  for c in checks]
    else:
        lines += ["", "Aucun problème ouvert / No open issues."]
    flagged = sorted((e for e in data.enumerators if e.with_errors),
                     key=lambda e: (-e.error_rate, -e.with_errors, e.form_id, e.enumerator))[:top_checks]
    if flagged:
        lines += ["", "## Taux d'erreur le plus élevé / Highest error rates", ""]
        lines += [f"- {_md(e.enumerator)} ({_md(e.form_id)}): {e.with_errors}/{e.submissions} "
                  f"({e.error_rate:.0%})" for e in flagged]
    return "\n".join(lines) + "\n"


def _stamp(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M")


# -- workbook -----------------------------------------------------------------------------
def _new_workbook(path: Path) -> xlsxwriter.Workbook:
    """Text from the field stays text: "=HYPERLINK(...)" in an answer is never a formula.
    Rows go to disk as soon as the next one starts (``constant_memory``): xlsxwriter
    otherwise holds every cell until ``close()``, 900 MB for 400,000 open issues. Cells
    must then come in row order; see _RowOrderedSheet."""
    return xlsxwriter.Workbook(str(path), {"strings_to_formulas": False, "strings_to_urls": False,
                                           "strings_to_numbers": False, "remove_timezone": True,
                                           "constant_memory": True})


class _RowOrderedSheet:
    """A worksheet whose cells may be written in any order until ``flush()``, which writes
    them sorted by row (a constant_memory sheet drops a cell above its last row); after
    it, cells go straight to the sheet and must come in row order. For the small sheets,
    whose title, side table and chart data are written after their main table."""

    _HELD = frozenset({"write_string", "write_number", "write_boolean", "write_datetime", "set_row"})

    def __init__(self, sheet) -> None:
        self._sheet = sheet
        self._held: list[tuple[int, int, str, tuple[Any, ...]]] | None = []

    def __getattr__(self, name: str) -> Any:
        if name in self._HELD and self._held is not None:
            held = self._held
            return lambda row, *args: held.append((row, len(held), name, args))
        return getattr(self._sheet, name)

    def flush(self) -> "_RowOrderedSheet":
        for row, _, name, args in sorted(self._held or []):
            getattr(self._sheet, name)(row, *args)
        self._held = None
        return self


class _Formats:
    def __init__(self, workbook: xlsxwriter.Workbook):
        self.title = workbook.add_format({"bold": True, "font_size": 14})
        self.note = workbook.add_format({"italic": True, "font_color": "#595959"})
        self.header = workbook.add_format({"bold": True, "text_wrap": True, "valign": "top", "bg_color": "#DDEBF7",
                                           "border": 1})
        self.editable = workbook.add_format({"bold": True, "text_wrap": True, "valign": "top", "bg_color": "#FFF2CC",
                                             "border": 1})
        self.text = workbook.add_format({"num_format": "@"})
        self.wrap = workbook.add_format({"text_wrap": True, "valign": "top"})
        self.stamp = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm"})
        self.percent = workbook.add_format({"num_format": "0.0%"})
        self.decimal = workbook.add_format({"num_format": "0.0"})
        self.bold = workbook.add_format({"bold": True})
        self.bold_percent = workbook.add_format({"bold": True, "num_format": "0.0%"})


def _write(sheet, row: int, column: int, value: Any, cell_format=None, formats: _Formats | None = None) -> None:
    """One cell, by type; text always with write_string."""
    if value is None:
        return
    if isinstance(value, bool):
        sheet.write_boolean(row, column, value, cell_format)
    elif isinstance(value, (int, float)):
        sheet.write_number(row, column, value, cell_format)
    elif isinstance(value, dt.datetime):
        naive = value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value
        sheet.write_datetime(row, column, naive, cell_format or (formats.stamp if formats else None))
    elif isinstance(value, dt.date):
        sheet.write_datetime(row, column, dt.datetime(value.year, value.month, value.day), cell_format)
    else:
        sheet.write_string(row, column, str(value), cell_format)


def _sheet(workbook, formats: _Formats, key: str, headings: list[str], widths: list[int],
           note: str = "") -> _RowOrderedSheet:
    sheet = _RowOrderedSheet(workbook.add_worksheet(SHEETS[key]))
    sheet.write_string(0, 0, TITLES[key], formats.title)
    if note:
        sheet.write_string(1, 0, note, formats.note)
    for index, (heading, width) in enumerate(zip(headings, widths)):
        sheet.write_string(HEADER_ROW, index, heading, formats.header)
        sheet.set_column(index, index, width)
    sheet.set_row(HEADER_ROW, 48)
    sheet.freeze_panes(HEADER_ROW + 1, 0)
    return sheet


def _cell(sheet_name: str, row: int, column: int) -> str:
    return f"='{sheet_name}'!{xl_rowcol_to_cell(row, column, row_abs=True, col_abs=True)}"


def _range(sheet_name: str, first_row: int, first_column: int, last_row: int, last_column: int) -> str:
    return "='" + sheet_name + "'!" + xl_range_abs(first_row, first_column, last_row, last_column)


def _write_summary(workbook, formats: _Formats, data: ReportData) -> _RowOrderedSheet:
    name = SHEETS["summary"]
    sheet = _sheet(workbook, formats, "summary", SUMMARY_HEADINGS, [26, 34, 14, 12, 14, 14, 14, 16, 20])
    sheet.write_string(1, 0, "Rapport généré le (UTC) / Report made at (UTC)", formats.bold)
    _write(sheet, 1, 2, data.generated_at, formats.stamp)
    row = HEADER_ROW + 1
    for f in data.forms:
        for column, value in enumerate([f.form_id, f.title, f.received, f.clean, f.quarantined]):
            _write(sheet, row, column, value)
        _write(sheet, row, 5, _rate(f.quarantined, f.received), formats.percent)
        _write(sheet, row, 6, f.open_errors)
        _write(sheet, row, 7, f.open_warnings)
        _write(sheet, row, 8, f.last_submission, formats.stamp)
        row += 1
    last_form_row = row - 1
    totals = [sum(getattr(f, a) for f in data.forms) for a in ("received", "clean", "quarantined")]
    sheet.write_string(row, 0, "Total", formats.bold)
    for column, value in enumerate(totals, start=2):
        _write(sheet, row, column, value, formats.bold)
    _write(sheet, row, 5, _rate(totals[2], totals[0]), formats.bold_percent)
    _write(sheet, row, 6, sum(f.open_errors for f in data.forms), formats.bold)
    _write(sheet, row, 7, sum(f.open_warnings for f in data.forms), formats.bold)
    notes = [
        "Notes",
        "Reçues : versions actuelles non supprimées dans raw.submissions. / Received: current, not deleted "
        "versions in raw.submissions.",
        "Propres : dans la table propre du formulaire ; en quarantaine : au moins une erreur ouverte. / Clean: in the "
        "form's clean table; quarantined: at least one open error.",
        "Erreurs et avertissements : problèmes ouverts dans quality.issues. / Errors and warnings: open problems in "
        "quality.issues.",
        f"Réponses « ne sait pas » : {', '.join(data.dont_know_values) or '-'}. / \"Don't know\" answers: "
        f"{', '.join(data.dont_know_values) or '-'}.",
    ]
    for offset, text in enumerate(notes):
        sheet.write_string(row + 2 + offset, 0, text, formats.bold if offset == 0 else formats.note)
    if data.forms:
        chart = workbook.add_chart({"type": "column", "subtype": "stacked"})
        for column, colour in ((3, "#70AD47"), (4, "#C00000")):
            chart.add_series({
                "name": _cell(name, HEADER_ROW, column),
                "categories": _range(name, HEADER_ROW + 1, 0, last_form_row, 0),
                "values": _range(name, HEADER_ROW + 1, column, last_form_row, column),
                "fill": {"color": colour},
            })
        chart.set_title({"name": "Soumissions par formulaire / Submissions per form"})
        chart.set_legend({"position": "bottom"})
        chart.set_size({"width": 560, "height": 320})
        sheet.insert_chart(HEADER_ROW, len(SUMMARY_HEADINGS) + 1, chart)
    return sheet


def _write_checks(workbook, formats: _Formats, data: ReportData) -> _RowOrderedSheet:
    name = SHEETS["checks"]
    sheet = _sheet(workbook, formats, "checks", CHECK_HEADINGS, [24, 26, 20, 14, 16, 24, 70],
                   "Problèmes non résolus, par formulaire et contrôle. / Unresolved problems, by form and check.")
    row = HEADER_ROW + 1
    for c in data.checks:
        values = [c.form_id, c.check_code, SEVERITY_LABELS.get(c.severity, c.severity), c.open_issues, c.submissions,
                  c.columns, c.example_message]
        for column, value in enumerate(values):
            _write(sheet, row, column, value)
        row += 1
    if not data.checks:
        sheet.write_string(row, 0, "Aucun problème ouvert / No open issues", formats.note)
        return sheet
    sheet.autofilter(HEADER_ROW, 0, row - 1, len(CHECK_HEADINGS) - 1)
    chart = workbook.add_chart({"type": "bar"})
    for column, colour in ((3, "#C00000"), (4, "#F4B183")):
        chart.add_series({
            "name": _cell(name, HEADER_ROW, column),
            # Two levels: the form, then the check (the cache xlsxwriter cannot read from a 2-column range).
            "categories": _range(name, HEADER_ROW + 1, 0, row - 1, 1),
            "categories_data": [[c.form_id for c in data.checks], [c.check_code for c in data.checks]],
            "values": _range(name, HEADER_ROW + 1, column, row - 1, column),
            "fill": {"color": colour},
        })
    chart.set_title({"name": "Problèmes ouverts par contrôle / Open issues by check"})
    chart.set_y_axis({"reverse": True})
    chart.set_legend({"position": "bottom"})
    chart.set_size({"width": 640, "height": max(320, 120 + 28 * len(data.checks))})
    sheet.insert_chart(HEADER_ROW, len(CHECK_HEADINGS) + 1, chart)
    return sheet


def _write_enumerators(workbook, formats: _Formats, data: ReportData) -> _RowOrderedSheet:
    name = SHEETS["enumerators"]
    sheet = _sheet(workbook, formats, "enumerators", ENUMERATOR_HEADINGS, [24, 22, 12, 12, 14, 14, 14, 12, 16, 12, 16, 14],
                   "Par formulaire et enquêteur (_submitted_by, sinon username). / Per form and enumerator "
                   "(_submitted_by, else username).")
    row = HEADER_ROW + 1
    for e in data.enumerators:
        values = [(e.form_id, None), (e.enumerator, None), (e.submissions, None), (e.days_worked, None),
                  (e.per_day, formats.decimal), (e.median_minutes, formats.decimal), (e.with_errors, None),
                  (e.error_rate, formats.percent), (e.with_warnings, None), (e.answers, None), (e.dont_know, None),
                  (e.dont_know_rate, formats.percent)]
        for column, (value, cell_format) in enumerate(values):
            _write(sheet, row, column, value, cell_format)
        row += 1
    if not data.enumerators:
        sheet.write_string(row, 0, "Aucune soumission / No submissions", formats.note)
        return sheet
    sheet.autofilter(HEADER_ROW, 0, row - 1, len(ENUMERATOR_HEADINGS) - 1)

    # Beside the table, submissions per enumerator with one column per form: the chart's data.
    forms = list(dict.fromkeys(e.form_id for e in data.enumerators))
    people = sorted({e.enumerator for e in data.enumerators})
    counts = {(e.enumerator, e.form_id): e.submissions for e in data.enumerators}
    left = len(ENUMERATOR_HEADINGS) + 1
    sheet.write_string(HEADER_ROW - 1, left, "Soumissions par enquêteur / Submissions per enumerator", formats.bold)
    sheet.write_string(HEADER_ROW, left, "Enquêteur / Enumerator", formats.header)
    sheet.set_column(left, left, 22)
    for index, form_id in enumerate(forms, start=1):
        sheet.write_string(HEADER_ROW, left + index, form_id, formats.header)
        sheet.set_column(left + index, left + index, 14)
    sheet.write_string(HEADER_ROW, left + len(forms) + 1, "Total", formats.header)
    for offset, person in enumerate(people, start=1):
        sheet.write_string(HEADER_ROW + offset, left, person)
        for index, form_id in enumerate(forms, start=1):
            sheet.write_number(HEADER_ROW + offset, left + index, counts.get((person, form_id), 0))
        sheet.write_number(HEADER_ROW + offset, left + len(forms) + 1,
                           sum(counts.get((person, f), 0) for f in forms), formats.bold)
    chart = workbook.add_chart({"type": "column", "subtype": "stacked"})
    for index in range(1, len(forms) + 1):
        chart.add_series({
            "name": _cell(name, HEADER_ROW, left + index),
            "categories": _range(name, HEADER_ROW + 1, left, HEADER_ROW + len(people), left),
            "values": _range(name, HEADER_ROW + 1, left + index, HEADER_ROW + len(people), left + index),
        })
    chart.set_title({"name": "Soumissions par enquêteur / Submissions per enumerator"})
    chart.set_legend({"position": "bottom"})
    chart.set_size({"width": max(560, 40 * len(people) + 160), "height": 340})
    sheet.insert_chart(HEADER_ROW + len(people) + 2, left, chart)
    return sheet


def _write_coverage(workbook, formats: _Formats, data: ReportData) -> _RowOrderedSheet:
    name = SHEETS["coverage"]
    sheet = _sheet(workbook, formats, "coverage", COVERAGE_HEADINGS, [24, 22, 18, 12, 12, 14, 14],
                   "Commune répondue dans chaque soumission reçue. / Commune answered in each received submission.")
    row = HEADER_ROW + 1
    for c in data.communes:
        values = [c.form_id, c.label, c.commune, c.submissions, c.clean, c.quarantined]
        for column, value in enumerate(values):
            _write(sheet, row, column, value)
        _write(sheet, row, 6, _rate(c.quarantined, c.submissions), formats.percent)
        row += 1
    if not data.communes:
        sheet.write_string(row, 0, "Aucune soumission / No submissions", formats.note)
        return sheet
    sheet.autofilter(HEADER_ROW, 0, row - 1, len(COVERAGE_HEADINGS) - 1)
    chart = workbook.add_chart({"type": "column", "subtype": "stacked"})
    for column, colour in ((4, "#70AD47"), (5, "#C00000")):
        chart.add_series({
            "name": _cell(name, HEADER_ROW, column),
            "categories": _range(name, HEADER_ROW + 1, 0, row - 1, 1),  # the form, then the commune
            "categories_data": [[c.form_id for c in data.communes], [c.label for c in data.communes]],
            "values": _range(name, HEADER_ROW + 1, column, row - 1, column),
            "fill": {"color": colour},
        })
    chart.set_title({"name": "Couverture par commune / Coverage by commune"})
    chart.set_legend({"position": "bottom"})
    chart.set_size({"width": max(640, 32 * len(data.communes) + 160), "height": 380})
    sheet.insert_chart(HEADER_ROW, len(COVERAGE_HEADINGS) + 1, chart)
    return sheet


def _open_issue_room() -> int:
    """How many open issues fit in their sheet, under its headings."""
    return EXCEL_MAX_ROWS - HEADER_ROW - 1


def _write_open_issues(workbook, formats: _Formats, issues: Iterable[OpenIssue], total: int) -> None:
    """``issues``: the open issues in order, ``total`` of them; those beyond the sheet's
    room are counted in its note."""
    room = _open_issue_room()
    note = "Une ligne par problème ouvert, erreurs d'abord. / One row per open issue, errors first."
    if total > room:
        note += f" {total - room} lignes omises (limite d'Excel) / rows left out (Excel's limit)."
    sheet = _sheet(workbook, formats, "open_issues", OPEN_ISSUE_HEADINGS, [24, 12, 44, 20, 20, 8, 22, 20, 18, 80, 16, 18],
                   note).flush()
    row = HEADER_ROW + 1
    for i in itertools.islice(issues, room):
        values = [i.form_id, i.submission_id, i.root_uuid, i.table_name, i.column_name, i.row_key, i.check_code,
                  SEVERITY_LABELS.get(i.severity, i.severity), i.value, i.message, i.enumerator]
        for column, value in enumerate(values):
            if column == 8 and value is not None:
                sheet.write_string(row, column, str(value))  # a value is text, even "007" or "1e5"
            else:
                _write(sheet, row, column, value)
        _write(sheet, row, 11, i.detected_at, formats.stamp)
        row += 1
    if row > HEADER_ROW + 1:
        sheet.autofilter(HEADER_ROW, 0, row - 1, len(OPEN_ISSUE_HEADINGS) - 1)
    else:
        sheet.write_string(row, 0, "Aucun problème ouvert / No open issues", formats.note)


def write_report_workbook(data: ReportData, out_path: str | Path,
                          open_issues: Iterable[OpenIssue] | None = None) -> Path:
    """Writes already computed report data; ``open_issues``: read as they are written
    (default: ``data.open_issues``)."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = _new_workbook(path)
    workbook.set_properties({"title": "Rapport qualité / Quality report", "author": "Terrain"})
    formats = _Formats(workbook)
    for write_sheet in (_write_summary, _write_checks, _write_enumerators, _write_coverage):
        write_sheet(workbook, formats, data).flush()
    _write_open_issues(workbook, formats, data.open_issues if open_issues is None else open_issues,
                       sum(c.open_issues for c in data.checks))
    workbook.close()
    return path


REPORT_NOT_WRITTEN = ("le rapport n'a pas été écrit", "the report was not written")
TEMPLATE_NOT_WRITTEN = ("le modèle de corrections n'a pas été écrit", "the corrections template was not written")


@contextmanager
def _reading(warehouse_path: str | Path) -> Iterator[Warehouse]:
    """The warehouse, read-only, for a report: DuckDB's two threads each sort within the
    memory limit, and 400,000 open issues did not fit them (one thread spills to disk)."""
    with Warehouse(warehouse_path, read_only=True) as warehouse:
        warehouse.con.execute("SET threads = 1")
        yield warehouse


def write_report(warehouse_path: str | Path, out_path: str | Path,
                 dont_know_values: Iterable[str] = DONT_KNOW_VALUES) -> Path:
    """Writes the quality report of the warehouse at ``warehouse_path`` to ``out_path`` (.xlsx)."""
    with _reading(warehouse_path) as warehouse, warehouse.reading(REPORT_NOT_WRITTEN):
        data = build_report_data(warehouse.con, dont_know_values, open_issues=False)
        issues = _open_issues(warehouse.con, _form_infos(warehouse.con), limit=_open_issue_room())
        return write_report_workbook(data, out_path, issues)


# -- corrections template -----------------------------------------------------------------
def corrections_template_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """One row per open error, ready for a data manager to fill new_value, reason and author,
    then one per recorded correction that is not applied (outdated, or targeting nothing)."""
    return list(_template_rows(con)) + list(_unapplied_corrections(con))


def _unapplied_corrections(con: duckdb.DuckDBPyConnection) -> Iterator[dict[str, Any]]:
    rows = con.execute(
        "SELECT c.root_uuid, c.field, c.row_key, c.status, c.problem, c.new_value, r.form_id, r.submission_id "
        "FROM meta.corrections c LEFT JOIN raw.submissions r ON r.root_uuid = c.root_uuid AND r.is_current "
        "WHERE c.status IN ('outdated', 'no_target') ORDER BY ALL").fetchall()
    for root, name, row_key, status, problem, value, form_id, submission_id in rows:
        yield {
            "root_uuid": root, "field": name, "row_key": row_key, "new_value": "", "reason": "", "author": "",
            "form_id": form_id or "", "table": "", "submission_id": submission_id, "enumerator": "",
            "check": f"correction_{status}", "current_value": "",
            "message": f"Correction non appliquée ({value}) : réécrivez-la ou écrivez (annuler) / "
                       f"Correction not applied ({value}): {problem}",
        }


def _template_rows(con: duckdb.DuckDBPyConnection) -> Iterator[dict[str, Any]]:
    for issue in _open_issues(con, _form_infos(con), errors_only=True):
        yield {
            "root_uuid": issue.root_uuid, "field": issue.column_name or "", "row_key": issue.row_key or "",
            "new_value": "", "reason": "", "author": "",
            "form_id": issue.form_id, "table": issue.table_name, "submission_id": issue.submission_id,
            "enumerator": issue.enumerator or "", "check": issue.check_code,
            "current_value": issue.value if issue.value is not None else "", "message": issue.message,
        }


TEMPLATE_HELP = [
    ("Mode d'emploi / How to use", True),
    ("", False),
    ("1. Remplissez nouvelle_valeur, raison et auteur sur les lignes à corriger (colonnes jaunes). / Fill in "
     "new_value, reason and author on the rows to correct (yellow columns).", False),
    ("2. Une ligne dont nouvelle_valeur est vide est ignorée. Pour effacer une réponse, écrivez (vide) ; pour annuler une "
     "correction déjà faite, (annuler). / A row with an empty new_value is skipped. To erase an answer, write "
     "(empty); to cancel a correction made before, (undo).", False),
    ("3. nouvelle_valeur est la réponse telle que le formulaire l'enregistre (le code du choix, pas son libellé ; "
     "plusieurs choix séparés par des espaces ; dates AAAA-MM-JJ). / new_value is the answer as the form stores "
     "it (the choice's code, not its label; several choices separated by spaces; dates YYYY-MM-DD).", False),
    ("4. rang désigne la ligne d'un groupe répété (par ex. 2, ou 1.3) ; vide pour le reste du formulaire. / "
     "row_key is the row of a repeat group (e.g. 2, or 1.3); empty for the rest of the form.", False),
    ("5. Les autres colonnes sont du contexte : elles ne sont pas lues. / The other columns are context: they are "
     "not read.", False),
    ("6. Appliquez le fichier avec : terrain corrections <fichier> ; les soumissions corrigées sont vérifiées de "
     "nouveau aussitôt, et sortent de la quarantaine si elles passent alors tous les contrôles. Les corrections "
     "restent appliquées à chaque synchronisation. / Apply the file with: terrain corrections <file>; the "
     "corrected submissions are checked again at once, and leave the quarantine if they then pass every check. "
     "The corrections stay applied at every sync.", False),
    ("7. Chaque fichier s'ajoute aux corrections déjà enregistrées : ce modèle ne liste que les erreurs ouvertes, "
     "les corrections d'hier restent. Si la réponse change sur le serveur après une correction, celle-ci n'est "
     "plus appliquée et est signalée. / Each file adds to the corrections already recorded: this template lists "
     "the open errors only, yesterday's corrections stay. If the answer changes on the server after a correction, "
     "the correction is no longer applied and is reported.", False),
]


def _not_over_unapplied_corrections(con: duckdb.DuckDBPyConnection, path: Path) -> Path:
    """Where the template goes: ``path``, unless the file there holds corrections a data
    manager wrote and did not apply yet (yesterday's template, filled in); then beside it,
    with the date and time in its name, so that work is not written over."""
    if not path.exists():
        return path
    try:
        written = read_corrections(path)
    except CorrectionsError:
        written = []
    recorded = set(con.execute("SELECT root_uuid, field, row_key, new_value FROM meta.corrections").fetchall())
    corrected = {answer[:3] for answer in recorded}

    def not_applied(answer: tuple[str, str, str], row: dict[str, str]) -> bool:
        if row["new_value"].lower() in UNDO:  # applied once no correction of that answer is recorded
            return answer in corrected
        return (*answer, row["new_value"]) not in recorded

    unapplied = [row for answer, row in last_line_of_each_answer(written).items() if not_applied(answer, row)]
    if not unapplied:
        return path
    beside = path.with_name(f"{path.stem}_{dt.datetime.now():%Y-%m-%d_%H%M%S}{path.suffix}")
    log.warning("%s contient %d correction(s) pas encore appliquée(s) : il est laissé tel quel, et le nouveau "
                "modèle est %s (appliquez-le avec : terrain corrections %s) / %s holds %d correction(s) not applied "
                "yet: it is left as it is, and the new template is %s (apply it with: terrain corrections %s)",
                path, len(unapplied), beside, path, path, len(unapplied), beside, path)
    return beside


def write_corrections_template(warehouse_path: str | Path, out_path: str | Path) -> Path:
    """A corrections file (XLSX) with one row per open error; its first sheet is read back
    as is by validation/corrections.py. The rows are written as the query gives them."""
    path = Path(out_path)
    with _reading(warehouse_path) as warehouse, warehouse.reading(TEMPLATE_NOT_WRITTEN):
        path = _not_over_unapplied_corrections(warehouse.con, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        workbook = _new_workbook(path)
        formats = _Formats(workbook)
        sheet = workbook.add_worksheet("Corrections")
        widths = {"root_uuid": 44, "field": 20, "row_key": 8, "new_value": 20, "reason": 30, "author": 16,
                  "form_id": 24, "table": 20, "submission_id": 12, "enumerator": 14, "check": 20,
                  "current_value": 18, "message": 80}
        for column, name in enumerate(TEMPLATE_COLUMNS):
            sheet.write_string(0, column, column_heading(name, TEMPLATE_FRENCH[name]),
                               formats.editable if name in TEMPLATE_EDITABLE else formats.header)
            # Typed answers stay text ("007" keeps its zeros).
            sheet.set_column(column, column, widths[name], formats.text if name in TEMPLATE_EDITABLE else None)
        # The open errors, then the corrections recorded and not applied (outdated, or
        # targeting nothing): written again, they are taken afresh.
        rows = itertools.chain(_template_rows(warehouse.con), _unapplied_corrections(warehouse.con))
        written = 0
        for written, row in enumerate(itertools.islice(rows, EXCEL_MAX_ROWS - 1), start=1):
            for column, name in enumerate(TEMPLATE_COLUMNS):
                value = row[name]
                if name == "submission_id" and value is not None:
                    sheet.write_number(written, column, value)
                elif value not in (None, ""):
                    sheet.write_string(written, column, str(value))
        left_out = sum(1 for _ in rows)  # beyond Excel's last row: counted, never cut silently
    sheet.freeze_panes(1, 1)
    if written:
        sheet.autofilter(0, 0, written, len(TEMPLATE_COLUMNS) - 1)
    help_sheet = workbook.add_worksheet("Mode d'emploi - How to")
    help_sheet.set_column(0, 0, 140)
    help_rows = TEMPLATE_HELP
    if left_out:
        note = template_overflow_note(written, left_out)
        log.warning("%s : %s", path, note)
        help_rows = [(note, True), *TEMPLATE_HELP]
    for row_number, (text, bold) in enumerate(help_rows):
        if text:
            help_sheet.write_string(row_number, 0, text, formats.title if bold else formats.wrap)
    workbook.close()
    return path


def template_overflow_note(written: int, left_out: int) -> str:
    """What the help sheet says first when the open errors did not all fit in the template."""
    return (f"Ce modèle contient les {written} premières erreurs ouvertes ; {left_out} autres ne tiennent pas dans "
            f"une feuille Excel : corrigez celles-ci, puis faites un nouveau modèle. / This template holds the first "
            f"{written} open errors; {left_out} more do not fit in an Excel sheet: correct these, then make a new "
            f"template.")


__all__ = ["CheckCount", "CommuneCoverage", "DONT_KNOW_VALUES", "EnumeratorStats", "FormSummary", "OpenIssue",
           "ReportData", "SHEETS", "TEMPLATE_COLUMNS", "build_report_data", "corrections_template_rows",
           "report_markdown", "template_overflow_note", "write_corrections_template", "write_report",
           "write_report_workbook"]
