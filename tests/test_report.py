"""validation/report.py: the quality report (XLSX with charts, markdown) and the
corrections template, on a real warehouse synced from the local KoboToolbox-compatible
server (three forms, 150 submissions each, some with mistakes, edits and a deletion)."""

from __future__ import annotations

import copy
import re
import statistics
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import openpyxl
import pytest

from flows.sync import SyncSettings, sync_asset
from forms.build import project_forms
from kobo.client import KoboClient
from kobo.seed import seeded_server
from validation.corrections import COLUMNS as CORRECTION_COLUMNS, read_corrections
from validation.report import (
    CHECK_HEADINGS, COVERAGE_HEADINGS, ENUMERATOR_HEADINGS, HEADER_ROW, NOT_ANSWERS, OPEN_ISSUE_HEADINGS, SHEETS,
    SUMMARY_HEADINGS, TEMPLATE_COLUMNS, TITLES, build_report_data, corrections_template_rows, report_markdown,
    template_overflow_note, write_corrections_template, write_report,
)
from warehouse.store import Warehouse, WarehouseError

NO_FILES = SyncSettings(download_attachments=False)
HEADINGS_ROW = HEADER_ROW + 1  # 1-based, for openpyxl
FORMULA = '=HYPERLINK("http://example.org","x")'
CURRENT = "is_current AND deleted_at IS NULL"
MAIN_TABLES = {"household_survey": "households", "training_attendance": "trainings",
               "water_point_inspection": "water_points"}
COMMUNE_KEYS = {"household_survey": "identification/commune", "training_attendance": "session/commune",
                "water_point_inspection": "place/commune"}


@dataclass
class Synced:
    path: Path
    forms: dict
    deleted_root: str
    edited_roots: list[str]


def _household(asset, index: int) -> dict:
    return asset.submissions[index]


@pytest.fixture(scope="module")
def synced(tmp_path_factory) -> Synced:
    forms = project_forms()
    seeded = seeded_server(list(forms.values()), 150, seed=61, mistake_rate=0.1)
    households = seeded.assets["household_survey"]
    path = tmp_path_factory.mktemp("report") / "terrain.duckdb"
    with seeded.server as server:
        first, second, third, fourth = (households.submissions[i] for i in (3, 4, 5, 6))
        # "Don't know" answers: a whole answer, one in a repeat group, one choice of a select_multiple.
        server.edit_submission(households.uid, first["_id"], {"identification/household_id": "ne_sait_pas"})
        members = copy.deepcopy(second["members"])
        members[0]["members/member_name"] = "DK"
        server.edit_submission(households.uid, second["_id"], {"members": members})
        server.edit_submission(households.uid, third["_id"], {"livelihood/income_activities": "farming dont_know"})
        # Text that looks like a formula stays text in the report (it fails the age check).
        server.edit_submission(households.uid, fourth["_id"], {"identification/head_age": FORMULA})
        # No _submitted_by (anonymous submission): the enumerator is the form's username.
        answers = {k: v for k, v in _household(households, 7).items()
                   if not k.startswith("_") and not k.startswith(("meta/", "formhub/"))}
        answers["username"] = "enq_99"
        server.add_submissions(households.uid, [answers], submitted_by=None)
        with KoboClient(server.url, seeded.token) as client, Warehouse(path) as warehouse:
            for uid in server.assets:
                sync_asset(client, warehouse, uid, settings=NO_FILES)
        deleted = _household(households, 10)
        server.delete_submission(households.uid, deleted["_id"])
        with KoboClient(server.url, seeded.token) as client, Warehouse(path) as warehouse:
            sync_asset(client, warehouse, households.uid, settings=NO_FILES)
    return Synced(path=path, forms=forms, deleted_root=deleted["meta/rootUuid"],
                  edited_roots=[s["meta/rootUuid"] for s in (first, second, third, fourth)])


@pytest.fixture(scope="module")
def con(synced: Synced):
    # Through Warehouse, so that write_report's own connection has the same configuration.
    with Warehouse(synced.path, read_only=True) as warehouse:
        yield warehouse.con


@pytest.fixture(scope="module")
def data(con):
    return build_report_data(con)


