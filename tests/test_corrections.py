"""Corrections and re-synced edits take a submission out of quarantine; reverting a
correction puts it back; a correction that targets nothing is reported."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import openpyxl

from flows.sync import SyncSettings, sync_asset
from kobo.client import KoboClient
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
        rebuilt, problems = apply_corrections_file(warehouse, corrections)
        assert not in_quarantine(warehouse, root)
        table = "household_members" if row_key else "households"
        where = "root_uuid = ? and row_key = ?" if row_key else "root_uuid = ?"
        assert warehouse.con.execute(f"select {column} from {table} where {where}",
                                     [root, row_key] if row_key else [root]).fetchone()[0] == int(fixed)
        log = warehouse.con.execute("select author, reason, status from meta.corrections where root_uuid = ?", [root]).fetchone()
        assert log == ("Mariam (data manager)", "Confirmé par téléphone avec l'enquêteur", "applied")
        assert problems == ["uuid:not-a-submission head_age (row -): no submission with this root_uuid in the warehouse"]
        # The raw history keeps what the enumerator sent.
        assert value in warehouse.con.execute("select payload::varchar from raw.submissions where root_uuid = ?",
                                              [root]).fetchone()[0]

        reverted = write_csv(tmp_path / "reverted.csv", [])
        apply_corrections_file(warehouse, reverted)
        assert in_quarantine(warehouse, root)


def test_corrections_from_xlsx_through_the_command_line(seeded, warehouse_path, tmp_path: Path) -> None:
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=NO_FILES)
        root, column, row_key, value = quarantined_for(warehouse, "required")
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["root_uuid", "field", "row_key", "new_value", "reason", "author"])
    sheet.append([root, column, row_key or "", "SIK-0001" if column == "household_id" else "Awa Traoré",
                  "Retrouvé sur la fiche papier", "Issa"])
    sheet.append([root, "no_such_field", "", "x", "test", "Issa"])
    workbook.save(tmp_path / "corrections.xlsx")
    result = subprocess.run([sys.executable, "-m", "flows.cli", "corrections", str(tmp_path / "corrections.xlsx"),
                             "--warehouse", str(warehouse_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1  # one correction targets nothing
    assert "1 corrections applied" in result.stdout
    assert "no_such_field" in result.stdout and "the form has no field" in result.stdout
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


def test_write_back_puts_quarantined_on_hold_and_clean_approved(seeded, warehouse_path) -> None:
    asset = seeded.assets["household_survey"]
    settings = SyncSettings(download_attachments=False, write_back=True)
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        summary = sync_asset(client, warehouse, asset.uid, settings=settings)
        quarantined = {r[0] for r in warehouse.con.execute("select submission_id from quality.quarantine").fetchall()}
    statuses = {s["_id"]: (s.get("_validation_status") or {}).get("uid") for s in asset.submissions}
    assert summary.statuses_written == len(asset.submissions)
    assert {i for i, st in statuses.items() if st == "validation_status_on_hold"} == quarantined
    assert {i for i, st in statuses.items() if st == "validation_status_approved"} == set(statuses) - quarantined


def test_write_back_leaves_alone_a_status_a_supervisor_set(seeded, warehouse_path) -> None:
    """Statuses change on the server without the submission changing: the write-back reads
    them there, and changes only those nobody set or that Terrain set itself."""
    asset = seeded.assets["household_survey"]
    settings = SyncSettings(download_attachments=False, write_back=True)
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, asset.uid, settings=settings)
        quarantined = sorted(r[0] for r in warehouse.con.execute("select submission_id from quality.quarantine").fetchall())
        clean = sorted(r[0] for r in warehouse.con.execute("select submission_id from households").fetchall())
        decisions = {clean[0]: "validation_status_not_approved", clean[1]: "validation_status_on_hold",
                     quarantined[0]: "validation_status_approved"}
        for submission_id, status in decisions.items():
            seeded.server.set_validation_status(asset.uid, submission_id, status, "superviseur")
        seeded.server.set_validation_status(asset.uid, clean[2], None, "superviseur")  # cleared: Terrain's again
        summary = sync_asset(client, warehouse, asset.uid, settings=settings)
    statuses = {s["_id"]: (s.get("_validation_status") or {}).get("uid") for s in asset.submissions}
    assert summary.statuses_written == 1
    assert {i: statuses[i] for i in decisions} == decisions
    assert statuses[clean[2]] == "validation_status_approved"
