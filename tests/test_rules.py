"""validation/rules.py: each hand-written check fires on a hand-made failing submission
and stays quiet on a clean one; errors quarantine, warnings flag in place."""

from __future__ import annotations

import copy
import datetime as dt
import math

import pytest

from forms.build import project_forms
from kobo.generate import Deployment, generate_submissions
from validation.rules import QualitySettings, run_rules
from warehouse.store import Warehouse
from warehouse.typing import type_submissions

DEPLOYMENT = Deployment("aRulesTest00000000000000", "vRules0000000000000000", "0" * 32)
NOW = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)


def clean_one(form_id: str, **where) -> dict:
    dictionary = project_forms()[form_id].dictionary
    for s in generate_submissions(dictionary, DEPLOYMENT, 80, seed=61, mistake_rate=0.0):
        if all(s.get(k) == v for k, v in where.items()):
            return s
    raise AssertionError("no such submission")


def codes(form_id: str, submissions: list[dict], con=None) -> list[tuple[str, str]]:
    dictionary = project_forms()[form_id].dictionary
    batch = type_submissions(dictionary, submissions)
    return sorted({(i.check_code, i.severity) for i in run_rules(dictionary, batch.tables, con, QualitySettings(), NOW)})


def household() -> dict:
    return clean_one("household_survey", consent="yes")


def another_household(uid: str, submission_id: int, head: str, household_id: str) -> dict:
    """A copy of household() as another submission: its own uuid, _id, head and household id."""
    return _with(household(), _uuid=uid, meta__rootUuid=f"uuid:{uid}", _id=submission_id,
                 identification__head_name=head, identification__household_id=household_id)


def test_clean_submissions_raise_nothing() -> None:
    assert codes("household_survey", [household()]) == []
    assert codes("training_attendance", [clean_one("training_attendance")]) == []
    assert codes("water_point_inspection", [clean_one("water_point_inspection")]) == []


def _with(submission: dict, **changes) -> dict:
    changed = copy.deepcopy(submission)
    for key, value in changes.items():
        changed[key.replace("__", "/")] = value
    return changed


@pytest.mark.parametrize("change, expected", [
    (lambda s: _with(s, end="2026-06-01T07:00:00.000+00:00", start="2026-06-01T08:00:00.000+00:00"),
     ("end_before_start", "error")),
    (lambda s: _with(s, start="2026-06-01T08:00:00.000+00:00", end="2026-06-01T08:02:00.000+00:00"),
     ("short_interview", "warning")),
    (lambda s: _with(s, start="2027-03-01T08:00:00.000+00:00", end="2027-03-01T08:40:00.000+00:00"),
     ("in_the_future", "error")),
    (lambda s: _with(s, identification__household_size=str(len(s["members"]) + 3)),
     ("household_size_vs_members", "warning")),
])
def test_household_rules_fire(change, expected) -> None:
    assert expected in codes("household_survey", [change(household())])


def test_a_phone_clock_ahead_is_caught_however_late_the_sync() -> None:
    """in_the_future measures against the submission's _submission_time, not the sync's
    time: an interview dated a day after the server received it is flagged, even synced
    (or rebuilt) long after that day."""
    s = household()
    received = dt.datetime.fromisoformat(s["_submission_time"]).replace(tzinfo=dt.timezone.utc)
    assert received + dt.timedelta(days=2) < NOW
    ahead = received + dt.timedelta(days=1)
    late = _with(s, start=ahead.isoformat(timespec="milliseconds"),
                 end=(ahead + dt.timedelta(minutes=40)).isoformat(timespec="milliseconds"))
    assert ("in_the_future", "error") in codes("household_survey", [late])
    on_time = _with(s, start=(received - dt.timedelta(minutes=50)).isoformat(timespec="milliseconds"),
                    end=(received - dt.timedelta(minutes=5)).isoformat(timespec="milliseconds"))
    assert codes("household_survey", [on_time]) == []


def test_ages_against_relation_to_the_head() -> None:
    s = household()
    s = copy.deepcopy(s)
    s["members"].append({"members/member_name": "Moussa Diarra", "members/member_sex": "male",
                         "members/member_age": str(int(s["members"][0]["members/member_age"]) + 5),
                         "members/member_relation": "child"})
    s["identification/household_size"] = str(len(s["members"]))
    assert codes("household_survey", [s]) == [("age_vs_relation", "warning")]