@pytest.fixture(scope="module")
def workbook_path(synced: Synced, con, tmp_path_factory) -> Path:
    return write_report(synced.path, tmp_path_factory.mktemp("out") / "rapport.xlsx")


@pytest.fixture(scope="module")
def workbook(workbook_path: Path):
    return openpyxl.load_workbook(workbook_path)


def _rows(sheet) -> list[tuple]:
    """The table under the headings, down to the first empty row."""
    return _rows_from(sheet, 0)


def _rows_from(sheet, first_column: int) -> list[tuple]:
    """The table under the headings starting at ``first_column`` (0-based), down to its first empty row."""
    rows = []
    for row in sheet.iter_rows(min_row=HEADINGS_ROW + 1, min_col=first_column + 1, values_only=True):
        if row[0] is None:
            break
        rows.append(row)
    return rows


def _headings(sheet, count: int) -> list[str]:
    return [sheet.cell(row=HEADINGS_ROW, column=c).value for c in range(1, count + 1)]


def _scalar(con, sql: str, parameters: list | None = None):
    return con.execute(sql, parameters or []).fetchone()[0]


# -- the data -------------------------------------------------------------------------------
def test_summary_counts_match_the_warehouse(con, data, synced: Synced) -> None:
    assert [f.form_id for f in data.forms] == sorted(MAIN_TABLES)
    for f in data.forms:
        received = _scalar(con, f"SELECT count(*) FROM raw.submissions WHERE form_id = ? AND {CURRENT}", [f.form_id])
        assert f.received == received
        assert f.clean == _scalar(con, f'SELECT count(*) FROM "{MAIN_TABLES[f.form_id]}"')
        assert f.quarantined == _scalar(con, "SELECT count(*) FROM quality.quarantine WHERE form_id = ?", [f.form_id])
        assert f.clean + f.quarantined == f.received
        assert f.quarantined > 0
        errors, warnings = con.execute(
            "SELECT count(*) FILTER (WHERE severity = 'error'), count(*) FILTER (WHERE severity = 'warning') "
            "FROM quality.issues WHERE resolved_at IS NULL AND form_id = ?", [f.form_id]).fetchone()
        assert (f.open_errors, f.open_warnings) == (errors, warnings)
        assert f.last_submission == _scalar(
            con, f"SELECT max(submission_time) FROM raw.submissions WHERE form_id = ? AND {CURRENT}", [f.form_id])
    households = next(f for f in data.forms if f.form_id == "household_survey")
    assert households.received == 150  # one added, one deleted; edits count once
    assert households.title == "Enquête ménage / Household survey"
    assert sum(f.open_warnings for f in data.forms) > 0


def test_issues_by_check_match_quality_issues(con, data) -> None:
    expected = {(form, check, severity): (issues, submissions) for form, check, severity, issues, submissions in
                con.execute("SELECT form_id, check_code, severity, count(*), count(DISTINCT root_uuid) "
                            "FROM quality.issues WHERE resolved_at IS NULL GROUP BY ALL").fetchall()}
    assert {(c.form_id, c.check_code, c.severity): (c.open_issues, c.submissions) for c in data.checks} == expected
    assert len(data.checks) == len(expected)
    for check in data.checks:
        assert check.example_message in {m for (m,) in con.execute(
            "SELECT message FROM quality.issues WHERE resolved_at IS NULL AND form_id = ? AND check_code = ?",
            [check.form_id, check.check_code]).fetchall()}
    assert len(data.open_issues) == _scalar(con, "SELECT count(*) FROM quality.issues WHERE resolved_at IS NULL")


def _payloads(con, form_id: str) -> list[tuple]:
    import json

    return [(json.loads(p), t) for p, t in con.execute(
        f"SELECT payload::VARCHAR, submission_time FROM raw.submissions WHERE form_id = ? AND {CURRENT}",
        [form_id]).fetchall()]


def _enumerator(payload: dict) -> str:
    return payload.get("_submitted_by") or payload.get("username")


