"""The Node harness around the ODK Web Forms engine (forms/engine/fill.mjs).

A small XLSForm (markdown, compiled with pyxform) is filled like a
KoboToolbox submission: a valid answer set yields a submission XML, an age out
of range yields the French constraint message, a missing answer a "required"
violation.
"""

from __future__ import annotations

import re

import pytest

from forms.web_engine import fill_form, fill_forms

XLSFORM_MD = """
| survey |
| | type | name | label::Français (fr) | label::English (en) | required | constraint | constraint_message::Français (fr) | constraint_message::English (en) | choice_filter |
| | start | start | | | | | | | |
| | select_one region | region | Région | Region | yes | | | | |
| | select_one cercle | cercle | Cercle | Cercle | yes | | | | region=${region} |
| | begin_group | ident | Identification | Identification | | | | | |
| | text | head_name | Nom du chef | Head name | yes | | | | |
| | end_group | | | | | | | | |
| | begin_repeat | members | Membres | Members | | | | | |
| | integer | age | Âge | Age | yes | . >= 0 and . <= 120 | Âge entre 0 et 120 | Age between 0 and 120 | |
| | end_repeat | | | | | | | | |
| | geopoint | gps | GPS | GPS | | | | | |
| | select_multiple act | acts | Activités | Activities | | | | | |
| choices |
| | list_name | name | label::Français (fr) | label::English (en) | region |
| | region | sikasso | Sikasso | Sikasso | |
| | region | kayes | Kayes | Kayes | |
| | cercle | kadiolo | Kadiolo | Kadiolo | sikasso |
| | cercle | bafoulabe | Bafoulabé | Bafoulabé | kayes |
| | act | agr | Agriculture | Farming | |
| | act | com | Commerce | Trade | |
| settings |
| | form_id | version | default_language |
| | household_survey | 2026112401 | Français (fr) |
"""


@pytest.fixture(scope="module")
def xform(tmp_path_factory: pytest.TempPathFactory) -> str:
    from pyxform.xls2xform import convert
    path = tmp_path_factory.mktemp("xlsform") / "household_survey.md"
    path.write_text(XLSFORM_MD, encoding="utf-8")
    return convert(str(path)).xform


def _answers(**overrides: object) -> dict:
    answers: dict = {
        "start": "2026-11-24T08:00:00.000+00:00",
        "region": "kayes",
        "cercle": "bafoulabe",
        "ident/head_name": "Awa Traoré",
        "members": [
            {"members/age": "41"},
            {"members/age": "12"},
            {"members/age": "3"},
        ],
        "gps": "12.6392 -8.0029 350 4.5",
        "acts": "agr com",
        # Kobo bookkeeping keys, to be ignored
        "_id": 17,
        "_uuid": "0a1b",
        "formhub/uuid": "f00",
        "meta/instanceID": "uuid:0a1b",
        "__version__": "vX",
    }
    answers.update(overrides)
    return answers


def test_valid_answers_give_a_submission(xform: str) -> None:
    result = fill_form(xform, _answers())

    assert result.errors == []
    assert result.violations == []
    assert result.ok
    xml = result.submission_xml
    assert xml is not None
    assert re.search(r'<data [^>]*id="household_survey"', xml)
    assert re.search(r'<data [^>]*version="2026112401"', xml)
    assert re.search(r"<meta><instanceID>uuid:[0-9a-f-]{36}</instanceID></meta>", xml)
    assert xml.count("<members>") == 3
    assert "<age>41</age>" in xml and "<age>12</age>" in xml and "<age>3</age>" in xml
    assert "<cercle>bafoulabe</cercle>" in xml  # cascade: only offered once region=kayes
    assert "<acts>agr com</acts>" in xml
    assert "<gps>12.6392 -8.0029 350" in xml


def test_constraint_and_required_violations(xform: str) -> None:
    too_old = _answers(members=[{"members/age": "30"}, {"members/age": "150"}])
    no_head = _answers()
    del no_head["ident/head_name"]

    constraint, required = fill_forms(xform, [too_old, no_head])

    assert not constraint.ok and constraint.submission_xml is None
    assert constraint.errors == []
    assert [(v["ref"], v["kind"], v["message"]) for v in constraint.violations] == [
        ("/data/members[2]/age", "constraint", "Âge entre 0 et 120")
    ]

    assert not required.ok and required.submission_xml is None
    assert required.errors == []
    assert [(v["ref"], v["kind"]) for v in required.violations] == [
        ("/data/ident/head_name", "required")
    ]
