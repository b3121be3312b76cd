"""A sync that misses nothing: edits, hard deletes, late and new submissions, 20% faults,
attachments, and a token that never leaks."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import duckdb
import pytest

from flows.sync import SyncSettings, sync_asset
from kobo.client import KoboClient
from kobo.seed import seeded_server
from kobo.server import FaultPlan
from warehouse import store
from warehouse.load import FormLoader
from warehouse.store import Warehouse, WarehouseError

from test_sync_kobo import warehouse_snapshot  # noqa: E402  (tests/ is on sys.path)

NO_FILES = SyncSettings(download_attachments=False)


def sync(server, token: str, path: Path, settings: SyncSettings = NO_FILES, **client_options):
    options = {"backoff": 0.01, "max_backoff": 0.05, **client_options}
    with KoboClient(server.url, token, **options) as client, Warehouse(path) as warehouse:
        return [sync_asset(client, warehouse, uid, settings=settings) for uid in server.assets]


def clean_roots(path: Path, table: str = "households") -> set[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        quarantined = {r[0] for r in con.execute("select root_uuid from quality.quarantine").fetchall()}
        clean = {r[0] for r in con.execute(f"select root_uuid from {table}").fetchall()}
    return clean | quarantined


def test_edits_deletes_and_new_submissions_leave_the_server_state_plus_history(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 300, seed=31)
    asset = seeded.assets["household_survey"]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        sync(server, seeded.token, path)
        consenting = [s for s in asset.submissions if s.get("consent") == "yes"]
        edited = server.edit_submission(asset.uid, consenting[0]["_id"], {"identification/head_age": "77"})
        server.delete_submission(asset.uid, consenting[1]["_id"])
        deleted_root = consenting[1]["meta/rootUuid"]
        added = server.generate_submissions(asset.uid, 25, seed=5, mistake_rate=0.0)
        # A late arrival: visible now, with an _id far below the watermark.
        late = server.add_submissions(asset.uid, [{k: v for k, v in consenting[2].items() if not k.startswith("_")
                                                   and not k.startswith("meta/") and k != "formhub/uuid"}])[0]
        asset.delete(late["_id"])
        late["_id"] = 5
        asset.add(late)
        [summary] = sync(server, seeded.token, path)
        current = {s["meta/rootUuid"] for s in asset.submissions}

    assert (summary.new, summary.edited, summary.deleted) == (26, 1, 1)
    assert summary.reconciled
    assert clean_roots(path) == current
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select head_age, uuid from households where root_uuid = ?",
                           [edited["meta/rootUuid"]]).fetchone() == (77, edited["_uuid"])
        history = con.execute("select change from raw.history where root_uuid = ? order by changed_at, change",
                              [edited["meta/rootUuid"]]).fetchall()
        assert [h[0] for h in history] == ["new", "edited"]
        # A deleted submission leaves the clean tables but never the raw history.
        assert con.execute("select count(*) from households where root_uuid = ?", [deleted_root]).fetchone()[0] == 0
        kept = con.execute("select deleted_at is not null, payload::varchar from raw.submissions where root_uuid = ?",
                           [deleted_root]).fetchone()
        assert kept[0] and json.loads(kept[1])["meta/rootUuid"] == deleted_root
        assert con.execute("select count(*) from raw.history where change = 'deleted'").fetchone()[0] == 1
        assert con.execute("select count(*) from household_members where root_uuid = ?", [deleted_root]).fetchone()[0] == 0
        runs = con.execute("select new, edited, deleted, reconciled from meta.sync_runs order by run_id").fetchall()
        assert runs[-1] == (26, 1, 1, True)


def _keys_reversed(value):
    if isinstance(value, dict):
        return {key: _keys_reversed(item) for key, item in reversed(list(value.items()))}
    if isinstance(value, list):
        return [_keys_reversed(item) for item in value]
    return value


@pytest.mark.parametrize("parse_bytes", [None, 20_000])
def test_the_same_submissions_with_their_keys_in_another_order_are_not_edits(household, tmp_path: Path,
                                                                             monkeypatch, parse_bytes) -> None:
    """kobo-api.md §4: key order is not guaranteed. Every sync re-reads an overlap below its
    watermark; sent in another order, those submissions are seen again, not edited (no new
    raw version, now or at the next sync), while a real change under the same _uuid is kept.
    With 20 KB slices, the hashes and the comparisons run a few submissions at a time: one
    lost or doubled at a slice's edge would show as an edit or a new version."""
    if parse_bytes:
        monkeypatch.setattr(store, "PARSE_BYTES", parse_bytes)
    seeded = seeded_server([household], 150, seed=34)
    asset = seeded.assets["household_survey"]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        sync(server, seeded.token, path)
        with_files = [s for s in asset.submissions[-100:] if s.get("_attachments")][-1]
        first_keys = list(asset.submissions[-1])
        for submission in list(asset.submissions):
            reordered = _keys_reversed(submission)
            if submission is with_files:  # a file deleted on the server: its _uuid stays
                reordered["_attachments"][0]["is_deleted"] = True
            asset.replace(reordered)
        second = sync(server, seeded.token, path)[0]
        third = sync(server, seeded.token, path)[0]
    assert list(asset.submissions[-1]) == first_keys[::-1] != first_keys  # served in another order
    assert (second.new, second.edited, second.pulled) == (0, 1, 100)
    assert (third.new, third.edited, third.pulled) == (0, 0, 100)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select count(*), count(*) filter (where is_current) from raw.submissions").fetchone() == (151, 150)
        versions = con.execute("select count(*) from raw.submissions where root_uuid = ?",
                               [with_files["meta/rootUuid"]]).fetchone()[0]
        assert versions == 2
        assert con.execute("select count(*) from raw.history where change = 'edited'").fetchone()[0] == 1