def test_enumerator_statistics(con, data, synced: Synced) -> None:
    for f in data.forms:
        rows = [e for e in data.enumerators if e.form_id == f.form_id]
        assert sum(e.submissions for e in rows) == f.received
        assert sum(e.with_errors for e in rows) == f.quarantined
        assert all(0 <= e.error_rate <= 1 and e.days_worked >= 1 for e in rows)
    stats = {(e.form_id, e.enumerator): e for e in data.enumerators}
    assert stats[("household_survey", "enq_99")].submissions == 1  # from username, no _submitted_by

    # Recomputed in Python from the payloads: days, median duration, answers and "don't know".
    dictionary = synced.forms["household_survey"].dictionary
    answer_keys = {f.kobo_key for f in dictionary.fields() if f.xlsform_type not in NOT_ANSWERS}
    by_enumerator: dict[str, list[dict]] = {}
    for payload, _ in _payloads(con, "household_survey"):
        by_enumerator.setdefault(_enumerator(payload), []).append(payload)
    dont_know_total = 0
    for name, payloads in by_enumerator.items():
        e = stats[("household_survey", name)]
        assert e.submissions == len(payloads)
        assert e.days_worked == len({p["today"] for p in payloads})
        minutes = [(datetime.fromisoformat(p["end"]) - datetime.fromisoformat(p["start"])).total_seconds() / 60
                   for p in payloads]
        assert e.median_minutes == pytest.approx(statistics.median(minutes), abs=0.06)
        answers = [str(v) for p in payloads for k, v in p.items() if k in answer_keys and not isinstance(v, list)]
        answers += [str(v) for p in payloads for item in p.get("members", []) for k, v in item.items()
                    if k in answer_keys]
        assert e.answers == len([a for a in answers if a.strip()])
        dont_know_total += e.dont_know
        assert e.dont_know_rate == pytest.approx(e.dont_know / e.answers)
    assert dont_know_total == 3
    assert all(e.dont_know == 0 for e in data.enumerators if e.form_id != "household_survey")
    # The set of "don't know" answers is configurable.
    assert sum(e.dont_know for e in build_report_data(con, dont_know_values={"DK"}).enumerators) == 1
    assert sum(e.dont_know for e in build_report_data(con, dont_know_values=()).enumerators) == 0


def test_coverage_by_commune(con, data) -> None:
    for f in data.forms:
        rows = [c for c in data.communes if c.form_id == f.form_id]
        assert sum(c.submissions for c in rows) == f.received
        assert sum(c.clean for c in rows) == f.clean
        assert sum(c.quarantined for c in rows) == f.quarantined
        expected = dict(con.execute(
            f"SELECT json_extract_string(payload, ?), count(*) FROM raw.submissions WHERE form_id = ? AND {CURRENT} "
            "GROUP BY 1", [f'$."{COMMUNE_KEYS[f.form_id]}"', f.form_id]).fetchall())
        assert {c.commune: c.submissions for c in rows} == expected
    labels = {c.commune: c.label for c in data.communes}
    assert "Djenné" in labels.values() and labels.get("djenne") == "Djenné"


# -- the workbook ---------------------------------------------------------------------------
def test_workbook_sheets_and_headings(workbook) -> None:
    assert workbook.sheetnames == list(SHEETS.values())
    expected = {"summary": SUMMARY_HEADINGS, "checks": CHECK_HEADINGS, "enumerators": ENUMERATOR_HEADINGS,
                "coverage": COVERAGE_HEADINGS, "open_issues": OPEN_ISSUE_HEADINGS}
    for key, headings in expected.items():
        sheet = workbook[SHEETS[key]]
        assert sheet["A1"].value == TITLES[key]
        assert _headings(sheet, len(headings)) == headings
        assert all(" / " in h for h in headings if h != "root_uuid")  # French / English
    assert workbook[SHEETS["summary"]]["A1"].value == "Résumé / Summary"
    assert "Soumissions reçues / Submissions received" in SUMMARY_HEADINGS
    assert workbook[SHEETS["checks"]]["A1"].value == "Problèmes par contrôle / Issues by check"
    assert isinstance(workbook[SHEETS["summary"]]["C2"].value, datetime)  # when the report was made