def test_duplicates_within_the_batch() -> None:
    s = household()
    twin = copy.deepcopy(s)
    twin["meta/rootUuid"] = "uuid:00000000-0000-4000-8000-000000000001"
    twin["_id"] = s["_id"] + 1  # the same submission sent twice gets a second _id
    assert ("duplicate_uuid", "error") in codes("household_survey", [s, twin])


def test_duplicate_household_id_flags_the_later_id_whatever_the_order(tmp_path) -> None:
    """Two households with one household id: the later _id is flagged, whether it arrives
    first (a late upload below the watermark) or second."""
    from warehouse.load import FormLoader

    dictionary = project_forms()["household_survey"].dictionary
    first = household()
    second = copy.deepcopy(first)
    second.update({"_uuid": "22222222-2222-4222-8222-222222222222", "_id": first["_id"] + 50,
                   "meta/rootUuid": "uuid:22222222-2222-4222-8222-222222222222",
                   "identification/head_name": "Oumou Sangaré"})
    lat, lon, *rest = second["location"].split()
    second["location"] = " ".join([f"{float(lat) + 0.01}", lon, *rest])
    for name, order in (("in order", [first, second]), ("late upload", [second, first])):
        with Warehouse(tmp_path / f"{name}.duckdb") as warehouse:
            loader = FormLoader(warehouse, dictionary, DEPLOYMENT.asset_uid)
            for one in order:
                loader.load_page([one], None)
            assert open_issues(warehouse, "duplicate_household_id") == {second["meta/rootUuid"]}, name


def test_near_duplicate_and_far_from_village_against_the_warehouse(tmp_path) -> None:
    dictionary = project_forms()["household_survey"].dictionary
    base = [s for s in generate_submissions(dictionary, DEPLOYMENT, 200, seed=62, mistake_rate=0.0)
            if s.get("consent") == "yes"]
    village = base[0]["identification/village"]
    neighbours = [s for s in base if s["identification/village"] == village][:4]
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        from warehouse.load import FormLoader

        loader = FormLoader(warehouse, dictionary, DEPLOYMENT.asset_uid)
        loader.load_page(neighbours, None)
        original = neighbours[0]
        copy_of = copy.deepcopy(original)
        copy_of.update({"_uuid": "11111111-1111-4111-8111-111111111111",
                        "meta/rootUuid": "uuid:11111111-1111-4111-8111-111111111111",
                        "identification/household_id": "ZZZ-9999", "_id": 99_999})
        lat, lon, alt, acc = original["location"].split()
        copy_of["location"] = f"{float(lat) + 0.00003} {lon} {alt} {acc}"
        loader.load_page([copy_of], None)
        assert open_issues(warehouse, "near_duplicate") == {copy_of["meta/rootUuid"]}
        far = copy.deepcopy(copy_of)
        far.update({"_uuid": "33333333-3333-4333-8333-333333333333", "_id": 100_000,
                    "meta/rootUuid": "uuid:33333333-3333-4333-8333-333333333333",
                    "identification/household_id": "ZZZ-9998"})
        far["identification/head_name"] = "Awa Keïta"
        far["location"] = f"{float(lat) + 0.5} {lon} {alt} {acc}"
        loader.load_page([far], None)
        assert open_issues(warehouse, "far_from_village") == {far["meta/rootUuid"]}
        assert open_issues(warehouse, "near_duplicate") == {copy_of["meta/rootUuid"]}


def open_issues(warehouse: Warehouse, code: str) -> set[str]:
    return {r[0] for r in warehouse.con.execute("select root_uuid from quality.issues where check_code = ? "
                                                "and resolved_at is null", [code]).fetchall()}


