"""A project's form changing on the server the ways KoboToolbox lets it: redeployed with
the same version name (or none), a question changing type, a repeat dropped, and content
in the shapes kpi stores. Real HTTP to the local server, real DuckDB files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import openpyxl
import pytest

from flows.sync import SyncSettings, SyncSummary, sync_asset
from kobo.client import KoboClient
from kobo.server import LocalKoboServer, ServedAsset
from warehouse.rebuild import rebuild_all
from warehouse.store import Warehouse

TOKEN = "7" * 40
CALM = SyncSettings(download_attachments=False)


def content(rows: list[dict[str, Any]], version: str | None = "1", **settings: Any) -> dict[str, Any]:
    """kpi's JSON content of a small form ("tiny"): one label per question."""
    survey = []
    for row in rows:
        row = dict(row)
        if row["type"] not in ("end_repeat", "end_group"):
            row.setdefault("label", [row["name"]])
        if row["type"].startswith("select_"):
            row["type"], row["select_from_list_name"] = row["type"].split(" ", 1)
        survey.append(row)
    chosen = {"form_id": "tiny", "form_title": "Tiny", **settings}
    if version is not None:
        chosen["version"] = version
    return {"schema": "1", "survey": survey, "choices": [], "settings": chosen,
            "translations": [None], "translated": ["label"]}


def tiny_asset(first: dict[str, Any]) -> ServedAsset:
    return ServedAsset(uid="aTinyProject0000000001", name="Tiny", content=first,
                       version_uid="vTinyFirst00000000000", formhub_uuid="f" * 32)


def redeploy(asset: ServedAsset, changed: dict[str, Any]) -> None:
    asset.new_version(changed)
    asset.deployed_versions.insert(0, asset.version_uid)


def sync(server: LocalKoboServer, path: Path) -> SyncSummary:
    with KoboClient(server.url, TOKEN, backoff=0.01) as client, Warehouse(path) as warehouse:
        return sync_asset(client, warehouse, "aTinyProject0000000001", settings=CALM)


def rows(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


@pytest.mark.parametrize("version", [None, "3"], ids=["no version setting", "same version setting"])
def test_a_redeploy_under_the_same_version_name_keeps_its_new_questions(tmp_path: Path, version: str | None) -> None:
    """Forms made in the Kobo form builder have no version setting, and a redeploy may
    keep the one it had: the new question must still get its column, every sync."""
    asset = tiny_asset(content([{"type": "text", "name": "village"}], version))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"village": "Kignan"}])
        sync(server, path)
        redeploy(asset, content([{"type": "text", "name": "village"}, {"type": "integer", "name": "wells"}], version))
        server.add_submissions(asset.uid, [{"village": "Zégoua", "wells": "2"}])
        assert sync(server, path).new == 1
        server.add_submissions(asset.uid, [{"village": "Koutiala", "wells": "5"}])
        assert sync(server, path).new == 1
    assert rows(path, "select village, wells from tiny order by submission_id") == [
        ("Kignan", None), ("Zégoua", 2), ("Koutiala", 5)]
    names = [r[0] for r in rows(path, "select version from meta.form_versions order by first_seen")]
    assert len(names) == 2 and names[1].endswith(asset.version_uid)
    with Warehouse(path) as warehouse:
        rebuild_all(warehouse)
    assert rows(path, "select village, wells from tiny order by submission_id") == [
        ("Kignan", None), ("Zégoua", 2), ("Koutiala", 5)]


def test_a_question_whose_type_changed_gets_a_column_of_its_own(tmp_path: Path) -> None:
    """An integer become a decimal or a text keeps neither its old column (its answers
    would be rounded, or refused) nor loses the old answers: a new column beside it."""
    asset = tiny_asset(content([{"type": "integer", "name": "amount"}, {"type": "integer", "name": "code"}], "1"))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"amount": "10", "code": "1"}])
        sync(server, path)
        redeploy(asset, content([{"type": "decimal", "name": "amount"}, {"type": "text", "name": "code"}], "2"))
        server.add_submissions(asset.uid, [{"amount": "2.5", "code": "AB-12"}])
        summary = sync(server, path)
    assert (summary.status, summary.new, summary.quarantined) == ("ok", 1, 0)
    assert rows(path, "select amount, amount__decimal, code, code__text from tiny order by submission_id") == [
        (10, None, 1, None), (None, 2.5, None, "AB-12")]
    types = dict(rows(path, "select column_name, data_type from information_schema.columns "
                            "where table_schema = 'main' and table_name = 'tiny'"))
    assert (types["amount"], types["amount__decimal"], types["code__text"]) == ("BIGINT", "DOUBLE", "VARCHAR")


