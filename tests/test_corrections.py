"""Corrections and re-synced edits take a submission out of quarantine; reverting a
correction puts it back; a correction that targets nothing is reported."""

from __future__ import annotations

import csv
from contextlib import contextmanager
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import openpyxl

from flows.sync import APPROVED, ON_HOLD, SyncSettings, record_status_to_send, sync_asset, write_back_statuses
from kobo.client import KoboClient
from validation.report import corrections_template_rows
from warehouse.rebuild import apply_corrections_file
from warehouse.store import Warehouse

ROOT = Path(__file__).resolve().parents[1]
NO_FILES = SyncSettings(download_attachments=False)


def quarantined_for(warehouse: Warehouse, check: str) -> tuple[str, str, str | None, str]:
    return warehouse.con.execute(
        "select root_uuid, column_name, row_key, value from quality.issues where check_code = ? and resolved_at is null "
        "and severity = 'error' order by root_uuid limit 1", [check]).fetchone()


def in_quarantine(warehouse: Warehouse, root: str) -> bool:
    return warehouse.con.execute("select count(*) from quality.quarantine where root_uuid = ?", [root]).fetchone()[0] == 1


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["root_uuid", "field", "row_key", "new_value", "reason", "author"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_correction_applied_then_reverted(seeded, warehouse_path, tmp_path: Path) -> None:
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=NO_FILES)
        root, column, row_key, value = quarantined_for(warehouse, "constraint")
        assert in_quarantine(warehouse, root)
        fixed = str(int(value) // 10)  # the key pressed twice, undone
        corrections = write_csv(tmp_path / "corrections.csv", [
            {"root_uuid": root, "field": column, "row_key": row_key or "", "new_value": fixed,
             "reason": "Confirmé par téléphone avec l'enquêteur", "author": "Mariam (data manager)"},
            {"root_uuid": "uuid:not-a-submission", "field": "head_age", "row_key": "", "new_value": "40",
             "reason": "typo", "author": "Mariam"},
        ])
        problems = apply_corrections_file(warehouse, corrections).problems
        assert not in_quarantine(warehouse, root)
        table = "household_members" if row_key else "households"
        where = "root_uuid = ? and row_key = ?" if row_key else "root_uuid = ?"
        assert warehouse.con.execute(f"select {column} from {table} where {where}",
                                     [root, row_key] if row_key else [root]).fetchone()[0] == int(fixed)
        log = warehouse.con.execute("select author, reason, status from meta.corrections where root_uuid = ?", [root]).fetchone()
        assert log == ("Mariam (data manager)", "Confirmé par téléphone avec l'enquêteur", "applied")
        target_nothing = ("uuid:not-a-submission head_age : aucune soumission avec ce root_uuid dans l'entrepôt / "
                          "no submission with this root_uuid in the warehouse")
        assert problems == [f"corrections.csv ligne 3 / line 3 : {target_nothing}"]  # where to find it in the file
        # The raw history keeps what the enumerator sent.
        assert value in warehouse.con.execute("select payload::varchar from raw.submissions where root_uuid = ?",
                                              [root]).fetchone()[0]

        # Tomorrow's file, without that line, undoes nothing; "(annuler)" does.
        tomorrow = write_csv(tmp_path / "tomorrow.csv", [])
        applied = apply_corrections_file(warehouse, tomorrow)
        # Yesterday's line that targets nothing is recalled, as yesterday's file's, not as this one's.
        assert applied.problems == [] and applied.earlier_problems == [f"corrections.csv : {target_nothing}"]
        assert not in_quarantine(warehouse, root)
        assert warehouse.con.execute("select status from meta.corrections where root_uuid = ?", [root]).fetchone() == (
            "applied",)
        cancelled = write_csv(tmp_path / "cancelled.csv", [
            {"root_uuid": root, "field": column, "row_key": row_key or "", "new_value": "(annuler)",
             "reason": "", "author": "Mariam"}])
        apply_corrections_file(warehouse, cancelled)
        assert in_quarantine(warehouse, root)
        assert warehouse.con.execute("select count(*) from meta.corrections where root_uuid = ?", [root]).fetchone() == (0,)


def write_xlsx(path: Path, rows: list[dict]) -> Path:
    workbook = openpyxl.Workbook()
    workbook.active.append(["root_uuid", "field", "row_key", "new_value", "reason", "author"])
    for row in rows:
        workbook.active.append([row.get(c, "") for c in ("root_uuid", "field", "row_key", "new_value", "reason", "author")])
    workbook.save(path)
    return path


def test_a_corrections_file_may_name_its_columns_in_french_or_in_both(tmp_path: Path) -> None:
    """The template's headings are French first ("nouvelle_valeur / new_value"); a file a
    data manager makes may use the French names alone, or the English ones."""
    from validation.corrections import read_corrections

    french = tmp_path / "french.csv"
    french.write_text("root_uuid;champ;rang;nouvelle_valeur;raison;auteur\nuuid:x;member_age;2;40;vérifié;Awa\n",
                      encoding="utf-8")
    both = tmp_path / "both.xlsx"
    workbook = openpyxl.Workbook()
    workbook.active.append(["root_uuid", "champ / field", "rang / row_key", "nouvelle_valeur / new_value",
                            "raison / reason", "auteur / author"])
    workbook.active.append(["uuid:x", "member_age", "2", "40", "vérifié", "Awa"])
    workbook.save(both)
    for path in (french, both):
        assert [(r["root_uuid"], r["field"], r["row_key"], r["new_value"], r["author"], r["line"])
                for r in read_corrections(path)] == [("uuid:x", "member_age", "2", "40", "Awa", 2)]
    # A row's line is where it starts, after a reason written on several lines.
    spanning = tmp_path / "spanning.csv"
    spanning.write_text('root_uuid,field,row_key,new_value,reason,author\n'
                        'uuid:a,head_age,,42,"vu avec\nl\'enquêteur\npar téléphone",Awa\n'
                        'uuid:b,head_age,,43,ok,Awa\n'
                        '\n'
                        'uuid:c,head_age,,44,ok,Awa\n', encoding="utf-8")
    assert [(r["root_uuid"], r["line"]) for r in read_corrections(spanning)] == [
        ("uuid:a", 2), ("uuid:b", 5), ("uuid:c", 7)]  # a blank line counts too


def test_the_written_template_recalls_unapplied_corrections_and_takes_an_undo_as_applied(
        seeded, warehouse_path, tmp_path: Path) -> None:
    """The template the report writes lists, after the open errors, the corrections not
    applied (here one targeting nothing), as corrections_template_rows says. And a file
    whose "(annuler)" line was applied is not taken for one holding unapplied lines (it
    was, at every report after, and each wrote a new template beside it)."""
    from validation.report import write_corrections_template

    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=NO_FILES)
        root, column, row_key, value = quarantined_for(warehouse, "constraint")
        answer = {"root_uuid": root, "field": column, "row_key": row_key or ""}
        apply_corrections_file(warehouse, write_xlsx(tmp_path / "monday.xlsx", [
            {**answer, "new_value": str(int(value) // 10), "reason": "Vérifié", "author": "Mariam"},
            {"root_uuid": "uuid:not-a-submission", "field": "head_age", "new_value": "40", "author": "Mariam"}]))
        # Two lines for one answer: the last is applied (the first is not "not applied").
        twice = write_xlsx(tmp_path / "twice.xlsx", [{**answer, "new_value": "7", "author": "Mariam"},
                                                     {**answer, "new_value": str(int(value) // 10), "author": "Mariam"}])
        apply_corrections_file(warehouse, twice)
    assert write_corrections_template(warehouse_path, twice) == twice
    with Warehouse(warehouse_path) as warehouse:
        cancel = write_xlsx(tmp_path / "corrections.xlsx", [{**answer, "new_value": "(annuler)", "author": "Mariam"}])
        cancelled = apply_corrections_file(warehouse, cancel)
        assert in_quarantine(warehouse, root)
        assert cancelled.still_quarantined == []  # back in quarantine, but nothing was corrected
    written = write_corrections_template(warehouse_path, cancel)
    assert written == cancel  # its only line is applied: the new template takes its place
    sheet = openpyxl.load_workbook(written).worksheets[0]
    header = [c.value.rsplit(" / ", 1)[-1] for c in sheet[1]]
    recalled = [row for row in sheet.iter_rows(min_row=2, values_only=True)
                if row[header.index("check")] == "correction_no_target"]
    assert [row[0] for row in recalled] == ["uuid:not-a-submission"]


def test_corrections_from_xlsx_through_the_command_line(seeded, warehouse_path, tmp_path: Path) -> None:
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=NO_FILES)
        root, column, row_key, value = quarantined_for(warehouse, "required")
        other, other_column, other_row_key, _ = quarantined_for(warehouse, "constraint")
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["root_uuid", "field", "row_key", "new_value", "reason", "author"])
    sheet.append([root, column, row_key or "", "SIK-0001" if column == "household_id" else "Awa Traoré",
                  "Retrouvé sur la fiche papier", "Issa"])
    sheet.append([root, "no_such_field", "", "x", "test", "Issa"])
    sheet.append([other, other_column, other_row_key or "", "-1", "mauvaise saisie", "Issa"])  # still wrong
    workbook.save(tmp_path / "corrections.xlsx")
    result = subprocess.run([sys.executable, "-m", "flows.cli", "corrections", str(tmp_path / "corrections.xlsx"),
                             "--warehouse", str(warehouse_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1  # one correction targets nothing
    assert "2 correction(s) applied in all" in result.stdout
    assert "1 of them still in quarantine" in result.stdout  # as many as listed below
    [unapplied] = [line for line in result.stdout.splitlines() if "no_such_field" in line]
    assert "corrections.xlsx ligne 3 / line 3" in unapplied and "the form has no field" in unapplied
    [still] = [line for line in result.stdout.splitlines() if "toujours en quarantaine / corrected but still in quarantine" in line]
    assert other in still and "= -1" in still  # with the reason it is still kept out
    with Warehouse(warehouse_path) as warehouse:
        assert not in_quarantine(warehouse, root)


def test_a_quarantined_submission_edited_on_the_server_leaves_the_quarantine(seeded, warehouse_path) -> None:
    asset = seeded.assets["household_survey"]
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, asset.uid, settings=NO_FILES)
        root = quarantined_for(warehouse, "gps_in_mali")[0]
        submission = next(s for s in asset.submissions if s["meta/rootUuid"] == root)
        lat, lon, *rest = submission["location"].split()
        seeded.server.edit_submission(asset.uid, submission["_id"], {"location": " ".join([lon, lat, *rest])})
        sync_asset(client, warehouse, asset.uid, settings=NO_FILES)
        assert not in_quarantine(warehouse, root)
        assert warehouse.con.execute("select count(*) from households where root_uuid = ?", [root]).fetchone()[0] == 1


WRITE_BACK = SyncSettings(download_attachments=False, write_back=True)


@contextmanager
def synced_with_write_back(seeded, warehouse_path, **client_options) -> Iterator[tuple]:
    """The household project synced with write-back: (asset, client, warehouse, dictionary)."""
    asset = seeded.assets["household_survey"]
    with KoboClient(seeded.server.url, seeded.token, **client_options) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, asset.uid, settings=WRITE_BACK)
        yield asset, client, warehouse, warehouse.latest_dictionaries()[0]


def first_clean_ids(warehouse: Warehouse, count: int) -> list[int]:
    return [r[0] for r in warehouse.con.execute("select submission_id from households order by submission_id limit ?",
                                                [count]).fetchall()]


def test_write_back_puts_quarantined_on_hold_and_clean_approved(seeded, warehouse_path) -> None:
    asset = seeded.assets["household_survey"]
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        summary = sync_asset(client, warehouse, asset.uid, settings=WRITE_BACK)
        quarantined = {r[0] for r in warehouse.con.execute("select submission_id from quality.quarantine").fetchall()}
    statuses = {s["_id"]: (s.get("_validation_status") or {}).get("uid") for s in asset.submissions}
    assert summary.statuses_written == len(asset.submissions)
    assert {i for i, st in statuses.items() if st == "validation_status_on_hold"} == quarantined
    assert {i for i, st in statuses.items() if st == "validation_status_approved"} == set(statuses) - quarantined


def test_write_back_leaves_alone_a_status_a_supervisor_set(seeded, warehouse_path) -> None:
    """Statuses change on the server without the submission changing: the write-back reads
    them there, and changes only those nobody set or that Terrain set itself."""
    with synced_with_write_back(seeded, warehouse_path) as (asset, client, warehouse, _):
        quarantined = sorted(r[0] for r in warehouse.con.execute("select submission_id from quality.quarantine").fetchall())
        clean = sorted(r[0] for r in warehouse.con.execute("select submission_id from households").fetchall())
        decisions = {clean[0]: "validation_status_not_approved", clean[1]: "validation_status_on_hold",
                     quarantined[0]: "validation_status_approved"}
        for submission_id, status in decisions.items():
            seeded.server.set_validation_status(asset.uid, submission_id, status, "superviseur")
        seeded.server.set_validation_status(asset.uid, clean[2], None, "superviseur")  # cleared: Terrain's again
        summary = sync_asset(client, warehouse, asset.uid, settings=WRITE_BACK)
    statuses = {s["_id"]: (s.get("_validation_status") or {}).get("uid") for s in asset.submissions}
    assert summary.statuses_written == 1
    assert {i: statuses[i] for i in decisions} == decisions
    assert statuses[clean[2]] == "validation_status_approved"


def test_a_correction_is_not_applied_to_another_row_with_the_same_answer(seeded, warehouse_path, tmp_path: Path) -> None:
    """Two children of one age: when the member before them is removed on the server, the
    fourth becomes the third with the same age. The answer alone does not show the
    change; the row's other answers do, and the correction is reported, not applied to
    another child."""
    asset = seeded.assets["household_survey"]
    ages = "select member_age from household_members where root_uuid = ? order by position"
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, asset.uid, settings=NO_FILES)
        submission = next(s for s in asset.submissions if len(s.get("members", [])) >= 4
                          and not in_quarantine(warehouse, s["meta/rootUuid"]))
        root = submission["meta/rootUuid"]
        members = [dict(m) for m in submission["members"]]
        members[3]["members/member_age"] = members[2]["members/member_age"]
        members[3]["members/member_relation"] = members[2]["members/member_relation"]
        seeded.server.edit_submission(asset.uid, submission["_id"], {"members": members})
        sync_asset(client, warehouse, asset.uid, settings=SyncSettings(download_attachments=False, reconcile="always"))
        age = int(members[2]["members/member_age"])
        apply_corrections_file(warehouse, write_csv(tmp_path / "c.csv", [
            {"root_uuid": root, "field": "member_age", "row_key": "3", "new_value": str(age + 1),
             "reason": "Vérifié", "author": "Mariam"}]))
        assert warehouse.con.execute("select status from meta.corrections").fetchone() == ("applied",)
        assert warehouse.con.execute(ages, [root]).fetchall()[2] == (age + 1,)
        seeded.server.edit_submission(asset.uid, submission["_id"], {"members": [m for i, m in enumerate(members) if i != 1]})
        sync_asset(client, warehouse, asset.uid, settings=SyncSettings(download_attachments=False, reconcile="always"))
        status, problem = warehouse.con.execute("select status, problem from meta.corrections").fetchone()
        assert status == "outdated" and "row 3 changed on the server" in problem
        assert warehouse.con.execute(ages, [root]).fetchall()[2] == (age,)  # the child now third keeps its age


def test_write_back_reads_only_the_statuses_that_matter(seeded, warehouse_path) -> None:
    """Once Terrain has set the statuses, the next write-back does not read every
    submission's status again (1,000 requests at 1,000,000 submissions): only those with
    no status, and those whose wanted status is not the one Terrain set."""
    with synced_with_write_back(seeded, warehouse_path, page_size=20) as (asset, client, warehouse, dictionary):
        before = seeded.server.requests_served
        assert write_back_statuses(client, warehouse, asset.uid, dictionary) == 0
        assert seeded.server.requests_served - before == 1  # the (empty) list of submissions with no status
        clean = warehouse.con.execute("select min(submission_id) from households").fetchone()[0]
        seeded.server.set_validation_status(asset.uid, clean, None, "superviseur")
        before = seeded.server.requests_served
        assert write_back_statuses(client, warehouse, asset.uid, dictionary) == 1  # cleared: Terrain's again
        assert seeded.server.requests_served - before == 2  # that list, then the one status sent
    assert len(asset.submissions) > 20 * 5


def test_write_back_keeps_its_statuses_across_a_run_stopped_around_a_request(seeded, warehouse_path) -> None:
    """A status is recorded before it is sent, and confirmed after. A run stopped in
    between leaves it unconfirmed, and the next run knows which statuses on the server
    are Terrain's: the one it meant to send (the request went through) or the one it had
    set before (it did not); any other is a person's. Recorded only after, as before, a
    request that went through was taken for a person's status, left as it was for good."""
    with synced_with_write_back(seeded, warehouse_path) as (asset, client, warehouse, dictionary):
        unsent, sent = first_clean_ids(warehouse, 2)
        first = warehouse.con.execute("select min(submission_id) from quality.quarantine").fetchone()[0]
        # unsent: Terrain had set "on hold" (confirmed), then recorded "approved" and stopped
        # before sending it: the server still holds Terrain's "on hold".
        seeded.server.set_validation_status(asset.uid, unsent, ON_HOLD, "terrain")
        record_status_to_send(warehouse, asset.uid, [unsent], ON_HOLD)
        warehouse.con.execute("update meta.status_writes set confirmed = true where submission_id = ?", [unsent])
        record_status_to_send(warehouse, asset.uid, [unsent], APPROVED)
        # sent: Terrain recorded "approved" again, the server took it, and the run stopped then.
        record_status_to_send(warehouse, asset.uid, [sent], APPROVED)
        # first: Terrain's first status for it, recorded and never sent; then a supervisor
        # approved the submission: a person's decision, which stays.
        warehouse.con.execute("delete from meta.status_writes where submission_id = ?", [first])
        seeded.server.set_validation_status(asset.uid, first, None, "terrain")
        record_status_to_send(warehouse, asset.uid, [first], ON_HOLD)
        seeded.server.set_validation_status(asset.uid, first, APPROVED, "superviseur")
        assert write_back_statuses(client, warehouse, asset.uid, dictionary) == 1
        records = dict(warehouse.con.execute("select submission_id, (status, confirmed) from meta.status_writes "
                                             "where submission_id in (?, ?, ?)", [sent, unsent, first]).fetchall())
    statuses = {s["_id"]: (s.get("_validation_status") or {}).get("uid") for s in asset.submissions}
    assert (statuses[unsent], statuses[sent], statuses[first]) == (APPROVED, APPROVED, APPROVED)
    assert records == {sent: (APPROVED, True), unsent: (APPROVED, True)}  # first's is a person's now: forgotten


def test_a_status_that_was_never_sent_is_not_taken_for_terrains_later(seeded, warehouse_path) -> None:
    """Terrain approved X, then recorded "on hold" for it and the request failed; the next
    run finds the server still holding "approved" (the request never arrived) and settles
    the record back to it. A supervisor who then puts X on hold is not overruled."""
    with synced_with_write_back(seeded, warehouse_path) as (asset, client, warehouse, dictionary):
        [x] = first_clean_ids(warehouse, 1)
        record_status_to_send(warehouse, asset.uid, [x], ON_HOLD)  # the request failed, or the run stopped
        assert write_back_statuses(client, warehouse, asset.uid, dictionary) == 0
        assert warehouse.con.execute("select status, confirmed, previous from meta.status_writes where "
                                     "submission_id = ?", [x]).fetchone() == (APPROVED, True, None)
        seeded.server.set_validation_status(asset.uid, x, ON_HOLD, "superviseur")
        assert write_back_statuses(client, warehouse, asset.uid, dictionary) == 0
    status = next((s.get("_validation_status") or {}) for s in asset.submissions if s["_id"] == x)
    assert status.get("uid") == ON_HOLD and status.get("by_whom") == "superviseur"


def test_an_unconfirmed_status_of_a_submission_deleted_since_is_settled(seeded, warehouse_path) -> None:
    """A run stopped around a request leaves its record unconfirmed; when the submission
    is then deleted on the server, it is no longer wanted, and its record was never read
    again nor settled. It is now read, found gone, and forgotten."""
    with synced_with_write_back(seeded, warehouse_path) as (asset, client, warehouse, dictionary):
        gone, kept = first_clean_ids(warehouse, 2)
        record_status_to_send(warehouse, asset.uid, [gone, kept], ON_HOLD)  # the run stopped before sending
        seeded.server.delete_submission(asset.uid, gone)
        sync_asset(client, warehouse, asset.uid, settings=SyncSettings(download_attachments=False, reconcile="always"))
        write_back_statuses(client, warehouse, asset.uid, dictionary)
        records = dict(warehouse.con.execute("select submission_id, (status, confirmed) from meta.status_writes "
                                             "where submission_id in (?, ?)", [gone, kept]).fetchall())
    assert records == {kept: (APPROVED, True)}


def test_a_correction_is_not_applied_to_an_answer_that_changed_under_it(seeded, warehouse_path, tmp_path: Path) -> None:
    """row_key is a position: when a member is removed on the server, the next members
    move up. The correction of member 3 must not land on whoever is third now."""
    asset = seeded.assets["household_survey"]
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, asset.uid, settings=NO_FILES)
        submission = next(s for s in asset.submissions if len(s.get("members", [])) >= 4
                          and not in_quarantine(warehouse, s["meta/rootUuid"]))
        root = submission["meta/rootUuid"]
        third_age = int(submission["members"][2]["members/member_age"])
        corrected = str(third_age + 1)
        apply_corrections_file(warehouse, write_csv(tmp_path / "c.csv", [
            {"root_uuid": root, "field": "member_age", "row_key": "3", "new_value": corrected,
             "reason": "Vérifié", "author": "Mariam"}]))
        ages = "select member_age from household_members where root_uuid = ? order by position"
        assert warehouse.con.execute(ages, [root]).fetchall()[2] == (third_age + 1,)
        members = [m for i, m in enumerate(submission["members"]) if i != 1]  # the second member removed
        seeded.server.edit_submission(asset.uid, submission["_id"], {"members": members})
        sync_asset(client, warehouse, asset.uid, settings=SyncSettings(download_attachments=False, reconcile="always"))
        now_third = int(members[2]["members/member_age"])
        assert warehouse.con.execute(ages, [root]).fetchall()[2] == (now_third,)
        status, problem = warehouse.con.execute("select status, problem from meta.corrections").fetchone()
        template = corrections_template_rows(warehouse.con)
        assert status == "outdated" and "changed on the server" in problem
        assert [(r["root_uuid"], r["row_key"]) for r in template if r["check"] == "correction_outdated"] == [(root, "3")]
        # Checked, and written again as it was: it applies to the answer as it is now.
        apply_corrections_file(warehouse, write_csv(tmp_path / "again.csv", [
            {"root_uuid": root, "field": "member_age", "row_key": "3", "new_value": corrected,
             "reason": "Vérifié de nouveau", "author": "Mariam"}]))
        assert warehouse.con.execute("select status from meta.corrections").fetchone() == ("applied",)
        assert warehouse.con.execute(ages, [root]).fetchall()[2] == (third_age + 1,)


def test_corrections_csv_from_french_excel(seeded, warehouse_path, tmp_path: Path) -> None:
    """Excel's "CSV (séparateur: point-virgule)": Windows-1252 text, semicolons."""
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=NO_FILES)
        root, column, row_key, value = quarantined_for(warehouse, "constraint")
        path = tmp_path / "corrections.csv"
        path.write_bytes(("root_uuid;field;row_key;new_value;reason;author\r\n"
                          f"{root};{column};{row_key or ''};{int(value) // 10};Confirmé;Mariam Traoré\r\n").encode("cp1252"))
        apply_corrections_file(warehouse, path)
        assert not in_quarantine(warehouse, root)
        assert warehouse.con.execute("select author from meta.corrections").fetchone() == ("Mariam Traoré",)


def test_an_interrupted_corrections_run_is_finished_by_running_it_again(seeded, warehouse_path, tmp_path: Path) -> None:
    import datetime as dt

    from validation.corrections import import_corrections, read_corrections

    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=NO_FILES)
        root, column, row_key, value = quarantined_for(warehouse, "constraint")
        path = write_csv(tmp_path / "c.csv", [{"root_uuid": root, "field": column, "row_key": row_key or "",
                                              "new_value": str(int(value) // 10), "reason": "", "author": "Mariam"}])
        with warehouse.transaction():  # the import committed, then the run stopped before retyping
            import_corrections(warehouse.con, read_corrections(path), str(path), dt.datetime.now(dt.timezone.utc))
        assert in_quarantine(warehouse, root)
        apply_corrections_file(warehouse, path)
        assert not in_quarantine(warehouse, root)


def test_a_row_added_to_a_repeat_within_the_corrected_row_does_not_outdate_it() -> None:
    """original_row keeps a repeat row's own answers: a crop added to a plot (a repeat
    within the repeat) leaves the plot the same row, and its corrected area applies."""
    import copy

    from flows.sync import dictionary_for_asset
    from validation.corrections import _apply_one

    from test_form_changes import content  # noqa: E402  (tests/ is on sys.path)

    dictionary = dictionary_for_asset({"uid": "aPlots", "content": content([
        {"type": "text", "name": "head"}, {"type": "begin_repeat", "name": "plots"}, {"type": "integer", "name": "area"},
        {"type": "begin_repeat", "name": "crops"}, {"type": "text", "name": "crop"}, {"type": "end_repeat", "name": ""},
        {"type": "end_repeat", "name": ""}], "1")})
    received = {"head": "Awa", "plots": [{"plots/area": 5, "plots/crops": [{"plots/crops/crop": "mil"}]}]}
    status, _, found, row = _apply_one(dictionary, copy.deepcopy(received), received, "area", "1", "50", None, None)
    assert status == "applied"
    received["plots"][0]["plots/crops"].append({"plots/crops/crop": "sorgho"})  # edited on the server
    corrected = copy.deepcopy(received)
    assert _apply_one(dictionary, corrected, received, "area", "1", "50", found, row)[0] == "applied"
    assert corrected["plots"][0]["plots/area"] == "50"
    received["plots"][0]["plots/owner"] = "Binta"  # another answer of the plot itself: check it again
    assert _apply_one(dictionary, copy.deepcopy(received), received, "area", "1", "50", found, row)[0] == "outdated"