def test_twenty_percent_faults_give_the_same_warehouse_as_a_calm_sync(household, tmp_path: Path) -> None:
    calm = seeded_server([household], 400, seed=32)
    stormy = seeded_server([household], 400, seed=32,
                           faults=FaultPlan(rate=0.2, timeout_seconds=0.3, retry_after=0, seed=7))
    with calm.server, stormy.server:
        sync(calm.server, calm.token, tmp_path / "calm.duckdb", page_size=50)
        sync(stormy.server, stormy.token, tmp_path / "storm.duckdb", page_size=50, timeout=(0.5, 0.25), retries=8)
        injected = dict(stormy.server.faults_injected)
    assert sum(injected.values()) >= 5 and len([k for k, v in injected.items() if v]) >= 4
    assert warehouse_snapshot(tmp_path / "calm.duckdb") == warehouse_snapshot(tmp_path / "storm.duckdb")


def test_attachments_are_stored_by_content_skipped_when_present_and_resumed(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 30, seed=33, attachment_size=300_000)
    store = tmp_path / "files"
    settings = SyncSettings(attachments_dir=str(store))
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        asset = seeded.assets["household_survey"]
        listed = [a for s in asset.submissions for a in s["_attachments"]]
        # A cut: the first file was half downloaded when the connection dropped.
        from warehouse.attachments import AttachmentStore

        first = listed[0]
        with KoboClient(server.url, seeded.token) as client:
            partial = AttachmentStore(store).partial_path(asset.uid, first["uid"])
            partial.parent.mkdir(parents=True)
            whole = tmp_path / "whole"
            client.download(first["download_url"], whole)
            partial.write_bytes(whole.read_bytes()[:100_000])
        requests_before = server.requests_served
        [summary] = sync(server, seeded.token, path, settings)
        assert summary.attachments == len(listed)
        [again] = sync(server, seeded.token, path, settings)
        assert again.attachments == 0
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("select attachment_uid, root_uuid, question_xpath, file_name, sha256, size_bytes, "
                           "stored_path from attachments").fetchall()
    assert len(rows) == len(listed)
    by_uid = {r[0]: r for r in rows}
    assert {a["question_xpath"] for a in listed} == {r[2] for r in rows} >= {"photo", "meta/audit"}
    for uid, root, xpath, name, sha256, size, stored in rows:
        stored_path = Path(stored)
        assert stored_path.parent.parent == store and stored_path.name == sha256  # never the server's name
        assert stored_path.stat().st_size == size
    resumed = by_uid[first["uid"]]
    assert Path(resumed[6]).read_bytes() == whole.read_bytes()
    assert not any((store / ".partial").iterdir())
    assert server.requests_served > requests_before


