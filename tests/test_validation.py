"""validation/: each check built from the form fires on a hand-made failing row and
stays quiet on a clean one."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from forms.build import build_form
from forms.dictionary import FieldDictionary
from forms.expressions import is_true
from kobo.generate import Deployment, generate_submissions
from validation.schemas import FormValidator
from warehouse.typing import type_submissions

DEPLOYMENT = Deployment("aTestAsset00000000000000", "vTestVersion0000000000", "0" * 32)


@pytest.fixture(scope="module")
def clean(household) -> dict:
    submissions = generate_submissions(household.dictionary, DEPLOYMENT, 60, seed=11, mistake_rate=0.0)
    return next(s for s in submissions if s.get("consent") == "yes" and len(s.get("members", [])) >= 2
                and s.get("livelihood/avec_member") == "no")


def _issues(household, submission: dict) -> list:
    return _form_issues(household.dictionary, submission)


def test_clean_submission_passes(household, clean) -> None:
    assert _issues(household, clean) == []


@pytest.mark.parametrize("change, code, column", [
    (lambda s: s.__setitem__("identification/head_age", "7"), "constraint", "head_age"),
    (lambda s: s["members"][1].__setitem__("members/member_age", "233"), "constraint", "member_age"),
    (lambda s: s.pop("identification/head_name"), "required", "head_name"),
    (lambda s: s["members"][1].pop("members/member_sex"), "required", "member_sex"),
    (lambda s: s.__setitem__("identification/household_id", "sik42"), "constraint", "household_id"),
    (lambda s: s.__setitem__("water/water_source", "river"), "choice", "water_source"),
    (lambda s: s.__setitem__("livelihood/income_activities", "farming mining"), "choice", "income_activities"),
    (lambda s: s.__setitem__("identification/household_size", "douze"), "type", "household_size"),
    (lambda s: s.__setitem__("location", "-5.6 11.3 300 5"), "gps_in_mali", "location"),
    (lambda s: s.__setitem__("location", "11.3"), "type", "location"),
])
def test_each_check_fires(household, clean, change, code, column) -> None:
    broken = copy.deepcopy(clean)
    change(broken)
    issues = _issues(household, broken)
    assert [(i.check_code, i.column_name) for i in issues if i.check_code != "required" or code == "required"][:1] == [(code, column)]
    assert all(i.root_uuid == clean["meta/rootUuid"] and i.severity == "error" and " / " in i.message for i in issues)


@pytest.mark.parametrize("form_id, key", [("training_attendance", "session/session_date"),
                                          ("water_point_inspection", "status/broken_since"),
                                          ("water_point_inspection", "maintenance/last_repair_date")])
def test_a_date_in_the_future_is_refused(form_id: str, key: str) -> None:
    """A training held, a pump broken or repaired, on a day still to come: a slip of the
    phone's date picker the forms let through, and the checks too."""
    from forms.build import project_form

    dictionary = project_form(form_id).dictionary
    submissions = generate_submissions(dictionary, DEPLOYMENT, 80, seed=5, mistake_rate=0.0)
    submission = copy.deepcopy(next(s for s in submissions if key in s))
    assert not _form_issues(dictionary, submission)
    submission[key] = (dt.date.today() + dt.timedelta(days=400)).isoformat()
    assert [(i.check_code, i.column_name) for i in _form_issues(dictionary, submission)] == [
        ("constraint", key.rsplit("/", 1)[1])]


def _form_issues(dictionary: FieldDictionary, submission: dict) -> list:
    batch = type_submissions(dictionary, [submission])
    return batch.issues + FormValidator(dictionary).validate(batch.tables)


def test_required_only_when_relevant(household, clean) -> None:
    """AVEC savings are required only for AVEC members: absent for a non-member is fine."""
    assert "livelihood/avec_savings_fcfa" not in clean
    member = copy.deepcopy(clean)
    member["livelihood/avec_member"] = "yes"
    assert [(i.check_code, i.column_name) for i in _issues(household, member)] == [("required", "avec_savings_fcfa")]


DATED_FORM = """
| survey |
| | type | name | label::Français (fr) | label::English (en) | constraint | constraint_message::Français (fr) | constraint_message::English (en) |
| | today | today | | | . >= date('2020-01-01') | | |
| | date | visit_date | Date de la visite | Date of the visit | . >= date('2020-01-01') and . <= today() | Entre 2020 et aujourd'hui | Between 2020 and today |
| | dateTime | seen_at | Vu le | Seen at | . > date('2024-01-01') and . <= today() | Après 2024, pas dans le futur | After 2024, not in the future |
| | date | next_visit | Prochaine visite | Next visit | . >= today() | Pas dans le passé | Not in the past |

| settings |
| | form_id | version | default_language |
| | dated_visit | 2026112401 | Français (fr) |
"""