def test_workbook_numbers_match_sql(workbook, con, data) -> None:
    summary = {r[0]: r for r in _rows(workbook[SHEETS["summary"]]) if r[0] != "Total"}
    for f in data.forms:
        row = summary[f.form_id]
        assert row[2:5] == (f.received, f.clean, f.quarantined)
        assert row[3] + row[4] == row[2]
        assert row[6:8] == (f.open_errors, f.open_warnings)
    total = next(r for r in _rows(workbook[SHEETS["summary"]]) if r[0] == "Total")
    assert total[2] == _scalar(con, f"SELECT count(*) FROM raw.submissions WHERE {CURRENT}")

    checks = _rows(workbook[SHEETS["checks"]])
    assert sum(r[3] for r in checks) == _scalar(con, "SELECT count(*) FROM quality.issues WHERE resolved_at IS NULL")
    assert {(r[0], r[1]): r[3] for r in checks} == dict(((form, check), n) for form, check, n in con.execute(
        "SELECT form_id, check_code, count(*) FROM quality.issues WHERE resolved_at IS NULL GROUP BY ALL").fetchall())

    enumerators = _rows(workbook[SHEETS["enumerators"]])
    for f in data.forms:
        assert sum(r[2] for r in enumerators if r[0] == f.form_id) == f.received
    # The chart's table beside it, written after the main table (rows above the last one written).
    side = len(ENUMERATOR_HEADINGS) + 1
    per_person = {row[0]: row[-1] for row in _rows_from(workbook[SHEETS["enumerators"]], side)}  # the total
    assert per_person and per_person == {person: sum(r[2] for r in enumerators if r[1] == person)
                                         for person in {r[1] for r in enumerators}}

    coverage = _rows(workbook[SHEETS["coverage"]])
    for f in data.forms:
        assert sum(r[3] for r in coverage if r[0] == f.form_id) == f.received
        assert sum(r[4] + r[5] for r in coverage if r[0] == f.form_id) == f.received

    open_issues = _rows(workbook[SHEETS["open_issues"]])
    expected = con.execute("SELECT root_uuid, check_code, coalesce(column_name, ''), severity FROM quality.issues "
                           "WHERE resolved_at IS NULL ORDER BY ALL").fetchall()
    assert sorted((r[2], r[6], r[4] or "", r[7].split(" / ")[1]) for r in open_issues) == expected
    assert all(r[9] for r in open_issues)  # every issue has its message


def test_workbook_has_native_charts(workbook, workbook_path: Path) -> None:
    for key in ("summary", "checks", "enumerators", "coverage"):
        assert len(workbook[SHEETS[key]]._charts) >= 1, key
    with zipfile.ZipFile(workbook_path) as archive:
        charts = {name: archive.read(name).decode() for name in archive.namelist()
                  if re.fullmatch(r"xl/charts/chart\d+\.xml", name)}
    assert len(charts) >= 4
    text = "\n".join(charts.values())
    assert "Soumissions par enquêteur / Submissions per enumerator" in text
    assert "Problèmes ouverts par contrôle / Open issues by check" in text
    assert "Couverture par commune / Coverage by commune" in text
    by_title = {re.search(r"<a:t>([^<]+)</a:t>", xml).group(1): xml for xml in charts.values()}
    assert '<c:barDir val="col"/>' in by_title["Soumissions par enquêteur / Submissions per enumerator"]
    assert '<c:barDir val="bar"/>' in by_title["Problèmes ouverts par contrôle / Open issues by check"]
    assert "Couverture - Coverage" in by_title["Couverture par commune / Coverage by commune"]
    # Bars of checks and communes are labelled with their form (two-level categories).
    assert "<c:multiLvlStrRef>" in by_title["Problèmes ouverts par contrôle / Open issues by check"]
    assert "<c:multiLvlStrRef>" in by_title["Couverture par commune / Coverage by commune"]
    assert "Djenné" in by_title["Couverture par commune / Coverage by commune"]


def test_text_from_the_field_is_never_a_formula(workbook, workbook_path: Path) -> None:
    values = [r[8] for r in _rows(workbook[SHEETS["open_issues"]])]
    assert FORMULA in values
    with zipfile.ZipFile(workbook_path) as archive:
        for name in archive.namelist():
            if name.startswith("xl/worksheets/sheet"):
                assert "<f>" not in archive.read(name).decode(), name