def test_a_deleted_or_edited_submission_leaves_no_rows_in_a_repeat_a_later_version_dropped(tmp_path: Path) -> None:
    with_children = [{"type": "text", "name": "head"}, {"type": "begin_repeat", "name": "children"},
                     {"type": "text", "name": "child_name"}, {"type": "end_repeat", "name": ""}]
    asset = tiny_asset(content(with_children, "1"))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        first, second = server.add_submissions(asset.uid, [
            {"head": f"Awa {i}", "children": [{"children/child_name": "Ali"}, {"children/child_name": "Fanta"}]}
            for i in range(2)])
        sync(server, path)
        assert rows(path, "select count(*) from children") == [(4,)]
        redeploy(asset, content([{"type": "text", "name": "head"}], "2"))
        server.add_submissions(asset.uid, [{"head": "Moussa"}])
        sync(server, path)
        server.delete_submission(asset.uid, first["_id"])
        server.edit_submission(asset.uid, second["_id"], {"head": "Awa (corrigé)", "children": None})
        summary = sync(server, path)
    assert (summary.deleted, summary.edited) == (1, 1)
    assert rows(path, "select count(*) from children") == [(0,)]
    assert rows(path, "select head from tiny order by submission_id") == [("Awa (corrigé)",), ("Moussa",)]


@pytest.mark.parametrize("shape", ["id_string", "settings as rows"])
def test_kpi_content_shapes_sync(tmp_path: Path, shape: str) -> None:
    """kpi keeps the form id as ``id_string``, and older kpi the settings as a list of rows."""
    served = content([{"type": "integer", "name": "wells"}], "1")
    if shape == "id_string":
        served["settings"]["id_string"] = served["settings"].pop("form_id")
    else:
        served["settings"] = [served["settings"]]
    asset = tiny_asset(served)
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"wells": "3"}])
        assert sync(server, path).status == "ok"
    assert rows(path, "select wells from tiny") == [(3,)]


@pytest.mark.parametrize("key", ["_version_", "_version__001"])
def test_an_old_submission_with_an_older_version_key_is_typed_with_its_version(tmp_path: Path, key: str) -> None:
    """Older KoboToolbox submissions carry the version uid as _version_ or _version__001
    (kobo-api.md §4): typed with the deployed version instead, an answer to a question
    it dropped would be missing from the clean table."""
    asset = tiny_asset(content([{"type": "text", "name": "village"}, {"type": "integer", "name": "wells"}], "1"))
    first_version = asset.version_uid
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        [old] = server.add_submissions(asset.uid, [{"village": "Kignan", "wells": "4"}])
        legacy = {k: v for k, v in old.items() if k != "__version__"} | {key: first_version}
        asset.replace(legacy)
        redeploy(asset, content([{"type": "text", "name": "village"}], "2"))
        server.add_submissions(asset.uid, [{"village": "Zégoua"}])
        assert sync(server, path).new == 2
    assert rows(path, "select village, wells, form_version from tiny order by submission_id") == [
        ("Kignan", 4, first_version), ("Zégoua", None, asset.version_uid)]