def test_hostile_attachment_names_never_choose_the_path(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 3, seed=34)
    asset = seeded.assets["household_survey"]
    for submission in asset.submissions:
        for attachment in submission["_attachments"]:
            attachment["media_file_basename"] = "../../../etc/passwd"
            attachment["filename"] = "../../outside.jpg"
        asset._encoded.pop(submission["_id"], None)
    with seeded.server as server:
        sync(server, seeded.token, tmp_path / "w.duckdb", SyncSettings(attachments_dir=str(tmp_path / "files")))
    assert not (tmp_path / "outside.jpg").exists() and not (tmp_path.parent / "outside.jpg").exists()
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        names = con.execute("select distinct file_name from attachments").fetchall()
    assert names == [("../../../etc/passwd",)]  # kept as data only


def test_the_token_appears_nowhere(household, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seeded = seeded_server([household], 120, seed=35, faults=FaultPlan(rate=0.3, timeout_seconds=0.2, retry_after=0, seed=2))
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "w.duckdb"
    errors = []
    with seeded.server as server:
        sync(server, seeded.token, path, SyncSettings(attachments_dir=str(tmp_path / "files")),
             page_size=40, timeout=(0.5, 0.15), retries=8)
        with KoboClient(server.url, "f" * 40) as bad:
            try:
                bad.get_asset(seeded.assets["household_survey"].uid)
            except Exception as error:  # noqa: BLE001
                errors.append(repr(error) + str(error) + repr(bad))
    assert seeded.token not in caplog.text
    assert all(seeded.token not in e for e in errors) and errors
    assert seeded.token.encode() not in path.read_bytes()
    with duckdb.connect(str(path), read_only=True) as con:
        text = " ".join(str(v) for row in con.execute(
            "select payload::varchar from raw.submissions union all select message from quality.issues").fetchall()
            for v in row)
    assert seeded.token not in text


def test_raw_rows_from_before_lookup_keys_get_them_and_are_found_by_them(household, tmp_path: Path) -> None:
    """A batch finds the versions raw holds by root_key, and the duplicate_uuid rule the
    other submissions by uuid_key: rows landed by a Terrain without those columns get them
    when the warehouse is opened, else an edit of one of them would be taken for a new
    submission (two current versions, two clean rows), and a second submission with its
    _uuid would go unflagged."""
    seeded = seeded_server([household], 120, seed=36)
    asset = seeded.assets["household_survey"]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        sync(server, seeded.token, path)
        with duckdb.connect(str(path)) as con:  # as an older Terrain left it
            con.execute("ALTER TABLE raw.submissions DROP COLUMN root_key")
            con.execute("ALTER TABLE raw.submissions DROP COLUMN uuid_key")
            con.execute("COMMENT ON VIEW raw.history IS 'schema.sql of an older Terrain'")
        with Warehouse(path) as warehouse:
            keys = warehouse.con.execute(
                "select count(*), count(*) filter (where root_key = lookup_key(root_uuid) "
                "and uuid_key = lookup_key(uuid)) from raw.submissions").fetchone()
        assert keys == (120, 120)
        consenting = [s for s in asset.submissions if s.get("consent") == "yes"]
        edited = server.edit_submission(asset.uid, consenting[0]["_id"], {"identification/head_age": "71"})
        twin = {**consenting[1], "_id": max(s["_id"] for s in asset.submissions) + 1,
                "meta/rootUuid": "uuid:0b5e7d6e-7c35-4f0e-9a51-3f1a2d8c9e47"}  # the same _uuid, sent again
        with server.lock:
            asset.add(twin)
        [summary] = sync(server, seeded.token, path, SyncSettings(download_attachments=False, reconcile="always"))
    assert (summary.new, summary.edited) == (1, 1)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select count(*), count(*) filter (where is_current) from raw.submissions "
                           "where root_uuid = ?", [edited["meta/rootUuid"]]).fetchone() == (2, 1)
        assert con.execute("select count(*) from raw.submissions where is_current").fetchone()[0] == 121
        assert con.execute("select count(*) from households where root_uuid = ?",
                           [edited["meta/rootUuid"]]).fetchone()[0] <= 1
        assert con.execute("select check_code from quality.issues where root_uuid = ?",
                           [twin["meta/rootUuid"]]).fetchall() == [("duplicate_uuid",)]