def test_markdown_summary(data) -> None:
    text = report_markdown(data)
    assert text.startswith("# Rapport qualité / Quality report")
    for f in data.forms:
        assert f"| {f.form_id} | {f.received} | {f.clean} | {f.quarantined} | {f.open_errors} | {f.open_warnings} |" in text
    top = max(data.checks, key=lambda c: c.open_issues)
    assert f"| {top.check_code} |" in text


def test_the_summary_after_each_sync_reads_no_answers_and_says_the_same(con, data) -> None:
    """flows.pipeline.publish_quality_summary skips what report_markdown does not show:
    the "don't know" counts and the open issues (100 s and out of memory at 1,000,000)."""
    short = build_report_data(con, dont_know=False, open_issues=False, now=data.generated_at)
    assert short.open_issues == [] and all(e.answers == 0 for e in short.enumerators)
    assert sum(e.answers for e in data.enumerators) > 0 and data.open_issues
    assert report_markdown(short) == report_markdown(data)


def test_open_issues_name_the_enumerator_of_their_submission(con, data) -> None:
    import json

    payloads = {root: json.loads(text) for root, text in con.execute(
        f"SELECT root_uuid, payload::VARCHAR FROM raw.submissions r WHERE {CURRENT}").fetchall()}
    with_submission = [i for i in data.open_issues if i.root_uuid in payloads]
    assert len(with_submission) >= 5
    assert all(i.enumerator == _enumerator(payloads[i.root_uuid]) for i in with_submission)