def test_a_repeat_named_like_another_forms_table_gets_a_table_of_its_own(tmp_path: Path) -> None:
    """Two projects each with a repeat "members": one table would hold rows of both, told
    apart by nothing an analyst sees. The project synced second gets tiny__members."""
    def with_members(form_id: str, question: str) -> dict[str, Any]:
        return content([{"type": "text", "name": "head"}, {"type": "begin_repeat", "name": "members"},
                        {"type": "text", "name": question}, {"type": "end_repeat", "name": ""}], "1", form_id=form_id)

    first = ServedAsset(uid="aOtherProject000000001", name="Other", content=with_members("other", "member_name"),
                        version_uid="vOtherFirst0000000000", formhub_uuid="e" * 32)
    second = tiny_asset(with_members("tiny", "member_age"))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [first, second]) as server:
        server.add_submissions(first.uid, [{"head": "Awa", "members": [{"members/member_name": "Ali"}]}])
        server.add_submissions(second.uid, [{"head": "Moussa", "members": [{"members/member_age": "7"}] * 2}])
        with KoboClient(server.url, TOKEN) as client, Warehouse(path) as warehouse:
            sync_asset(client, warehouse, first.uid, settings=CALM)
        for _ in range(2):  # the second sync keeps the name the first gave
            sync(server, path)
        assert rows(path, "select count(*) from tiny__members") == [(2,)]
        assert {r[0] for r in rows(path, "select table_name from information_schema.tables where table_schema = "
                                         "'main' and table_type = 'BASE TABLE'")} == {
            "attachments", "other", "members", "tiny", "tiny__members"}
        server.delete_submission(second.uid, second.submissions[0]["_id"])
        with KoboClient(server.url, TOKEN) as client, Warehouse(path) as warehouse:
            assert sync_asset(client, warehouse, second.uid, settings=SyncSettings(
                download_attachments=False, reconcile="always")).deleted == 1
    assert rows(path, "select member_name from members") == [("Ali",)]
    assert rows(path, "select count(*) from tiny__members") == [(0,)]
    columns = {r[0] for r in rows(path, "select column_name from information_schema.columns where table_name = 'members'")}
    assert "member_age" not in columns


def test_a_project_synced_before_ours_does_not_take_our_table_names(household, tmp_path: Path) -> None:
    """The marts read households and household_members. Another project whose tables
    have those names, synced into a new warehouse before ours, takes other names, for
    its later versions too; ours keeps its own."""
    from kobo.seed import seeded_server

    seeded = seeded_server([household], 20, seed=3)
    questions = [{"type": "text", "name": "head"}, {"type": "begin_repeat", "name": "household_members"},
                 {"type": "text", "name": "member_name"}, {"type": "end_repeat", "name": ""}]
    foreign = ServedAsset(uid="aForeignProject0000001", name="Ménages (partenaire)", formhub_uuid="d" * 32,
                          version_uid="vForeignFirst00000000", content=content(questions, "1", form_id="households"))
    path = tmp_path / "w.duckdb"
    with seeded.server as server:
        server.add_asset(foreign)
        server.add_submissions(foreign.uid, [{"head": "Awa", "household_members": [
            {"household_members/member_name": "Ali"}]}])
        with KoboClient(server.url, seeded.token) as client, Warehouse(path) as warehouse:
            sync_asset(client, warehouse, foreign.uid, settings=CALM)
        redeploy(foreign, content(questions[:1] + [{"type": "text", "name": "village"}] + questions[1:], "2",
                                  form_id="households"))
        server.add_submissions(foreign.uid, [{"head": "Binta", "village": "Kona", "household_members": [
            {"household_members/member_name": "Moussa"}]}])
        with KoboClient(server.url, seeded.token) as client, Warehouse(path) as warehouse:
            assert sync_asset(client, warehouse, foreign.uid, settings=CALM).new == 1
            ours = sync_asset(client, warehouse, seeded.assets["household_survey"].uid, settings=CALM)
    assert rows(path, "select head, village from households_2 order by head") == [("Awa", None), ("Binta", "Kona")]
    assert rows(path, "select member_name from households_2__household_members order by 1") == [("Ali",), ("Moussa",)]
    from forms.build import project_forms, reserved_tables
    from forms.source import source_paths

    # reserved_tables tells our forms by their file names: each source is named by its form_id.
    assert {path.stem for path in source_paths()} == set(project_forms())
    assert reserved_tables("household_survey") == set() and "households" in reserved_tables("households")
    in_households = rows(path, "select count(*) from households")[0][0]
    assert in_households + ours.quarantined == 20 and in_households > 0
    assert rows(path, "select count(*) from household_members where root_uuid not in (select root_uuid from "
                      "households) and root_uuid not in (select root_uuid from quality.quarantine)") == [(0,)]