@pytest.mark.parametrize("settled_by", ["deleting", "editing"])
def test_settling_the_first_of_two_twins_lets_the_second_out_of_quarantine(household, tmp_path: Path,
                                                                            settled_by: str) -> None:
    """Two submissions with one _uuid: the later is kept out as a duplicate. When the data
    manager deletes the earlier one on the server, or edits it (an edit gives it a new
    _uuid), the next sync types the later one again (it is no longer a duplicate), rather
    than leaving it in quarantine until a rebuild."""
    seeded = seeded_server([household], 40, seed=37)
    asset = seeded.assets["household_survey"]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        sync(server, seeded.token, path)
        with duckdb.connect(str(path), read_only=True) as con:
            clean = {r[0] for r in con.execute("select root_uuid from households").fetchall()}
        first = next(s for s in asset.submissions if s["meta/rootUuid"] in clean)
        twin = {**first, "_id": max(s["_id"] for s in asset.submissions) + 1,
                "meta/rootUuid": "uuid:6f1c0e2a-93d4-4b7e-8a20-5d9e1b3c7f48"}  # the same _uuid, sent again
        with server.lock:
            asset.add(twin)
        sync(server, seeded.token, path, SyncSettings(download_attachments=False, reconcile="always"))
        with duckdb.connect(str(path), read_only=True) as con:
            assert con.execute("select check_code from quality.issues where root_uuid = ? and resolved_at is null "
                               "and severity = 'error'", [twin["meta/rootUuid"]]).fetchall() == [("duplicate_uuid",)]
        if settled_by == "deleting":
            server.delete_submission(asset.uid, first["_id"])
        else:
            server.edit_submission(asset.uid, first["_id"], {"identification/head_age": "61"})
        [summary] = sync(server, seeded.token, path, SyncSettings(download_attachments=False, reconcile="always"))
    assert (summary.deleted, summary.edited) == ((1, 0) if settled_by == "deleting" else (0, 1))
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select count(*) from quality.quarantine where root_uuid = ?",
                           [twin["meta/rootUuid"]]).fetchone()[0] == 0
        assert con.execute("select count(*) from households where root_uuid = ?", [twin["meta/rootUuid"]]).fetchone()[0] == 1
        kept = con.execute("select count(*) from households where root_uuid = ?", [first["meta/rootUuid"]]).fetchone()[0]
        assert kept == (0 if settled_by == "deleting" else 1)