def test_open_issues_beyond_the_sheet_are_counted_in_its_note(synced: Synced, data, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import validation.report as report

    total = len(data.open_issues)
    monkeypatch.setattr(report, "EXCEL_MAX_ROWS", HEADER_ROW + 1 + 3)  # room for 3 rows
    sheet = openpyxl.load_workbook(write_report(synced.path, tmp_path / "r.xlsx"))[SHEETS["open_issues"]]
    shown = _rows(sheet)
    assert [(r[0], r[1], r[6]) for r in shown] == [(i.form_id, i.submission_id, i.check_code)
                                                   for i in data.open_issues[:3]]
    assert f"{total - 3} lignes omises (limite d'Excel) / rows left out (Excel's limit)" in sheet.cell(2, 1).value


# -- the corrections template ---------------------------------------------------------------
def test_corrections_template(con, synced: Synced, tmp_path: Path) -> None:
    rows = corrections_template_rows(con)
    errors = con.execute("SELECT root_uuid, coalesce(column_name, ''), coalesce(row_key, ''), check_code, message "
                         "FROM quality.issues WHERE resolved_at IS NULL AND severity = 'error' ORDER BY ALL").fetchall()
    assert len(rows) == len(errors) > 0
    assert sorted((r["root_uuid"], r["field"], r["row_key"], r["check"], r["message"]) for r in rows) == errors
    assert all(r["new_value"] == r["reason"] == r["author"] == "" for r in rows)
    assert all(list(r) == TEMPLATE_COLUMNS for r in rows)

    path = write_corrections_template(synced.path, tmp_path / "corrections.xlsx")
    sheet = openpyxl.load_workbook(path).worksheets[0]
    header = [c.value.rsplit(" / ", 1)[-1] for c in sheet[1]]  # French first: "nouvelle_valeur / new_value"
    assert header == TEMPLATE_COLUMNS
    assert set(CORRECTION_COLUMNS) <= set(header)
    assert sheet.cell(1, header.index("new_value") + 1).value == "nouvelle_valeur / new_value"
    for column in ("form_id", "table", "check", "current_value", "message"):
        assert column in header
    body = list(sheet.iter_rows(min_row=2, values_only=True))
    assert len(body) == len(errors)
    assert {r[0] for r in body} == {e[0] for e in errors}
    assert FORMULA in [r[header.index("current_value")] for r in body]
    # The file reads back as a corrections file: left empty it corrects nothing (so it can
    # never erase answers by accident); a line given a new value is a correction.
    assert read_corrections(path) == []
    filled = openpyxl.load_workbook(path)
    first = filled.worksheets[0]
    first.cell(row=2, column=header.index("new_value") + 1, value="42")
    filled.save(path)
    read = read_corrections(path)
    assert [(r["root_uuid"], r["field"], r["new_value"]) for r in read] == [(rows[0]["root_uuid"], rows[0]["field"], "42")]
    # Tomorrow's report does not write over that filled file, not applied yet: beside it.
    beside = write_corrections_template(synced.path, path)
    assert beside != path and beside.parent == path.parent and beside.name.startswith("corrections_")
    assert read_corrections(path) == read


def test_errors_beyond_excels_rows_stay_out_of_the_template_and_are_counted(
        con, synced: Synced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import validation.report as report

    rows = corrections_template_rows(con)
    assert len(rows) > 3
    monkeypatch.setattr(report, "EXCEL_MAX_ROWS", 1 + 3)  # the header and 3 rows
    with caplog.at_level("WARNING", logger="validation.report"):
        path = write_corrections_template(synced.path, tmp_path / "corrections.xlsx")
    workbook = openpyxl.load_workbook(path)
    body = list(workbook.worksheets[0].iter_rows(min_row=2, values_only=True))
    assert [(r[0], r[1], r[2]) for r in body] == [(r["root_uuid"], r["field"] or None, r["row_key"] or None)
                                                 for r in rows[:3]]
    assert workbook.worksheets[1].cell(1, 1).value == template_overflow_note(3, len(rows) - 3)
    assert f"{len(rows) - 3} more do not fit" in caplog.text


def test_a_missing_warehouse_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match="no warehouse"):
        write_report(tmp_path / "none.duckdb", tmp_path / "report.xlsx")


def test_a_report_short_of_memory_says_which_setting_to_raise(synced: Synced, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's out-of-memory error reached the data manager as a traceback, with no word
    of the setting to raise."""
    import shutil

    import duckdb

    def copied(name: str) -> Path:  # the module's warehouse is open here (the con fixture)
        copy = shutil.copy(synced.path, tmp_path / name)
        shutil.copy(f"{synced.path}.wal", f"{copy}.wal")
        return copy

    monkeypatch.setenv("TERRAIN_DUCKDB_MEMORY", "16MB")
    # The log of the last sync, replayed as the file is opened, did not fit: that said so,
    # not that the file was not a usable warehouse.
    with pytest.raises(WarehouseError) as failed:
        write_report(copied("with_log.duckdb"), tmp_path / "report.xlsx")
    assert "could not be replayed in memory" in failed.value.en and "TERRAIN_DUCKDB_MEMORY=256MB" in failed.value.en
    # Written out, the file opens; the report itself does not fit.
    copy = copied("copy.duckdb")
    duckdb.connect(str(copy)).close()  # a checkpoint on closing
    assert not Path(f"{copy}.wal").exists()
    with pytest.raises(WarehouseError) as failed:
        write_report(copy, tmp_path / "report.xlsx")
    assert "the report was not written" in failed.value.en and "TERRAIN_DUCKDB_MEMORY=256MB" in failed.value.en
    assert "le rapport n'a pas été écrit" in failed.value.fr
    assert not (tmp_path / "report.xlsx").exists()


def test_an_empty_warehouse_gives_a_report_without_charts(tmp_path: Path) -> None:
    Warehouse(tmp_path / "empty.duckdb").close()
    path = write_report(tmp_path / "empty.duckdb", tmp_path / "report.xlsx")
    workbook = openpyxl.load_workbook(path)
    assert workbook.sheetnames == list(SHEETS.values())
    assert workbook[SHEETS["open_issues"]].cell(row=HEADINGS_ROW + 1, column=1).value == \
        "Aucun problème ouvert / No open issues"
    with Warehouse(tmp_path / "empty.duckdb", read_only=True) as warehouse:
        assert corrections_template_rows(warehouse.con) == []
        assert "| **Total** | 0 | 0 | 0 | 0 | 0 | |" in report_markdown(build_report_data(warehouse.con))
