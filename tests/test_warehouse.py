"""warehouse/: form versions side by side, rebuild from raw, labelled views, marts,
personal data and exports."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import duckdb
import openpyxl
import pytest

from flows.sync import SyncSettings, sync_asset
from kobo.client import KoboClient
from kobo.content import content_from_source
from kobo.generate import Deployment, SubmissionGenerator
from kobo.seed import seeded_server
from warehouse.rebuild import rebuild_all
from warehouse.store import Warehouse

from test_sync_kobo import warehouse_snapshot  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reliability  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NO_FILES = SyncSettings(download_attachments=False)


def sync(server, token: str, path: Path) -> None:
    with KoboClient(server.url, token) as client, Warehouse(path) as warehouse:
        for uid in server.assets:
            sync_asset(client, warehouse, uid, settings=NO_FILES)


def test_a_second_form_version_loads_beside_the_first_without_loss(household, tmp_path: Path) -> None:
    v2 = reliability.second_version(tmp_path)  # 'water_treated' removed, 'latrine' added
    assert {f.name for f in v2.dictionary.fields()} ^ {f.name for f in household.dictionary.fields()} == {
        "water_treated", "latrine"}
    seeded = seeded_server([household], 60, seed=41, mistake_rate=0.0)
    asset = seeded.assets["household_survey"]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        sync(server, seeded.token, path)
        asset.new_version(content_from_source(v2.source))
        asset.deployed_versions.insert(0, asset.version_uid)
        generator = SubmissionGenerator(v2.dictionary, Deployment(asset.uid, asset.version_uid, asset.formhub_uuid),
                                        seed=42, mistake_rate=0.0)
        fresh = [generator.submission(i, 0) for i in range(30)]
        stored = server.add_submissions(asset.uid, [{k: v for k, v in s.items() if not k.startswith("_")
                                                     and not k.startswith(("meta/", "formhub/"))} for s in fresh])
        sync(server, seeded.token, path)
    old_version = asset.deployed_versions[1]
    with duckdb.connect(str(path), read_only=True) as con:
        versions = dict(con.execute("select form_version, count(*) from households group by 1").fetchall())
        assert versions == {old_version: sum(1 for s in asset.submissions if s["__version__"] == old_version),
                            asset.version_uid: 30}
        treated = con.execute("select count(water_treated) from households where form_version = ?", [old_version]).fetchone()[0]
        assert treated == sum(1 for s in asset.submissions if "water/water_treated" in s)  # old answers kept
        latrines = con.execute("select count(latrine) from households where form_version = ?", [asset.version_uid]).fetchone()[0]
        assert latrines == sum(1 for s in stored if "water/latrine" in s) > 0
        assert con.execute("select count(*) from meta.form_versions").fetchone()[0] == 2
    diff = subprocess.run([sys.executable, "-m", "flows.cli", "forms", "diff", "household_survey", "2026112401",
                           "2026112402", "--warehouse", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert diff.returncode == 0, diff.stderr
    assert "+ question water/latrine (select_one) ajoutée à la table households" in diff.stdout
    assert "- question water/water_treated (select_one) retirée" in diff.stdout
    assert " / removed; its column households.water_treated keeps the answers" in diff.stdout


def test_rebuild_from_raw_gives_identical_clean_tables(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 200, seed=43)
    asset = seeded.assets["household_survey"]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        sync(server, seeded.token, path)
        consenting = [s for s in asset.submissions if s.get("consent") == "yes"]
        server.edit_submission(asset.uid, consenting[0]["_id"], {"identification/head_age": "66"})
        server.delete_submission(asset.uid, consenting[1]["_id"])
        sync(server, seeded.token, path)
    before = warehouse_snapshot(path)
    with Warehouse(path) as warehouse:
        warehouse.con.execute("delete from household_members where position > 1")  # damage, then rebuild
        [result] = rebuild_all(warehouse)
    assert result.submissions == len(asset.submissions)
    assert warehouse_snapshot(path) == before


def test_labelled_views_in_french_and_english(seeded, warehouse_path) -> None:
    sync(seeded.server, seeded.token, warehouse_path)
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        root = con.execute("select root_uuid from households where water_source = 'borehole' and "
                           "list_contains(income_activities, 'farming') limit 1").fetchone()[0]
        fr = con.execute("select water_source, income_activities, region from fr.households where root_uuid = ?", [root]).fetchone()
        en = con.execute("select water_source, income_activities from en.households where root_uuid = ?", [root]).fetchone()
        assert fr[0] == "Forage équipé de pompe" and "Agriculture" in fr[1]
        assert en[0] == "Borehole with pump" and "Farming" in en[1]
        assert fr[2] in {"Sikasso", "Ségou", "Gao", "Mopti"}
        labels = dict(con.execute("select language, label from meta.field_labels where column_name = 'water_source'").fetchall())
        assert labels == {"fr": "Principale source d'eau de boisson du ménage", "en": "Main source of drinking water of the household"}
        assert con.execute("select count(*) from en.household_members").fetchone()[0] == \
            con.execute("select count(*) from household_members").fetchone()[0]


def _answers(**values: str) -> dict:
    return values


def test_marts_on_a_small_hand_made_data_set(household, tmp_path: Path) -> None:
    from forms.build import project_forms

    forms = project_forms()
    seeded = seeded_server([forms["household_survey"], forms["training_attendance"], forms["water_point_inspection"]],
                           0, seed=1)
    assets = seeded.assets
    place = {"place/region": "sikasso", "place/cercle": "sikasso", "place/commune": "dembela", "place/village": "kafana"}
    base_wp = {**place, "water_point_type": "borehole_handpump", "location": "11.42 -5.64 300 5",
               "status/users_per_day": "200", "committee/committee_exists": "no", "committee/fee_fcfa_per_month": "500",
               "maintenance/repaired_before": "no", "quality/quality_tested": "no", "today": "2026-10-05",
               "_submission_time": "2026-10-05T12:00:00"}
    inspections = [
        {**base_wp, "water_point_id": "WP-0001", "status/functional_status": "functional"},
        {**base_wp, "water_point_id": "WP-0002", "status/functional_status": "functional"},
        {**base_wp, "water_point_id": "WP-0003", "status/functional_status": "not_functional", "status/broken_since": "2026-08-01"},
        {**base_wp, "water_point_id": "WP-0004", "status/functional_status": "partially_functional"},
        # An earlier inspection of WP-0001, uploaded later by a phone that was offline: the
        # month counts the latest inspection, not the latest upload.
        {**base_wp, "water_point_id": "WP-0001", "status/functional_status": "not_functional",
         "status/broken_since": "2026-10-01", "today": "2026-10-03", "_submission_time": "2026-10-25T09:00:00"},
    ]
    ident = {"identification/region": "sikasso", "identification/cercle": "sikasso", "identification/commune": "tella",
             "identification/village": "tella", "identification/head_name": "Awa Traoré", "identification/head_sex": "female",
             "identification/head_age": "40", "identification/household_size": "1", "consent": "yes",
             "location": "11.59 -5.39 300 5", "livelihood/income_activities": "farming"}
    member = [{"members/member_name": "Awa Traoré", "members/member_sex": "female", "members/member_age": "40",
               "members/member_relation": "head"}]
    households = [
        {**ident, "identification/household_id": "TEL-0001", "members": member, "water/water_source": "borehole",
         "water/water_trip_minutes": "20", "water/water_treated": "yes", "livelihood/avec_member": "yes",
         "livelihood/avec_savings_fcfa": "30000"},
        {**ident, "identification/household_id": "TEL-0002", "members": member, "water/water_source": "borehole",
         "water/water_trip_minutes": "45", "water/water_treated": "no", "livelihood/avec_member": "yes",
         "livelihood/avec_savings_fcfa": "50000"},
        {**ident, "identification/household_id": "TEL-0003", "members": member, "water/water_source": "surface_water",
         "water/water_trip_minutes": "10", "water/water_treated": "no", "livelihood/avec_member": "no"},
    ]
    session = {"session/session_date": "2026-10-01", "session/topic": "wash_hygiene", "session/trainer_name": "Issa Koné",
               "session/region": "sikasso", "session/cercle": "sikasso", "session/commune": "tella",
               "session/village": "tella", "session/venue": "Mairie de Tella", "session/duration_hours": "3"}
    people = [("female", "22", "8", "14"), ("female", "30", "10", "12"), ("male", "31", "12", "12")]
    trainings = [{**session, "participants": [
        {"participants/participant_name": f"P{i}", "participants/participant_sex": sex, "participants/participant_age": age,
         "participants/participant_role": "avec_member", "participants/pre_test_score": pre,
         "participants/post_test_score": post} for i, (sex, age, pre, post) in enumerate(people)]}]
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        server.add_submissions(assets["water_point_inspection"].uid, inspections)
        server.add_submissions(assets["household_survey"].uid, households)
        server.add_submissions(assets["training_attendance"].uid, trainings)
        sync(server, seeded.token, path)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("select count(*) from quality.quarantine").fetchone()[0] == 0
        wp = con.execute("select commune, commune_label, month, water_points_inspected, functional, not_functional, "
                         "functionality_rate from marts.water_point_functionality").fetchall()
        assert [w[:2] + w[3:] for w in wp] == [("dembela", "Dembela", 4, 2, 1, 0.5)]
        assert wp[0][2] == dt.date(2026, 10, 1)  # a month is a DATE, its first day
        service = con.execute("select commune_label, service_level, households from marts.household_water_service"
                              ).fetchall()
        assert {s[0] for s in service} == {"Tella"}
        assert {s[1]: s[2] for s in service} == {"basic": 1, "limited": 1, "surface_water": 1}
        training = con.execute("select sex, age_group, participants, mean_score_gain from marts.training_participation "
                               "order by sex, age_group").fetchall()
        assert training == [("female", "15-24", 1, 6.0), ("female", "25-34", 1, 2.0), ("male", "25-34", 1, 0.0)]
        avec = con.execute("select commune_label, households, avec_households, avec_membership_rate, "
                           "total_savings_fcfa, mean_savings_fcfa from marts.avec_savings").fetchall()
        assert avec == [("Tella", 3, 2, 0.667, 80000, 40000)]


def test_exports_leave_out_personal_data_and_never_write_formulas(seeded, warehouse_path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from warehouse.exports import export_tables, exportable

    monkeypatch.setenv("TERRAIN_PII_SALT", "test-salt")
    asset = seeded.assets["household_survey"]
    victim = next(s for s in asset.submissions if s.get("consent") == "yes" and s["identification/household_id"])
    seeded.server.edit_submission(asset.uid, victim["_id"], {"livelihood/income_other": "=HYPERLINK(\"http://x\")",
                                                             "livelihood/income_activities": "farming other"})
    sync(seeded.server, seeded.token, warehouse_path)
    with Warehouse(warehouse_path) as warehouse:
        # A view as an older Terrain made it (with personal data): made again with the analyst tables.
        warehouse.con.execute("create or replace view fr.households as select * from main.households")
        tables = warehouse.refresh_analyst_tables()
        view_columns = {r[0] for r in warehouse.con.execute("select column_name from information_schema.columns "
                                                            "where table_schema = 'fr' and table_name = 'households'"
                                                            ).fetchall()}
        assert "head_age" in view_columns and "head_name" not in view_columns
        names = {r[0] for r in warehouse.con.execute("select head_name from analyst.households").fetchall()}
        real = {r[0] for r in warehouse.con.execute("select head_name from main.households").fetchall()}
        assert not (names & real) - {None} and all(n is None or len(n) == 64 for n in names)
        lat = warehouse.con.execute("select location_latitude from analyst.households where location_latitude is not null "
                                    "limit 1").fetchone()[0]
        assert round(lat, 2) == lat
        columns = {r[0] for r in warehouse.con.execute("select column_name from information_schema.columns "
                                                       "where table_schema = 'analyst' and table_name = 'households'").fetchall()}
        assert "location_accuracy" not in columns and "head_age" in columns
        everything = exportable(warehouse.con)  # the indicators too, as marts.<name>
        assert everything[:len(tables)] == sorted(tables) and "marts.avec_savings" in everything
        results = {fmt: export_tables(warehouse.con, everything, tmp_path / fmt, fmt) for fmt in ("parquet", "csv", "xlsx")}
        savings = warehouse.con.execute("select * from marts.avec_savings").fetchall()
    assert {p.name for p in results["parquet"].files} == {f"{t}.parquet" for t in everything}
    assert duckdb.sql(f"select * from '{tmp_path / 'parquet' / 'marts.avec_savings.parquet'}'").fetchall() == savings
    parquet_rows = duckdb.sql(f"select count(*) from '{tmp_path / 'parquet' / 'households.parquet'}'").fetchone()[0]
    assert parquet_rows == results["parquet"].rows["households"]
    workbook = openpyxl.load_workbook(results["xlsx"].files[0])
    assert set(workbook.sheetnames) == set(everything)
    sheet = workbook["households"]
    header = [c.value for c in sheet[1]]
    assert "Principale source d'eau de boisson du ménage\n(water_source)" in header
    cells = [c for row in sheet.iter_rows() for c in row]
    assert not any(c.data_type == "f" for c in cells)
    assert any(c.value == '=HYPERLINK("http://x")' for c in cells)


def test_tables_alike_in_their_first_31_characters_get_sheets_of_their_own(tmp_path: Path) -> None:
    """Excel's sheet names hold 31 characters: two long repeat tables alike up to there
    stopped the whole XLSX export (DuplicateWorksheetName)."""
    from warehouse.exports import export_tables, exportable

    tables = ["household_members_vaccinations_2025", "household_members_vaccinations_2026"]
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        warehouse.con.execute("create schema if not exists analyst")
        for number, table in enumerate(tables):
            warehouse.con.execute(f'create table analyst."{table}" as select {number} as root_uuid')
        warehouse.con.execute("insert into meta.field_labels values ('f', '1', ?, 'root_uuid', 'root_uuid', "
                              "'root_uuid', 'text', null, false, 'fr', 'Clé')", [tables[0]])
        [path] = export_tables(warehouse.con, exportable(warehouse.con), tmp_path / "out", "xlsx").files
    workbook = openpyxl.load_workbook(path)
    assert workbook.sheetnames == [tables[0][:31], tables[1][:29] + "~2"]
    assert [workbook[name].cell(2, 1).value for name in workbook.sheetnames] == [0, 1]


def test_a_commit_short_of_memory_says_which_setting_to_raise(tmp_path) -> None:
    """A batch of a very wide table (150 text columns) does not fit the default memory at
    its commit: DuckDB calls it a failed commit; the data manager is told to raise
    TERRAIN_DUCKDB_MEMORY, and nothing of the batch is kept."""
    from warehouse.store import MEMORY_LIMIT_ENV, WarehouseError

    columns = ", ".join(f"repeat(CAST(range * {i} AS VARCHAR), 3) AS c{i}" for i in range(150))
    with Warehouse(tmp_path / "wide.duckdb") as warehouse:
        warehouse.con.execute(f"CREATE TABLE wide AS SELECT {columns} FROM range(0)")
        with pytest.raises(WarehouseError, match=f"ran out of memory.*{MEMORY_LIMIT_ENV}=256MB"):
            for _ in range(200):
                with warehouse.writing(), warehouse.transaction():
                    warehouse.con.execute(f"INSERT INTO wide SELECT {columns} FROM range(2000)")
        kept = warehouse.con.execute("SELECT count(*) FROM wide").fetchone()[0]
        assert kept % 2000 == 0


def wide_form_server(questions: int, count: int, tmp_path: Path):
    """A project of ``questions`` questions (text, integer, select_one) and a repeat, as
    KoboToolbox projects of 150-400 questions are; ``count`` generated submissions."""
    from forms.build import build_form

    kinds = ["text", "integer", "select_one yn"]
    rows = ["| survey |", "| | type | name | label::Français (fr) | label::English (en) |"]
    rows += [f"| | {kinds[i % 3]} | q{i} | Question {i} | Question {i} |" for i in range(questions)]
    rows += ["| | begin_repeat | members | Membres | Members |", "| | text | member_name | Nom | Name |",
             "| | end_repeat | | | |", "", "| choices |", "| | list_name | name | label::Français (fr) | label::English (en) |",
             "| | yn | yes | Oui | Yes |", "| | yn | no | Non | No |", "",
             "| settings |", "| | form_id | version | default_language |", "| | wide_form | 1 | Français (fr) |"]
    path = tmp_path / "wide_form.md"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    seeded = seeded_server([build_form(path)], count, seed=4, mistake_rate=0.0)
    return seeded.server, seeded.token, seeded.assets["wide_form"].uid


def test_a_form_of_200_questions_syncs_with_the_memory_its_width_needs(tmp_path, monkeypatch) -> None:
    """Each column holds DuckDB blocks of its own until a checkpoint: at the default limit a
    form of 200 questions runs out of memory (the data manager is told which setting to
    raise); unless that setting is given, the warehouse sizes its limit from the form."""
    from warehouse.store import DEFAULT_MEMORY_LIMIT_MB, MEMORY_LIMIT_ENV, WarehouseError

    server, token, uid = wide_form_server(200, 3000, tmp_path)
    with server:
        monkeypatch.setenv(MEMORY_LIMIT_ENV, f"{DEFAULT_MEMORY_LIMIT_MB}MB")
        with KoboClient(server.url, token) as client, Warehouse(tmp_path / "set.duckdb") as warehouse:
            with pytest.raises(WarehouseError, match=f"ran out of memory.*{MEMORY_LIMIT_ENV}=256MB"):
                sync_asset(client, warehouse, uid, settings=NO_FILES)
        monkeypatch.delenv(MEMORY_LIMIT_ENV)
        with KoboClient(server.url, token) as client, Warehouse(tmp_path / "fitted.duckdb") as warehouse:
            summary = sync_asset(client, warehouse, uid, settings=NO_FILES)
            assert summary.pulled == summary.new == 3000 and summary.quarantined == 0
            assert warehouse.memory_limit not in (f"{DEFAULT_MEMORY_LIMIT_MB}MB", "")
            assert warehouse.con.execute("SELECT count(*), count(q199) > 2000 FROM wide_form").fetchone() == (3000, True)


def test_the_log_of_an_interrupted_wide_sync_is_replayed_with_the_memory_it_needs(tmp_path, monkeypatch) -> None:
    """After a crash, opening the warehouse replays its log into memory: a wide table's log
    does not fit the default limit. The replay is tried again with more; with the limit set
    by the data manager, the error says what to raise and the log is kept as it is."""
    from warehouse.store import DEFAULT_MEMORY_LIMIT_MB, MEMORY_LIMIT_ENV, WarehouseError

    path = tmp_path / "crashed.duckdb"
    columns = ", ".join(f"repeat(CAST(range * {i} AS VARCHAR), 2) AS c{i}" for i in range(300))
    con = duckdb.connect(str(path), config={"memory_limit": "2GB", "threads": 1})
    con.execute("SET checkpoint_threshold = '10GB'")
    con.execute("PRAGMA disable_checkpoint_on_shutdown")  # as a killed process leaves it
    con.execute(f"CREATE TABLE wide AS SELECT {columns} FROM range(0)")
    for _ in range(10):
        con.execute(f"INSERT INTO wide SELECT {columns} FROM range(2000)")
    con.close()
    log = Path(f"{path}.wal")
    logged = log.stat().st_size
    monkeypatch.setenv(MEMORY_LIMIT_ENV, f"{DEFAULT_MEMORY_LIMIT_MB}MB")
    with pytest.raises(WarehouseError, match=f"could not be replayed.*{MEMORY_LIMIT_ENV}=256MB"):
        Warehouse(path)
    assert log.stat().st_size == logged
    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    with Warehouse(path) as warehouse:
        assert warehouse.con.execute("SELECT count(*) FROM wide").fetchone()[0] == 20000
        assert warehouse.con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "99.1 MiB"
    assert not log.exists() or log.stat().st_size < logged / 100  # written out; what is left is the schema's


def test_a_checkpoint_short_of_memory_keeps_the_committed_batches_in_the_log(tmp_path, monkeypatch) -> None:
    """DuckDB writes its log out (a checkpoint) inside a commit; when that runs out of memory
    it stops the database. The data manager is told so; the batches committed before are in
    the log (the next open replays them), the failed one is not."""
    import warehouse.store
    from warehouse.store import DEFAULT_MEMORY_LIMIT_MB, MEMORY_LIMIT_ENV, WarehouseError

    monkeypatch.setenv(MEMORY_LIMIT_ENV, f"{DEFAULT_MEMORY_LIMIT_MB}MB")
    # DuckDB's own row groups: with Terrain's smaller ones a checkpoint needs less memory
    # than the inserts before it, and this table runs out of memory at an insert instead.
    monkeypatch.setattr(warehouse.store, "ROW_GROUP_ROWS", 122_880)
    columns = ", ".join(f"repeat(CAST(range * {i} AS VARCHAR), 3) AS c{i}" for i in range(100))
    committed = 0
    with pytest.raises(WarehouseError, match=f"DuckDB stopped while writing out.*kept in its log.*{MEMORY_LIMIT_ENV}="):
        with Warehouse(tmp_path / "w.duckdb") as warehouse:
            warehouse.con.execute(f"CREATE TABLE wide AS SELECT {columns} FROM range(0)")
            for committed in range(1, 200):
                with warehouse.writing(), warehouse.transaction():
                    warehouse.con.execute(f"INSERT INTO wide SELECT {columns} FROM range(2000)")
    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        assert warehouse.con.execute("SELECT count(*) FROM wide").fetchone()[0] == 2000 * (committed - 1)


def test_a_warehouse_made_by_an_older_terrain_gets_the_new_columns(seeded, tmp_path) -> None:
    """schema.sql creates its tables only if they do not exist: a warehouse made before
    meta.sync_runs had 'deleted' and 'reconciled' failed every sync ('Referenced update
    column deleted not found'). Opened now, it gets them, and opens again cleanly."""
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA meta")
        con.execute("CREATE SEQUENCE meta.sync_run_ids")
        con.execute("CREATE TABLE meta.sync_runs (run_id BIGINT PRIMARY KEY DEFAULT nextval('meta.sync_run_ids'), "
                    "asset_uid VARCHAR NOT NULL, form_id VARCHAR NOT NULL, started_at TIMESTAMPTZ NOT NULL, "
                    "finished_at TIMESTAMPTZ, pulled BIGINT, new BIGINT, edited BIGINT, unchanged BIGINT, "
                    "quarantined BIGINT, status VARCHAR NOT NULL)")
        con.execute("INSERT INTO meta.sync_runs (asset_uid, form_id, started_at, status) "
                    "VALUES ('aOld', 'household_survey', now(), 'ok')")
    sync(seeded.server, seeded.token, path)
    with Warehouse(path) as warehouse:  # (opened again: the log replays)
        runs = warehouse.con.execute("SELECT asset_uid, pulled, deleted, reconciled FROM meta.sync_runs "
                                     "ORDER BY run_id").fetchall()
    assert runs[0] == ("aOld", None, None, None)
    assert runs[1][1] == 250 and runs[1][2] == 0 and runs[1][3] is True


def test_a_batch_with_edits_and_a_new_versions_first_submissions_commits(household, tmp_path: Path) -> None:
    """One batch: an edit of a submission of the first version (its clean rows deleted and
    inserted again) and the first submissions of a second version (its new column added).
    DuckDB 1.5 cannot commit a transaction that alters a table after changing its rows:
    every version's columns are added before any row changes. (Version uids sort the
    first version first, the order in which the batch is typed.)"""
    import copy

    from kobo.generate import generate_submissions
    from warehouse.load import FormLoader

    v2 = reliability.second_version(tmp_path)
    first = Deployment("aVersionsTest00000000000", "vAAAAAAAAAAAAAAAAAAAAAA", "0" * 32)
    second = Deployment(first.asset_uid, "vZZZZZZZZZZZZZZZZZZZZZZ", "0" * 32)
    old = generate_submissions(household.dictionary, first, 5, seed=44, mistake_rate=0.0)
    new = generate_submissions(v2.dictionary, second, 5, seed=45, first_id=100, mistake_rate=0.0)
    edited = copy.deepcopy(old[0])
    edited["_uuid"] = "66666666-6666-4666-8666-666666666666"
    edited["meta/instanceID"] = f"uuid:{edited['_uuid']}"
    edited["identification/head_name"] = "Nouveau Nom"
    lookup = {first.version_uid: household.dictionary, second.version_uid: v2.dictionary}
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        loader = FormLoader(warehouse, household.dictionary, first.asset_uid, version_lookup=lookup.get,
                            deployed_version=first.version_uid)
        loader.load_page(old, None)
        loader.load_page([edited, *new], None)
        rows = warehouse.con.execute("select form_version, count(*) from households group by 1 order by 1").fetchall()
        assert rows == [(first.version_uid, 5), (second.version_uid, 5)]
        assert warehouse.con.execute("select head_name from households where root_uuid = ?",
                                     [old[0]["meta/rootUuid"]]).fetchone() == ("Nouveau Nom",)


def _two_groups_form(version: str, groups: list[str]):
    from forms.build import dictionary_from_sheets

    survey = [{"type": "text", "name": "village", "label": "Village"}]
    for group in groups:
        survey += [{"type": "begin_group", "name": group, "label": group},
                   {"type": "integer", "name": "q", "label": f"{group} q"}, {"type": "end_group", "name": ""}]
    sheets = {"survey": survey, "settings": [{"form_id": "two_groups", "version": version}]}
    return dictionary_from_sheets(sheets, "test", form_name="two_groups")


def test_a_question_keeps_its_column_when_another_of_the_same_name_goes(tmp_path: Path) -> None:
    """Version 1 has a/q and b/q (columns q and b_q); version 2 drops a/q. Compiled alone,
    version 2 would put b/q in the column q, where version 1 put a/q: the column would mix
    two questions. b/q keeps b_q, and q holds a/q's answers only."""
    from warehouse.load import FormLoader

    first, second = _two_groups_form("1", ["a", "b"]), _two_groups_form("2", ["b"])
    assert [f.column for f in second.fields()] == ["village", "q"]  # the trap, as compiled
    lookup = {"vOne": first, "vTwo": second}

    def submission(number: int, version: str, answers: dict) -> dict:
        uuid = f"00000000-0000-4000-8000-00000000000{number}"
        return {"_id": number, "_uuid": uuid, "meta/rootUuid": f"uuid:{uuid}", "__version__": version,
                "_submission_time": "2026-11-01T10:00:00", "village": "Kignan", **answers}

    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        loader = FormLoader(warehouse, first, "aTwoGroups", version_lookup=lookup.get, deployed_version="vOne")
        loader.load_page([submission(1, "vOne", {"a/q": "1", "b/q": "2"})], None)
        loader.load_page([submission(2, "vTwo", {"b/q": "3"})], None)
        rows = warehouse.con.execute("SELECT submission_id, q, b_q FROM two_groups ORDER BY 1").fetchall()
        stored = warehouse.dictionary_for("aTwoGroups", "vTwo")
    assert rows == [(1, 1, 2), (2, None, 3)]
    assert [f.column for f in stored.fields()] == ["village", "b_q"]  # rebuilds type it the same way