def test_far_from_village_does_not_depend_on_arrival_order(tmp_path) -> None:
    """The far point arriving first (before its village has 3 points) or last is flagged all
    the same: the check is recomputed for the whole village after each batch."""
    from warehouse.load import FormLoader

    dictionary = project_forms()["household_survey"].dictionary
    base = [s for s in generate_submissions(dictionary, DEPLOYMENT, 200, seed=62, mistake_rate=0.0)
            if s.get("consent") == "yes"]
    village = base[0]["identification/village"]
    neighbours = [s for s in base if s["identification/village"] == village][:4]
    far = copy.deepcopy(neighbours[-1])
    lat, lon, *rest = far["location"].split()
    far["location"] = " ".join([f"{float(lat) + 0.5}", lon, *rest])
    results = []
    for name, batches in (("far first", [[far], neighbours[:-1]]), ("far last", [neighbours[:-1], [far]])):
        with Warehouse(tmp_path / f"{name}.duckdb") as warehouse:
            loader = FormLoader(warehouse, dictionary, DEPLOYMENT.asset_uid)
            for batch in batches:
                loader.load_page(batch, None)
            results.append(open_issues(warehouse, "far_from_village"))
    assert results[0] == results[1] == {far["meta/rootUuid"]}


def test_too_many_submissions_a_day_whatever_the_order(tmp_path) -> None:
    """27 forms by one enumerator on one day (over the limit of 25): all 27 are flagged,
    whether they arrive in one batch or in two, in either order; 25 are not."""
    from warehouse.load import FormLoader

    dictionary = project_forms()["household_survey"].dictionary
    s = household()
    many = []
    for i in range(27):
        one = copy.deepcopy(s)
        one.update({"_uuid": f"00000000-0000-4000-8000-{i:012d}", "meta/rootUuid": f"uuid:00000000-0000-4000-8000-{i:012d}",
                    "identification/household_id": f"ABC-{i:04d}", "location": f"{11 + i / 10} -5.5 300 5",
                    "_id": 5000 + i})
        many.append(one)
    found = {}
    for name, batches in (("one batch", [many]), ("early first", [many[:20], many[20:]]),
                          ("late first", [many[20:], many[:20]]), ("only 25", [many[:25]])):
        with Warehouse(tmp_path / f"{name}.duckdb") as warehouse:
            loader = FormLoader(warehouse, dictionary, DEPLOYMENT.asset_uid)
            for batch in batches:
                loader.load_page(batch, None)
            found[name] = open_issues(warehouse, "too_many_per_day")
    everyone = {one["meta/rootUuid"] for one in many}
    assert found["one batch"] == found["early first"] == found["late first"] == everyone
    assert found["only 25"] == set()


def test_water_point_and_training_rules() -> None:
    broken = clean_one("water_point_inspection", **{"status/functional_status": "not_functional"})
    broken = copy.deepcopy(broken)
    del broken["status/broken_since"]
    broken["committee/fee_fcfa_per_month"] = "15000"
    found = codes("water_point_inspection", [broken])
    assert ("water_point_broken_without_date", "error") in found and ("implausible_fee", "warning") in found
    training = copy.deepcopy(clean_one("training_attendance"))
    training["participants"][0]["participants/participant_age"] = "12"
    assert codes("training_attendance", [training]) == [("young_participant", "warning")]


@pytest.mark.parametrize("column, score, expected", [
    ("participants/pre_test_score", "21", [("score_out_of_range", "error")]),
    ("participants/post_test_score", "-1", [("score_out_of_range", "error")]),
    ("participants/post_test_score", "20", []),
    ("participants/pre_test_score", "0", []),
])
def test_test_scores_outside_their_range(column, score, expected) -> None:
    training = copy.deepcopy(clean_one("training_attendance"))
    training["participants"][-1][column] = score
    assert codes("training_attendance", [training]) == expected


def test_score_range_is_a_setting() -> None:
    dictionary = project_forms()["training_attendance"].dictionary
    training = copy.deepcopy(clean_one("training_attendance"))
    training["participants"][0]["participants/post_test_score"] = "15"
    tables = type_submissions(dictionary, [training]).tables
    issues = run_rules(dictionary, tables, None, QualitySettings(test_score_range=(0, 10)), NOW)
    found = [i for i in issues if (i.column_name, i.row_key) == ("post_test_score", "1")]
    assert [(i.check_code, i.severity, i.table_name, i.value) for i in found] == \
        [("score_out_of_range", "error", "training_participants", "15")]
    assert found[0].message == ("Note de test hors de l'échelle : 15 (attendu 0–10) / "
                                "Test score out of range: 15 (expected 0–10)")