def test_analyst_tables_and_labelled_views_cover_every_version(tmp_path: Path, monkeypatch) -> None:
    """A first sync meets the deployed version before the older one its first submissions
    were collected with. Names and phones stay out of analyst tables whichever version
    marked them (version 2 dropped the name question; only version 2 has the phone), and
    the French view reads version 2's choices as labels."""
    from warehouse.store import Warehouse as Store

    monkeypatch.setenv("TERRAIN_PII_SALT", "sel-de-test")
    first = content([{"type": "text", "name": "head_name", "terrain_pii": "yes"}], "1")
    second = content([{"type": "text", "name": "head_phone", "terrain_pii": "yes"},
                      {"type": "select_one yes_no", "name": "latrine"}], "2")
    second["choices"] = [{"list_name": "yes_no", "name": "yes", "label": ["Oui"]},
                         {"list_name": "yes_no", "name": "no", "label": ["Non"]}]
    for served in (first, second):
        served["translations"] = ["Français (fr)"]
    asset = tiny_asset(first)
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"head_name": "Assétou Maïga"}])
        redeploy(asset, second)
        server.add_submissions(asset.uid, [{"head_phone": "+223 76 12 34 56", "latrine": "yes"}])
        sync(server, path)
    with Store(path) as warehouse:
        assert warehouse.latest_dictionaries()[0].version == "2"
        warehouse.refresh_analyst_tables()
        analyst = warehouse.con.execute("select head_name, head_phone from analyst.tiny order by submission_id").fetchall()
        labelled = warehouse.con.execute("select latrine from fr.tiny where latrine is not null").fetchall()
        view_columns = {r[0] for r in warehouse.con.execute("select column_name from information_schema.columns "
                                                            "where table_schema = 'fr' and table_name = 'tiny'").fetchall()}
    assert analyst[0][0] is not None and analyst[1][1] is not None
    assert "Assétou Maïga" not in analyst[0][0] and "+223" not in analyst[1][1] and len(analyst[0][0]) == 64
    assert labelled == [("Oui",)]
    # The labelled views are for analysts too: personal answers are left out of them.
    assert "latrine" in view_columns and not {"head_name", "head_phone"} & view_columns


@pytest.mark.parametrize("first, second", [("geopoint", "text"), ("text", "geopoint")])
def test_a_personal_question_that_changed_type_stays_hidden_in_both_types(tmp_path: Path, monkeypatch,
                                                                         first: str, second: str) -> None:
    """A personal question "home", a GPS point in one version and a text in the other: the
    merged dictionary kept one field per name, and the other type's columns (the exact
    point, or the text) reached the labelled views and the analyst tables in clear."""
    monkeypatch.setenv("TERRAIN_PII_SALT", "sel-de-test")
    answers = {"geopoint": "12.345678 -8.123456 310 4", "text": "+223 76 12 34 56"}

    def version(kind: str, name: str) -> dict[str, Any]:
        served = content([{"type": kind, "name": "home", "terrain_pii": "yes"}, {"type": "text", "name": "village"}],
                         name)
        served["translations"] = ["Français (fr)"]
        return served

    asset = tiny_asset(version(first, "1"))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"home": answers[first], "village": "Kona"}])
        redeploy(asset, version(second, "2"))
        server.add_submissions(asset.uid, [{"home": answers[second], "village": "Sikasso"}])
        sync(server, path)
    with Warehouse(path) as warehouse:
        warehouse.refresh_analyst_tables()
        seen = {relation: warehouse.con.execute(f"select * from {relation}").fetchdf()
                for relation in ("fr.tiny", "analyst.tiny")}
    for relation, frame in seen.items():
        assert not {"home_altitude", "home_accuracy"} & set(frame.columns), relation
        assert frame["home_latitude"].dropna().tolist() == [12.35], relation
        texts = frame["home"].dropna().tolist() if "home" in frame.columns else []
        assert all(len(text) == 64 and "+223" not in text for text in texts), relation
    assert "home" not in seen["fr.tiny"].columns and len(seen["analyst.tiny"]["home"].dropna()) == 1


