"""Hostile and broken input: each gets a clear error or a quarantine row; none crashes
the run or corrupts the warehouse."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from flows.sync import SyncSettings, sync_asset
from kobo.client import KoboClient
from kobo.errors import ServerUnavailable
from kobo.seed import seeded_server
from kobo.server import FaultPlan
from warehouse.store import Warehouse, WarehouseError

ROOT = Path(__file__).resolve().parents[1]
NO_FILES = SyncSettings(download_attachments=False)


def test_hostile_submissions_are_quarantined_or_loaded_never_a_crash(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 40, seed=71, mistake_rate=0.0)
    asset = seeded.assets["household_survey"]
    good = [s for s in asset.submissions if s.get("consent") == "yes"]
    bambara = dict(good[0], **{"identification/head_name": "Ɲɛlɛ Kɔnɛ ŋ", "livelihood/income_activities": "other",
                               "livelihood/income_other": "Sugu fɛɛrɛ — ɛ ɔ ɲ ŋ " + "x" * 100_000})
    formula = dict(good[1], **{"identification/head_name": "=HYPERLINK(\"http://evil\")",
                               "livelihood/income_activities": "other",
                               "livelihood/income_other": "'); drop table households; --"})
    bad_gps = dict(good[2], location="north of the river")
    bad_meta = dict(good[3], _submission_time="yesterday", _validation_status="approved", __version__=["v1"])
    # A repeat that is not a list of entries, plain text or text that only looks like one.
    not_a_list, half_a_list = dict(good[4], members="six personnes"), dict(good[5], members='[{"members/member_age"')
    for changed in (bambara, formula, bad_gps, bad_meta, not_a_list, half_a_list):
        asset.replace(changed)
    # kpi would never serve a result that is not an object, but a proxy or a bug might.
    asset._encoded[asset.submissions[-1]["_id"]] = b'"not an object"'
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        # The server's documents are not all objects: serve them as they are.
        with KoboClient(server.url, seeded.token) as client, Warehouse(path) as warehouse:
            summary = sync_asset(client, warehouse, asset.uid, settings=NO_FILES)
    with duckdb.connect(str(path), read_only=True) as con:
        names = {r[0] for r in con.execute("select head_name from households").fetchall()}
        assert "Ɲɛlɛ Kɔnɛ ŋ" in names and '=HYPERLINK("http://evil")' in names
        assert con.execute("select count(*) from households").fetchone()[0] > 0  # the table survived the 'drop'
        reasons = dict(con.execute("select root_uuid, reasons from quality.quarantine").fetchall())
        assert "GPS" in reasons[bad_gps["meta/rootUuid"]]
        for broken in (not_a_list, half_a_list):
            assert "n'est pas une liste" in reasons[broken["meta/rootUuid"]]
        assert con.execute("select count(*) from quality.issues where check_code = 'type.repeat' and value = ?",
                           ["six personnes"]).fetchone()[0] == 1
        assert any(root.startswith("unidentified:") and "not a JSON object" in text for root, text in reasons.items())
        meta_row = con.execute("select submission_time, validation_status, form_version from households where root_uuid = ?",
                               [bad_meta["meta/rootUuid"]]).fetchone()
        assert meta_row == (None, None, None)
    assert summary.pulled >= 40  # the unusable one is asked for again by the reconciliation


def test_malformed_json_from_the_server_is_a_clear_error(household) -> None:
    seeded = seeded_server([household], 10, seed=72, faults=FaultPlan(rate=1.0, kinds=("truncated",), max_in_a_row=99))
    with seeded.server as server, KoboClient(server.url, seeded.token, retries=2, backoff=0.001) as client:
        with pytest.raises(ServerUnavailable, match="cut short|complete JSON|was cut"):
            client.get_asset(seeded.assets["household_survey"].uid)


def test_a_corrupted_block_is_not_taken_for_a_warehouse_in_use(tmp_path: Path) -> None:
    """DuckDB names a corrupt block "in block at location ...": once taken for "lock", it
    made the sync and the commands wait out their whole timeout for a program that does
    not exist, then say the file was in use."""
    import time

    from warehouse.store import WarehouseInUse

    path = tmp_path / "w.duckdb"
    with Warehouse(path) as warehouse:
        warehouse.con.execute("CHECKPOINT")
    data = bytearray(path.read_bytes())
    data[12288:12488] = bytes(b ^ 0xFF for b in data[12288:12488])  # one block of the file, scrambled
    path.write_bytes(bytes(data))
    started = time.monotonic()
    with pytest.raises(WarehouseError, match="Corrupt database file") as raised:
        Warehouse(path, wait_seconds=30)
    assert not isinstance(raised.value, WarehouseInUse) and time.monotonic() - started < 5


def test_a_corrupted_warehouse_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.duckdb"
    path.write_bytes(b"this is not a database" * 1000)
    with pytest.raises(WarehouseError, match="not a usable DuckDB warehouse"):
        Warehouse(path)
    result = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "select 1", "--warehouse", str(path)],
                            cwd=ROOT, capture_output=True, text=True)
    french, english = result.stderr.strip().splitlines()  # one message in two languages, no traceback
    assert result.returncode == 1 and "n'est pas un entrepôt DuckDB utilisable" in french
    assert english.startswith("terrain: ") and "not a usable DuckDB warehouse" in english


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a full disk: writes fail instead of killing us
    from kobo.client import KoboClient
    from flows.sync import SyncSettings, sync_asset
    from warehouse.store import Warehouse
    url, token, uid, path, limit = sys.argv[1:6]
    warehouse = Warehouse(path)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    try:
        with KoboClient(url, token) as client:
            sync_asset(client, warehouse, uid, settings=SyncSettings(download_attachments=False, page_size=100))
    except Exception as error:
        print(type(error).__name__, error)
        sys.exit(3)
""")


def test_a_full_disk_during_a_load_keeps_the_warehouse_whole(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 1500, seed=73)
    path = tmp_path / "w.duckdb"
    uid = seeded.assets["household_survey"].uid
    with seeded.server as server:
        with KoboClient(server.url, seeded.token, page_size=100) as client, Warehouse(path) as warehouse:
            sync_asset(client, warehouse, uid, settings=SyncSettings(download_attachments=False, page_size=100))
        with duckdb.connect(str(path)) as con:  # start again from an empty project, same file
            con.execute("delete from households; delete from household_members; delete from raw.submissions; "
                        "delete from meta.sync_state; delete from quality.issues; checkpoint")
        result = subprocess.run([sys.executable, "-c", FULL_DISK, server.url, seeded.token, uid, str(path),
                                 "3000000"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 3, result.stdout + result.stderr[-2000:]
        assert "WarehouseError" in result.stdout and "disk full" in result.stdout
        with duckdb.connect(str(path), read_only=True) as con:
            raw = con.execute("select count(*) from raw.submissions").fetchone()[0]
            clean = con.execute("select count(*) from households").fetchone()[0]
            quarantined = con.execute("select count(*) from quality.quarantine").fetchone()[0]
        assert raw < 1500 and raw % 100 == 0  # whole pages only, never half of one
        assert clean + quarantined == raw
        # Space again: the next sync picks up where the warehouse stands, losing and duplicating nothing.
        with KoboClient(server.url, seeded.token) as client, Warehouse(path) as warehouse:
            sync_asset(client, warehouse, uid, settings=NO_FILES)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select count(distinct root_uuid), count(*) from raw.submissions").fetchone() == (1500, 1500)
        assert con.execute("select (select count(*) from households) + (select count(*) from quality.quarantine)"
                           ).fetchone()[0] == 1500
