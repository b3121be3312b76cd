"""Sync against the local KoboToolbox-compatible server in its many shapes: old and new
servers, parallel ranges, and projects whose form is not in forms/."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from flows.sync import SyncSettings, dictionary_for_asset, sync_asset
from forms.build import dictionary_from_sheets
from kobo.client import KoboClient
from kobo.content import xlsform_from_content
from kobo.generate import Deployment, SubmissionGenerator
from kobo.seed import seeded_server
from kobo.server import LocalKoboServer, ServedAsset
from warehouse.store import Warehouse

CALM = SyncSettings(download_attachments=False)


def warehouse_snapshot(path: Path) -> dict[str, list[tuple]]:
    """Everything an analyst sees, in a stable order, without load timestamps."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main' "
            "and table_type = 'BASE TABLE' and table_name <> 'attachments' order by 1").fetchall()]
        snapshot = {t: con.execute(f'select * from "{t}" order by all').fetchall() for t in tables}
        snapshot["raw"] = con.execute(
            "select asset_uid, root_uuid, uuid, content_hash, deleted_at is null from raw.submissions order by all").fetchall()
        # Two warnings compare a submission with what was loaded before it (the village's
        # other points, the enumerator's count that day), so they depend on arrival order.
        snapshot["issues"] = con.execute(
            "select root_uuid, table_name, column_name, row_key, check_code, value from quality.issues "
            "where resolved_at is null and check_code not in ('far_from_village', 'too_many_per_day') "
            "order by all").fetchall()
    return snapshot


def sync_all(url: str, token: str, path: Path, settings: SyncSettings = CALM, page_size: int = 1000) -> list:
    with KoboClient(url, token, page_size=page_size, backoff=0.01) as client, Warehouse(path) as warehouse:
        return [sync_asset(client, warehouse, a["uid"], settings=settings) for a in client.list_assets()]


def test_old_and_new_servers_give_the_same_warehouse(household, tmp_path: Path) -> None:
    new = seeded_server([household], 1300, seed=9)
    old = seeded_server([household], 1300, seed=9, new_style=False)
    with new.server, old.server:
        sync_all(new.server.url, new.token, tmp_path / "new.duckdb")
        sync_all(old.server.url, old.token, tmp_path / "old.duckdb", page_size=30000)
    assert warehouse_snapshot(tmp_path / "new.duckdb") == warehouse_snapshot(tmp_path / "old.duckdb")


def test_parallel_ranges_give_the_same_warehouse(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 900, seed=10)
    with seeded.server:
        sync_all(seeded.server.url, seeded.token, tmp_path / "one.duckdb", page_size=100)
        summaries = sync_all(seeded.server.url, seeded.token, tmp_path / "four.duckdb",
                             SyncSettings(parallel=4, download_attachments=False), page_size=100)
    assert summaries[0].pulled == 900
    assert warehouse_snapshot(tmp_path / "one.duckdb") == warehouse_snapshot(tmp_path / "four.duckdb")
    with duckdb.connect(str(tmp_path / "four.duckdb"), read_only=True) as con:
        assert con.execute("select watermark from meta.sync_state").fetchone()[0] == max(
            s["_id"] for s in seeded.assets["household_survey"].submissions)


def test_parallel_ranges_fetch_only_a_few_pages_ahead_of_the_writer(household) -> None:
    """Eight ranges, a writer that takes its time: pages fetched ahead are bounded by the
    depth, not by the number of ranges (each page held is some MB of memory)."""
    import time

    from flows.sync import merged_pages

    seeded = seeded_server([household], 800, seed=11)
    uid = seeded.assets["household_survey"].uid
    with seeded.server as server, KoboClient(server.url, seeded.token, page_size=20) as client:
        before = server.requests_served
        ranges = [(999 + 100 * k, 999 + 100 * (k + 1)) for k in range(8)]  # the _ids are 1000 to 1799
        pages = merged_pages(client, uid, ranges, depth=3)
        first = next(pages)
        time.sleep(1.5)  # the writer is busy: the fetchers wait
        fetched = server.requests_served - before
        rest = sum(page.size for page in pages)
    assert first.size == 20 and first.size + rest == 800
    assert fetched <= 1 + 3 + 3  # the one handed over, 3 in the queue, 3 fetched and waiting


FOREIGN_FORM = """
| survey |
| | type | name | label::Français (fr) | label::English (en) | required | constraint |
| | text | school_name | Nom de l'école | School name | yes | |
| | begin_repeat | classes | Classes | Classes | | |
| | select_one level | level | Niveau | Level | yes | |
| | begin_repeat | pupils | Élèves | Pupils | | |
| | integer | pupil_age | Âge | Age | yes | . >= 5 and . <= 20 |
| | end_repeat | | | | | |
| | end_repeat | | | | | |
| choices |
| | list_name | name | label::Français (fr) | label::English (en) |
| | level | cp | CP | Year 1 |
| | level | ce1 | CE1 | Year 2 |
| settings |
| | form_id | version | default_language |
| | school_census | 7 | Français (fr) |
"""


def test_a_project_not_in_forms_gets_typed_tables_from_its_content(tmp_path: Path) -> None:
    """The form exists only on the server: its content (kpi's JSON) is all Terrain gets."""
    from forms.source import read_markdown_sheets, FormSource
    from kobo.content import content_from_source

    sheets = read_markdown_sheets(FOREIGN_FORM)
    content = content_from_source(FormSource(path=tmp_path / "school_census.md", sheets=sheets))
    dictionary = dictionary_from_sheets(xlsform_from_content(content), "test", form_name="school_census")
    deployment = Deployment("aSchoolCensus0000000000", "vSchool000000000000000", "1" * 32)
    generator = SubmissionGenerator(dictionary, deployment, seed=4, mistake_rate=0.0)
    submissions = [generator.submission(i, 500 + i) for i in range(40)]
    asset = ServedAsset(uid=deployment.asset_uid, name="Recensement scolaire", content=content,
                        version_uid=deployment.version_uid, formhub_uuid=deployment.formhub_uuid,
                        submissions=submissions)
    token = "5" * 40
    with LocalKoboServer({token: "someone"}, [asset]) as server:
        with KoboClient(server.url, token) as client:
            assert dictionary_for_asset(client.get_asset(asset.uid)).form_id == "school_census"
        sync_all(server.url, token, tmp_path / "w.duckdb")
    pupils = sum(len(c.get("classes/pupils", [])) for s in submissions for c in s.get("classes", []))
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from school_census").fetchone()[0] == 40
        assert con.execute("select count(*) from classes").fetchone()[0] == sum(len(s.get("classes", [])) for s in submissions)
        assert con.execute("select count(*) from pupils").fetchone()[0] == pupils > 0
        types = dict(con.execute("select column_name, data_type from information_schema.columns "
                                 "where table_name = 'pupils'").fetchall())
        assert types["pupil_age"] == "BIGINT"
        keys = con.execute("select row_key, parent_row_key from pupils order by root_uuid, row_key limit 1").fetchone()
        assert keys[0].count(".") == 1 and keys[0].startswith(keys[1] + ".")
