"""validation/: each check built from the form fires on a hand-made failing row and
stays quiet on a clean one."""

from __future__ import annotations

import copy

import pytest

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
    batch = type_submissions(household.dictionary, [submission])
    return batch.issues + FormValidator(household.dictionary).validate(batch.tables)


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


def test_required_only_when_relevant(household, clean) -> None:
    """AVEC savings are required only for AVEC members: absent for a non-member is fine."""
    assert "livelihood/avec_savings_fcfa" not in clean
    member = copy.deepcopy(clean)
    member["livelihood/avec_member"] = "yes"
    assert [(i.check_code, i.column_name) for i in _issues(household, member)] == [("required", "avec_savings_fcfa")]