@pytest.fixture(scope="module")
def dated(tmp_path_factory) -> FieldDictionary:
    """A hand-made form with date constraints (none of our forms has one yet)."""
    path = tmp_path_factory.mktemp("dated") / "dated_visit.md"
    path.write_text(DATED_FORM, encoding="utf-8")
    return build_form(path).dictionary


def _dated_issues(dictionary: FieldDictionary, **answers: str) -> list:
    submission = {"_id": 1, "meta/rootUuid": "uuid:dated-1", "today": "2026-06-01",
                  "visit_date": "2026-05-30", "seen_at": "2026-05-30T09:15:00.000+00:00", **answers}
    batch = type_submissions(dictionary, [submission])
    return batch.issues + FormValidator(dictionary).validate(batch.tables)


def test_generated_dates_meet_date_constraints(dated) -> None:
    submissions = generate_submissions(dated, DEPLOYMENT, 40, seed=12, mistake_rate=0.0)
    answered = [(f, s[f.kobo_key]) for s in submissions for f in dated.fields() if f.kobo_key in s]
    assert {f.name for f, _ in answered} == {"today", "visit_date", "seen_at", "next_visit"}
    assert all(is_true(f.constraint, {}.get, current=value) for f, value in answered)
    assert FormValidator(dated).validate(type_submissions(dated, submissions).tables) == []


TODAY = dt.datetime.now(dt.timezone.utc).date()


@pytest.mark.parametrize("answers, column", [
    ({}, None),
    ({"visit_date": TODAY.isoformat()}, None),
    ({"visit_date": "2020-01-01", "seen_at": "2024-01-01T00:00:01.000+00:00"}, None),
    ({"visit_date": "2019-12-31"}, "visit_date"),
    ({"visit_date": (TODAY + dt.timedelta(days=1)).isoformat()}, "visit_date"),
    ({"seen_at": "2024-01-01T00:00:00.000+00:00"}, "seen_at"),  # '>': midnight itself is out
    ({"seen_at": f"{TODAY + dt.timedelta(days=3)}T08:00:00.000+00:00"}, "seen_at"),
    ({"today": "2019-06-01"}, "today"),
    # Collect checked '. >= today()' on the day; read again later (a rebuild) it would refuse every old answer.
    ({"next_visit": "2020-01-01"}, None),
])
def test_date_constraints(dated, answers, column) -> None:
    issues = _dated_issues(dated, **answers)
    assert [(i.check_code, i.column_name) for i in issues] == ([("constraint", column)] if column else [])
    if column == "visit_date":
        value = answers["visit_date"]
        assert issues[0].message == (f"« Date de la visite » = {value} : Entre 2020 et aujourd'hui / "
                                     f"'Date of the visit' = {value}: Between 2020 and today")


def test_today_is_read_when_validating(dated, monkeypatch) -> None:
    """A schema built once keeps no day: a date in the future today is fine tomorrow."""
    import forms.expressions

    validator = FormValidator(dated)
    tomorrow = (TODAY + dt.timedelta(days=1)).isoformat()
    batch = type_submissions(dated, [{"_id": 1, "meta/rootUuid": "uuid:dated-1", "visit_date": tomorrow}])
    assert [i.column_name for i in validator.validate(batch.tables)] == ["visit_date"]
    monkeypatch.setattr(forms.expressions, "today", lambda: TODAY + dt.timedelta(days=1))
    assert validator.validate(batch.tables) == []
    assert is_true(". <= today()", {}.get, current=tomorrow)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-inf"])
def test_a_decimal_that_is_not_a_number_is_a_type_error(text: str) -> None:
    """Python and DuckDB read these as floats; no form records them, and a NaN would pass
    every range check (and then break the XLSX export)."""
    from forms.build import project_form

    form = project_form("water_point_inspection")
    deployment = Deployment("aWater0000000000000000", "vWater000000000000000", "2" * 32)
    [submission] = generate_submissions(form.dictionary, deployment, 1, seed=8, mistake_rate=0.0)
    submission["quality/quality_tested"] = "yes"
    submission["quality/free_chlorine_mg_l"] = text
    staged = type_submissions(form.dictionary, [submission])
    assert [(i.check_code, i.column_name) for i in staged.issues] == [("type", "free_chlorine_mg_l")]
