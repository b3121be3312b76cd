"""The sync, end to end: local server over HTTP -> real Prefect flow run -> real DuckDB file."""

from __future__ import annotations

import duckdb

from flows.pipeline import sync_flow
from flows.sync import SyncSettings, sync_asset
from kobo.client import KoboClient
from kobo.seed import seeded_server
from warehouse.store import Warehouse


def _counts(path) -> tuple[int, int, int, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return (
            con.execute("select count(*) from households").fetchone()[0],
            con.execute("select count(*) from household_members").fetchone()[0],
            con.execute("select count(*) from quality.quarantine").fetchone()[0],
            con.execute("select count(*) from raw.submissions").fetchone()[0],
        )


def test_flow_run_lands_types_validates_and_is_idempotent(seeded, warehouse_path, prefect_harness, monkeypatch) -> None:
    monkeypatch.setenv("KOBO_TOKEN", seeded.token)
    generated = seeded.assets["household_survey"].submissions
    summaries = sync_flow(base_url=seeded.server.url, warehouse_path=str(warehouse_path), page_size=100)
    assert [s["pulled"] for s in summaries] == [250] and summaries[0]["pages"] == 3
    households, members, quarantined, raw = _counts(warehouse_path)
    assert households + quarantined == len(generated) == raw
    assert quarantined == summaries[0]["quarantined"] > 0
    expected_members = sum(len(s.get("members", [])) for s in generated
                           if s["meta/rootUuid"] not in _quarantined_roots(warehouse_path))
    assert members == expected_members

    again = sync_flow(base_url=seeded.server.url, warehouse_path=str(warehouse_path), page_size=100)
    assert (again[0]["new"], again[0]["edited"], again[0]["deleted"]) == (0, 0, 0)
    assert again[0]["pulled"] == again[0]["unchanged"] == 100  # the overlap re-read below the watermark
    assert _counts(warehouse_path) == (households, members, quarantined, raw)


def _quarantined_roots(path) -> set[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {r[0] for r in con.execute("select root_uuid from quality.quarantine").fetchall()}


def test_typed_tables_hold_what_the_server_sent(seeded, warehouse_path) -> None:
    uid = seeded.assets["household_survey"].uid
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, uid)
        source = next(s for s in seeded.assets["household_survey"].submissions
                      if s.get("consent") == "yes" and "livelihood/avec_savings_fcfa" in s
                      and s["meta/rootUuid"] not in _roots(warehouse))
        row = warehouse.con.execute(
            "select household_size, avec_savings_fcfa, income_activities, income_activities_raw, location_latitude, "
            "location_accuracy, submission_time, start, submission_id, income_activities__farming, "
            "income_activities__other from households where root_uuid = ?",
            [source["meta/rootUuid"]]).fetchone()
        lat, _, _, accuracy = (float(x) for x in source["location"].split())
        assert row[0] == int(source["identification/household_size"])
        assert row[1] == int(source["livelihood/avec_savings_fcfa"])
        assert row[2] == source["livelihood/income_activities"].split() and row[3] == source["livelihood/income_activities"]
        assert abs(row[4] - lat) < 1e-9 and abs(row[5] - accuracy) < 1e-9
        assert row[6].isoformat().startswith(source["_submission_time"]) and row[6].utcoffset().total_seconds() == 0
        assert row[8] == source["_id"]
        chosen = source["livelihood/income_activities"].split()
        assert (row[9], row[10]) == ("farming" in chosen, "other" in chosen)
        unanswered = warehouse.con.execute(
            "select income_activities, income_activities_raw, income_activities__farming from households "
            "where root_uuid in (select unnest(?::varchar[]))",
            [[s["meta/rootUuid"] for s in seeded.assets["household_survey"].submissions
              if "livelihood/income_activities" not in s]]).fetchall()
        assert unanswered and set(unanswered) == {(None, None, None)}  # not an empty list, not False
        members = warehouse.con.execute(
            "select row_key, position, member_age, member_relation from household_members where root_uuid = ? "
            "order by position", [source["meta/rootUuid"]]).fetchall()
        assert [m[2] for m in members] == [int(m["members/member_age"]) for m in source["members"]]
        assert members[0][:2] == ("1", 1) and members[0][3] == "head"
        raw = warehouse.con.execute(
            "select payload::varchar, is_current, form_version from raw.submissions where root_uuid = ?",
            [source["meta/rootUuid"]]).fetchone()
        import json
        assert json.loads(raw[0]) == source and raw[1] is True and raw[2] == source["__version__"]


def _roots(warehouse: Warehouse) -> set[str]:
    return {r[0] for r in warehouse.con.execute("select root_uuid from quality.quarantine").fetchall()}


def test_quarantine_keeps_failures_out_with_reasons_in_plain_words(seeded, warehouse_path) -> None:
    uid = seeded.assets["household_survey"].uid
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, uid)
        reasons = warehouse.con.execute(
            "select q.root_uuid, q.reasons, exists(select 1 from households h where h.root_uuid = q.root_uuid), "
            "exists(select 1 from raw.submissions r where r.root_uuid = q.root_uuid) from quality.quarantine q").fetchall()
    assert reasons
    for root, text, in_clean, in_raw in reasons:
        assert not in_clean and in_raw
        assert " / " in text and any(word in text for word in ("GPS", "obligatoire", "Âge", "âge"))