def test_versions_stored_by_an_older_terrain_take_the_personal_marks_they_missed(tmp_path: Path, monkeypatch) -> None:
    """An older Terrain read "oui" and a group's mark as not personal, and a version's
    dictionary is stored once: the names stayed in clear after the upgrade. The next sync
    reads each stored version again from its form, once, even a version no longer
    deployed whose submissions do not come again (here version 1, whose name question
    version 2 dropped)."""
    from dataclasses import replace

    from forms.dictionary import FieldDictionary

    monkeypatch.setenv("TERRAIN_PII_SALT", "sel-de-test")

    def version(name: str, with_name: bool) -> dict[str, Any]:
        served = content(([{"type": "text", "name": "head_name", "terrain_pii": "oui"}] if with_name else []) +
                         [{"type": "begin_group", "name": "contact", "terrain_pii": "yes"},
                          {"type": "text", "name": "phone"}, {"type": "end_group", "name": ""},
                          {"type": "text", "name": "village"}], name)
        served["translations"] = ["Français (fr)"]
        return served

    asset = tiny_asset(version("1", with_name=True))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"head_name": "Assétou Maïga", "contact/phone": "+223 76 12 34 56",
                                            "village": "Kona"}])
        redeploy(asset, version("2", with_name=False))
        server.add_submissions(asset.uid, [{"contact/phone": "+223 66 00 00 00", "village": "Kafana"}])
        sync(server, path)
        with Warehouse(path) as warehouse:  # as the older Terrain stored them: nothing personal
            for name, text in warehouse.con.execute("select version, dictionary::varchar from meta.form_versions"
                                                    ).fetchall():
                stored = FieldDictionary.from_json(text)
                unmarked = {table_name: replace(table, fields=[replace(f, pii=False) for f in table.fields])
                            for table_name, table in stored.tables.items()}
                warehouse.con.execute("update meta.form_versions set dictionary = ?, read_with = null where version = ?",
                                      [replace(stored, tables=unmarked).to_json(), name])
            warehouse.refresh_analyst_tables()
            assert ("Assétou Maïga",) in warehouse.con.execute("select head_name from analyst.tiny").fetchall()
        sync(server, path)  # after the upgrade: nothing new on the server
        before = server.requests_served
        sync(server, path)  # and once more: nothing read again
        again = server.requests_served - before
    with Warehouse(path) as warehouse:
        warehouse.refresh_analyst_tables()
        hidden = warehouse.con.execute("select head_name, phone from analyst.tiny order by submission_id").fetchall()
        view = {r[0] for r in warehouse.con.execute("select column_name from information_schema.columns "
                                                    "where table_schema = 'fr' and table_name = 'tiny'").fetchall()}
        personal = warehouse.con.execute("select distinct column_name from meta.field_labels where is_pii "
                                         "order by 1").fetchall()
        unread = warehouse.con.execute("select count(*) from meta.form_versions where read_with is null").fetchone()
    assert len(hidden[0][0]) == len(hidden[0][1]) == len(hidden[1][1]) == 64 and hidden[1][0] is None
    assert "village" in view and not {"head_name", "phone"} & view
    assert personal == [("head_name",), ("phone",)] and unread == (0,)
    assert again <= 3, again  # the project, its page of new submissions, the list to reconcile: no version read