def test_a_submission_marked_deleted_that_the_server_sends_again_is_clean_again(household, tmp_path: Path) -> None:
    """Raw never loses a deleted submission; if the server sends it again unchanged (a
    deletion marked from a listing that missed it), the sync marks it current again and
    types it again: its clean rows went with the deletion, and nothing else brings them back."""
    seeded = seeded_server([household], 30, seed=41)
    asset = seeded.assets["household_survey"]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        sync(server, seeded.token, path)
        before = clean_roots(path)
        with duckdb.connect(str(path), read_only=True) as con:
            members_before = con.execute("select count(*) from household_members").fetchone()[0]
        root = next(s["meta/rootUuid"] for s in asset.submissions if s["meta/rootUuid"] in before)
        with Warehouse(path) as warehouse, warehouse.transaction():
            dictionary = warehouse.latest_dictionaries()[0]
            FormLoader(warehouse, dictionary, asset.uid).mark_deleted([root], dt.datetime.now(dt.timezone.utc))
        assert root not in clean_roots(path)
        [summary] = sync(server, seeded.token, path, SyncSettings(download_attachments=False, reconcile="always"))
    assert summary.deleted == 0 and clean_roots(path) == before
    assert (summary.restored, summary.unchanged) == (1, 29)  # named, not counted as unchanged
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select restored from meta.sync_runs order by run_id desc limit 1").fetchone() == (1,)
        assert con.execute("select count(*), count(*) filter (where is_current and deleted_at is null) "
                           "from raw.submissions where root_uuid = ?", [root]).fetchone() == (1, 1)
        assert con.execute("select count(*) from household_members").fetchone()[0] == members_before


def test_last_seen_moves_for_what_a_sync_receives_again_and_first_seen_stays(household, tmp_path: Path) -> None:
    """A second sync re-reads the overlap below the watermark (100 submissions): their raw
    rows take its time as last_seen, nothing else moves, and first_seen never does."""
    seeded = seeded_server([household], 150, seed=43)
    path = tmp_path / "w.duckdb"
    query = "select root_uuid, submission_id, first_seen, last_seen from raw.submissions order by submission_id"
    with seeded.server as server:
        sync(server, seeded.token, path)
        with duckdb.connect(str(path), read_only=True) as con:
            before = con.execute(query).fetchall()
        [summary] = sync(server, seeded.token, path)
        with duckdb.connect(str(path), read_only=True) as con:
            after = con.execute(query).fetchall()
    assert summary.unchanged == 100 and len(before) == len(after) == 150
    assert [row[:3] for row in after] == [row[:3] for row in before]  # same rows, first_seen kept
    moved = [row[1] for row, old in zip(after, before) if row[3] > old[3]]
    assert moved == [row[1] for row in after[-100:]]  # the overlap: the 100 highest _ids
    assert all(row[3] == old[3] for row, old in zip(after[:-100], before[:-100]))


def test_attachments_to_fetch_are_found_a_slice_of_submissions_at_a_time(household, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding the attachments to download parses every current submission's payload:
    all of a project's in one query ran out of memory from about 2,000 households with
    photos (DuckDB holds the parse of a whole vector). Here 1,200 households and a 60 MB
    limit: the single query fails, the slices find the same attachments."""
    from warehouse import attachments
    from warehouse.attachments import pending_attachments
    from warehouse.store import named_queries

    seeded = seeded_server([household], 1200, seed=4)
    uid = seeded.assets["household_survey"].uid
    with seeded.server as server:
        sync(server, seeded.token, tmp_path / "w.duckdb")
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        whole = {"asset_uid": uid, "low": 0, "high": 2**62}
        everything = sorted(warehouse.con.execute(named_queries("land_raw.sql")["pending_attachments"], whole).fetchall())
        assert len(everything) > 1200  # about two photos a household
        warehouse.con.execute("SET memory_limit = '60MB'")
        with pytest.raises(duckdb.OutOfMemoryException):
            warehouse.con.execute(named_queries("land_raw.sql")["pending_attachments"], whole).fetchall()
        assert sorted(pending_attachments(warehouse, uid)) == everything
        # Should even a slice not fit, the message speaks of the attachments, not of a batch.
        monkeypatch.setattr(attachments, "PENDING_SLICE", 10_000)
        with pytest.raises(WarehouseError) as failed:
            pending_attachments(warehouse, uid)
        assert "attachments to download could not be listed" in str(failed.value)
        assert "batch" not in str(failed.value)