def test_warnings_flag_in_place_and_errors_quarantine(seeded, warehouse_path) -> None:
    from kobo.client import KoboClient
    from flows.sync import SyncSettings, sync_asset

    asset = seeded.assets["household_survey"]
    target = next(s for s in asset.submissions if s.get("consent") == "yes")
    seeded.server.edit_submission(asset.uid, target["_id"], {"identification/household_size": "59"})
    other = next(s for s in asset.submissions if s.get("consent") == "yes" and s["_id"] != target["_id"])
    seeded.server.edit_submission(asset.uid, other["_id"], {"end": "2026-06-01T07:00:00.000+00:00",
                                                            "start": "2026-06-01T09:00:00.000+00:00"})
    with KoboClient(seeded.server.url, seeded.token) as client, Warehouse(warehouse_path) as warehouse:
        sync_asset(client, warehouse, asset.uid, settings=SyncSettings(download_attachments=False))
        con = warehouse.con
        assert con.execute("select count(*) from households where root_uuid = ?", [target["meta/rootUuid"]]).fetchone()[0] == 1
        assert con.execute("select check_code from quality.issues where root_uuid = ? and resolved_at is null",
                           [target["meta/rootUuid"]]).fetchall() == [("household_size_vs_members",)]
        assert con.execute("select count(*) from households where root_uuid = ?", [other["meta/rootUuid"]]).fetchone()[0] == 0
        assert "end_before_start" in con.execute("select string_agg(check_code) from quality.issues where root_uuid = ?",
                                                 [other["meta/rootUuid"]]).fetchone()[0]


def test_checks_of_the_changed_groups_only_equal_checks_of_everything(tmp_path) -> None:
    """After a sync, only the groups whose submissions changed are checked again
    (quality.unchecked_groups): an edit that moves a household to another id, a new
    duplicate, and the deletion of the original each leave the open issues a check of
    everything finds."""
    from warehouse.load import FormLoader

    dictionary = project_forms()["household_survey"].dictionary
    first = household()

    def twin(number: int, **answers) -> dict:
        one = copy.deepcopy(first)
        root = f"{number:08d}-0000-4000-8000-000000000000"
        one.update({"_uuid": root, "meta/rootUuid": f"uuid:{root}", "_id": first["_id"] + number,
                    "identification/head_name": f"Chef {number}", **answers})
        lat, lon, *rest = one["location"].split()
        one["location"] = " ".join([f"{float(lat) + 0.01 * number}", lon, *rest])
        return one

    second, third = twin(1), twin(2)
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        loader = FormLoader(warehouse, dictionary, DEPLOYMENT.asset_uid)

        def everything_agrees() -> set[str]:
            found = open_issues(warehouse, "duplicate_household_id")
            assert warehouse.con.execute("select count(*) from quality.unchecked_groups").fetchone()[0] == 0
            loader.run_warehouse_checks(everything=True)
            assert open_issues(warehouse, "duplicate_household_id") == found
            return found

        loader.load_page([first, second], None)
        assert everything_agrees() == {second["meta/rootUuid"]}
        moved = {**second, "_uuid": "99999999-0000-4000-8000-000000000000", "identification/household_id": "NEW-0001"}
        loader.load_page([moved], None)  # an edit: the household leaves the group of first
        assert everything_agrees() == set()
        loader.load_page([third], None)
        assert everything_agrees() == {third["meta/rootUuid"]}
        with warehouse.transaction():
            loader.mark_deleted([first["meta/rootUuid"]], NOW)  # the original, deleted on the server
        loader.run_warehouse_checks()
        assert everything_agrees() == set()


