"""Submissions generated from the field dictionary: deterministic, realistic, ~2% mistakes."""

from __future__ import annotations

from forms.expressions import is_true
from kobo.generate import MALI_BOX, Deployment, generate_submissions
from warehouse.typing import type_submissions
from validation.schemas import FormValidator

DEPLOYMENT = Deployment("aTestAsset00000000000000", "vTestVersion0000000000", "0" * 32)


def test_generation_is_deterministic_and_prefix_stable(household) -> None:
    first = generate_submissions(household.dictionary, DEPLOYMENT, 50, seed=3)
    again = generate_submissions(household.dictionary, DEPLOYMENT, 80, seed=3)
    assert first == again[:50]
    assert first != generate_submissions(household.dictionary, DEPLOYMENT, 50, seed=4)


def test_clean_submissions_follow_the_form(household) -> None:
    d = household.dictionary
    submissions = generate_submissions(d, DEPLOYMENT, 400, seed=5, mistake_rate=0.0)
    issues = FormValidator(d).validate(type_submissions(d, submissions).tables)
    assert issues == []
    consenting = [s for s in submissions if s.get("consent") == "yes"]
    assert len(consenting) > 350
    for s in consenting:
        lat, lon = (float(x) for x in s["location"].split()[:2])
        assert MALI_BOX[0] <= lat <= MALI_BOX[1] and MALI_BOX[2] <= lon <= MALI_BOX[3]
        assert len(s["members"]) == int(s["identification/household_size"])
        assert s["members"][0]["members/member_relation"] == "head"
        # The cascade holds: the village belongs to the commune, which belongs to the cercle...
        village = next(c for c in d.choices["village"] if c.name == s["identification/village"])
        assert village.filters["commune"] == s["identification/commune"]
        # Relevance holds: "other, specify" only when "other" was ticked.
        other = "other" in s["livelihood/income_activities"].split()
        assert ("livelihood/income_other" in s) == other
    refused = [s for s in submissions if s.get("consent") == "no"]
    assert all("members" not in s and "location" not in s for s in refused)


def test_about_two_percent_carry_a_mistake_that_validation_catches(household) -> None:
    d = household.dictionary
    submissions = generate_submissions(d, DEPLOYMENT, 2000, seed=6)
    issues = FormValidator(d).validate(type_submissions(d, submissions).tables)
    flagged = {i.root_uuid for i in issues}
    assert 0.01 * 2000 <= len(flagged) <= 0.03 * 2000
    assert {i.check_code for i in issues} == {"gps_in_mali", "constraint", "required"}