def test_edited_submission_adds_a_raw_version_and_replaces_clean_rows(seeded, warehouse_path) -> None:
    uid = seeded.assets["household_survey"].uid
    asset = seeded.assets["household_survey"]
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, uid)
        original = next(s for s in asset.submissions if s.get("consent") == "yes" and s["meta/rootUuid"] not in _roots(warehouse))
        edited = dict(original, **{"identification/head_age": "61", "_uuid": "11111111-2222-4333-8444-555555555555",
                                   "meta/instanceID": "uuid:11111111-2222-4333-8444-555555555555",
                                   "meta/deprecatedID": original["meta/instanceID"]})
        # Reconciliation of edits arrives with issue 4; here the edited page is landed directly.
        from warehouse.load import FormLoader
        from flows.sync import dictionary_for_asset

        loader = FormLoader(warehouse, dictionary_for_asset(client.get_asset(uid)), uid)
        result = loader.load_page([edited], None)
        assert (result.new, result.edited) == (0, 1)
        versions = warehouse.con.execute(
            "select count(*), count(*) filter (where is_current) from raw.submissions where root_uuid = ?",
            [original["meta/rootUuid"]]).fetchone()
        assert versions == (2, 1)
        assert warehouse.con.execute("select head_age, uuid from households where root_uuid = ?",
                                     [original["meta/rootUuid"]]).fetchone() == (61, edited["_uuid"])


def test_large_submissions_sync_within_the_default_memory(household, tmp_path) -> None:
    """Long answers (some 12 KB a submission, 12 MB a page of 1,000): pages and batches are
    sized by their text, so DuckDB's parse of them fits the warehouse's memory."""
    seeded = seeded_server([household], 1500, seed=73, mistake_rate=0.0)
    asset = seeded.assets["household_survey"]
    for submission in list(asset.submissions):
        asset.replace(dict(submission, **{"livelihood/income_other": "Jardinage et petit commerce. " * 400}))
    with seeded.server as server, KoboClient(server.url, seeded.token) as client, \
            Warehouse(tmp_path / "w.duckdb") as warehouse:
        summary = sync_asset(client, warehouse, asset.uid, settings=SyncSettings(download_attachments=False))
        assert summary.pulled == 1500 and summary.pages > 2  # smaller pages than the 1,000 asked for
        assert warehouse.con.execute("select count(*), count(DISTINCT root_uuid) from raw.submissions").fetchone() \
            == (1500, 1500)