def test_a_rebuild_types_versions_stored_by_an_older_terrain_as_stored(tmp_path: Path) -> None:
    """A version stored with an older reading of forms is read again by the next sync
    (it has the form); a rebuild is offline and types with the stored version, not with
    the deployed one (which dropped a question: its answers would be lost)."""
    asset = tiny_asset(content([{"type": "text", "name": "village"}, {"type": "integer", "name": "wells"}], "1"))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"village": "Kignan", "wells": "4"}])
        redeploy(asset, content([{"type": "text", "name": "village"}], "2"))
        server.add_submissions(asset.uid, [{"village": "Zégoua"}])
        sync(server, path)
    with Warehouse(path) as warehouse:
        warehouse.con.execute("update meta.form_versions set read_with = null")
        rebuild_all(warehouse)
    assert rows(path, "select village, wells from tiny order by submission_id") == [("Kignan", 4), ("Zégoua", None)]
    assert rows(path, "select count(*) from meta.form_versions where read_with is null") == [(2,)]  # nothing read
    # A sync reads the first version again from the server; where the server no longer
    # has it, the stored one types its submissions (not the deployed one).
    first = next(iter(asset.version_contents))
    del asset.version_contents[first]
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.edit_submission(asset.uid, asset.submissions[0]["_id"], {"village": "Kignan-Coura",
                                                                         "__version__": first})  # still version 1
        with KoboClient(server.url, TOKEN, backoff=0.01) as client, Warehouse(path) as warehouse:
            sync_asset(client, warehouse, asset.uid, settings=replace(CALM, reconcile="always"))
    assert rows(path, "select village, wells from tiny order by submission_id") == [
        ("Kignan-Coura", 4), ("Zégoua", None)]


def test_a_personal_mark_added_under_the_same_version_name_is_kept(tmp_path: Path, monkeypatch) -> None:
    """A project redeployed with only a new personal mark, its version name unchanged: the
    same version (the marks do not make versions apart), marked now."""
    monkeypatch.setenv("TERRAIN_PII_SALT", "sel-de-test")
    asset = tiny_asset(content([{"type": "text", "name": "head_name"}], "1"))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"head_name": "Assétou Maïga"}])
        sync(server, path)
        redeploy(asset, content([{"type": "text", "name": "head_name", "terrain_pii": "yes"}], "1"))
        sync(server, path)
    with Warehouse(path) as warehouse:
        assert [r[0] for r in warehouse.con.execute("select version from meta.form_versions").fetchall()] == ["1"]
        warehouse.refresh_analyst_tables()
        [(name,)] = warehouse.con.execute("select head_name from analyst.tiny").fetchall()
    assert len(name) == 64


def test_labels_are_those_of_the_version_deployed_last(tmp_path: Path, monkeypatch) -> None:
    """Version "10" follows "9" (and a form-builder project's versions have random names):
    the labels analysts read, in the views, the marts' lookups and the XLSX headers, are
    the version deployed last's, not the greatest version name's."""
    from warehouse.exports import export_tables

    monkeypatch.setenv("TERRAIN_PII_SALT", "sel-de-test")

    def version(name: str, question: str, functional: str) -> dict[str, Any]:
        served = content([{"type": "select_one status", "name": "status", "label": [question]}], name)
        served["choices"] = [{"list_name": "status", "name": "functional", "label": [functional]}]
        served["translations"] = ["Français (fr)"]
        return served

    asset = tiny_asset(version("9", "Etat (faute)", "Fonctionel (faute)"))
    path = tmp_path / "w.duckdb"
    with LocalKoboServer({TOKEN: "someone"}, [asset]) as server:
        server.add_submissions(asset.uid, [{"status": "functional"}])
        redeploy(asset, version("10", "État du point d'eau", "Fonctionnel"))
        server.add_submissions(asset.uid, [{"status": "functional"}])
        sync(server, path)
    with Warehouse(path) as warehouse:
        assert warehouse.latest_dictionaries()[0].version == "10"
        labelled = warehouse.con.execute("select distinct status from fr.tiny").fetchall()
        latest = warehouse.con.execute("select label from meta.latest_choice_labels where choice_name = 'functional'"
                                       ).fetchall()
        tables = warehouse.refresh_analyst_tables()
        workbook = export_tables(warehouse.con, tables, tmp_path / "xlsx", "xlsx").files[0]
    assert labelled == [("Fonctionnel",)] and latest == [("Fonctionnel",)]
    header = [c.value for c in openpyxl.load_workbook(workbook)["tiny"][1]]
    assert "État du point d'eau\n(status)" in header