def test_near_duplicate_compares_points_across_latitude_bands(tmp_path) -> None:
    """The near-duplicate check compares points within bands of latitude (not every pair of
    an enumerator's households with one head's name): a pair 9.5 m apart across a band's
    edge is still found, one 10.5 m apart is not, and east-west distances count."""
    from warehouse.load import FormLoader

    dictionary = project_forms()["household_survey"].dictionary
    metres = QualitySettings().near_duplicate_metres
    band = metres / 111000.0  # the band's height in degrees (table_rules.sql)
    edge = (int(12.5 / band) + 1) * band - 1e-7  # just south of a band's northern edge
    north, east = 1 / 111195.0, 1 / (111195.0 * math.cos(math.radians(edge)))
    pairs = {"Fatoumata Coulibaly": (9.5 * north, 0.0), "Mariam Traoré": (10.5 * north, 0.0),
             "Sekou Dembélé": (0.0, 9.5 * east)}
    submissions, expected = [], set()
    for number, (head, (d_lat, d_lon)) in enumerate(pairs.items()):
        for moved in (False, True):
            s = another_household(f"{number:08d}-0000-4000-8000-{int(moved):012d}", 1000 + 2 * number + moved,
                                  head, f"ZZZ-90{number}{int(moved)}")
            s["location"] = f"{edge + d_lat * moved:.9f} {-6.5 + d_lon * moved:.9f} 300 5"
            submissions.append(s)
            if moved and head != "Mariam Traoré":
                expected.add(s["meta/rootUuid"])
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        FormLoader(warehouse, dictionary, DEPLOYMENT.asset_uid).load_page(submissions, None)
        assert open_issues(warehouse, "near_duplicate") == expected


def test_an_issue_that_still_holds_keeps_its_row_when_its_message_changes(tmp_path) -> None:
    """too_many_per_day: when a fourth form of the day arrives, the first three keep their
    issues (same row, same detection time) with the new count in the message; they are
    not resolved and opened again."""
    from warehouse.load import FormLoader

    dictionary = project_forms()["household_survey"].dictionary
    day = [another_household(f"44444444-0000-4000-8000-{number:012d}", 2000 + number, f"Chef {number}",
                             f"ZZZ-70{number:02d}") for number in range(4)]
    for number, s in enumerate(day):
        lat, lon, *rest = s["location"].split()
        s["location"] = " ".join([f"{float(lat) + 0.001 * number:.6f}", lon, *rest])
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        loader = FormLoader(warehouse, dictionary, DEPLOYMENT.asset_uid,
                            quality=QualitySettings(max_submissions_per_day=2))
        loader.load_page(day[:3], None)
        query = ("select root_uuid, issue_id, detected_at, message from quality.issues "
                 "where check_code = 'too_many_per_day' and resolved_at is null order by root_uuid")
        before = warehouse.con.execute(query).fetchall()
        assert len(before) == 3 and all(" 3 " in message for *_, message in before)
        loader.load_page(day[3:], None)
        after = warehouse.con.execute(query).fetchall()
        assert [row[:3] for row in after[:3]] == [row[:3] for row in before]
        assert len(after) == 4 and all(" 4 " in message for *_, message in after)
        assert warehouse.con.execute("select count(*) from quality.issues where check_code = 'too_many_per_day' "
                                     "and resolved_at is not null").fetchone()[0] == 0


@pytest.mark.parametrize("second_form_id", ["household_survey", "household_survey_copy"])
def test_warehouse_wide_checks_count_each_project_apart(tmp_path, second_form_id) -> None:
    """Two projects loading one form (or two forms with one main table) share its tables:
    an enumerator's forms of a day are counted per project (two each, under a limit of 2),
    not together (four)."""
    import dataclasses

    from warehouse.load import FormLoader

    dictionary = project_forms()["household_survey"].dictionary
    dictionaries = {"aProjectOne0000000000000": dictionary,
                    "aProjectTwo0000000000000": dataclasses.replace(dictionary, form_id=second_form_id)}
    day = [another_household(f"55555555-0000-4000-8000-{number:012d}", 3000 + number, f"Chef {number}",
                             f"ZZZ-60{number:02d}") for number in range(4)]
    settings = QualitySettings(max_submissions_per_day=2)
    with Warehouse(tmp_path / "w.duckdb") as warehouse:
        for asset_uid, pair in (("aProjectOne0000000000000", day[:2]), ("aProjectTwo0000000000000", day[2:])):
            FormLoader(warehouse, dictionaries[asset_uid], asset_uid, quality=settings).load_page(pair, None)
        assert open_issues(warehouse, "too_many_per_day") == set()
        third = another_household("55555555-0000-4000-8000-000000000099", 3099, "Chef 99", "ZZZ-6099")
        FormLoader(warehouse, dictionary, "aProjectOne0000000000000", quality=settings).load_page([third], None)
        assert open_issues(warehouse, "too_many_per_day") == {day[0]["meta/rootUuid"], day[1]["meta/rootUuid"],
                                                              third["meta/rootUuid"]}