def _content(warehouse: Warehouse) -> tuple:
    return tuple(warehouse.con.execute(query).fetchall() for query in (
        "select * exclude (first_seen, last_seen) from raw.submissions order by all",
        "select * from households order by root_uuid",
        "select * from household_members order by root_uuid, row_key",
        "select root_uuid, check_code, message from quality.issues where resolved_at is null order by all",
        "select watermark from meta.sync_state"))


def test_a_long_sync_reopens_its_warehouse_and_keeps_everything(seeded, tmp_path) -> None:
    """Every `reopen_every` submissions the sync closes and reopens its warehouse between
    two batches (DuckDB keeps memory for every block it made until then); the warehouse
    ends the same as with no reopening."""
    uid = seeded.assets["household_survey"].uid
    results = []
    for name, reopen_every in (("reopened", 60), ("once", 10**9)):
        settings = SyncSettings(download_attachments=False, reconcile="never", batch_size=50, reopen_every=reopen_every)
        with KoboClient(seeded.server.url, seeded.token, page_size=50) as client, \
                Warehouse(tmp_path / f"{name}.duckdb") as warehouse:
            first = warehouse.con
            summary = sync_asset(client, warehouse, uid, settings=settings)
            assert summary.pulled == 250
            assert (warehouse.con is not first) == (name == "reopened")
            results.append(_content(warehouse))
    assert results[0] == results[1] and len(results[0][0]) == 250


def test_reopening_waits_for_another_program_to_let_go(warehouse_path) -> None:
    """If another program opens the warehouse while the sync reopens it, the sync waits for
    it to close the file, and says so clearly if it never does."""
    import subprocess
    import sys

    from warehouse.store import WarehouseInUse

    with Warehouse(warehouse_path):
        pass
    reader = ("import duckdb, sys, time; con = duckdb.connect(sys.argv[1], read_only=True); "
              "print('open', flush=True); time.sleep(float(sys.argv[2])); con.close()")
    warehouse = Warehouse(warehouse_path)
    try:
        warehouse.con.close()  # as reopen does, so that the reader can open the file
        for hold, wait, expected in ((1.5, 30.0, None), (30.0, 1.0, WarehouseInUse)):
            process = subprocess.Popen([sys.executable, "-c", reader, str(warehouse_path), str(hold)],
                                       stdout=subprocess.PIPE, text=True)
            try:
                assert process.stdout.readline().strip() == "open"
                warehouse.con = duckdb.connect(":memory:")  # stands for the connection reopen closes
                if expected is None:
                    warehouse.reopen(wait_seconds=wait)
                    assert warehouse.con.execute("select count(*) from meta.sync_runs").fetchone() == (0,)
                    warehouse.con.close()
                else:
                    try:
                        warehouse.reopen(wait_seconds=wait)
                        raise AssertionError("reopen did not give up")
                    except WarehouseInUse as error:
                        assert "another program opened it" in str(error)
            finally:
                process.kill()
                process.wait()
    finally:
        warehouse.con.close()


def test_a_quality_summary_that_fails_does_not_fail_the_run(seeded, warehouse_path, prefect_harness, caplog) -> None:
    """The summary comes after the forms' commits: a warehouse it cannot read (here a
    quality table gone) gives a warning, and the run still completes with its data."""
    from prefect import flow

    from flows.pipeline import publish_quality_summary

    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=SyncSettings(
            download_attachments=False))
        warehouse.con.execute("DROP VIEW quality.quarantine")
        warehouse.con.execute("DROP TABLE quality.issues")
    synced = _raw_count(warehouse_path)

    @flow(name="summary-after-sync")
    def summary_after_sync() -> str:
        publish_quality_summary(str(warehouse_path))
        return "completed"

    with caplog.at_level("WARNING"):
        assert summary_after_sync() == "completed"
    assert "no data-quality summary (the synced data is kept)" in caplog.text and "issues" in caplog.text
    assert _raw_count(warehouse_path) == synced > 0


def _raw_count(path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("select count(*) from raw.submissions").fetchone()[0]
