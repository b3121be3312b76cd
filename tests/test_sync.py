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
