"""Our three forms in the real XForm engines: ODK Validate (JavaRosa, inside ODK Collect)
and @getodk/xforms-engine (ODK Web Forms), and the generated submissions checked
against the latter, so test data is data that Collect could have produced."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from pyxform.validators.odk_validate import ODKValidateError, check_xform

from forms.build import project_forms
from forms.web_engine import fill_forms
from kobo.generate import Deployment, generate_submissions
from validation.schemas import FormValidator
from warehouse.typing import type_submissions

FORM_IDS = ["household_survey", "training_attendance", "water_point_inspection"]
DEPLOYMENT = Deployment("aEngineTest0000000000000", "vEngineTest00000000000", "0" * 32)
FRENCH = "Français (fr)"


def test_all_three_forms_exist() -> None:
    assert sorted(project_forms()) == FORM_IDS


@pytest.mark.parametrize("form_id", FORM_IDS)
def test_odk_validate_accepts_the_form(form_id: str, tmp_path: Path) -> None:
    path = tmp_path / f"{form_id}.xml"
    path.write_text(project_forms()[form_id].xform, encoding="utf-8")
    warnings = check_xform(str(path))
    assert not any("error" in w.lower() for w in warnings)


def test_odk_validate_rejects_a_broken_xform(tmp_path: Path) -> None:
    """Proves the JavaRosa engine really runs: a relevant pointing at nothing fails."""
    xform = project_forms()["household_survey"].xform
    broken = xform.replace("relevant=\" /household_survey/consent  = 'yes'\"",
                           "relevant=\" /household_survey/nowhere  = 'yes' and (\"", 1)
    assert broken != xform
    path = tmp_path / "broken.xml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(ODKValidateError):
        check_xform(str(path))


def _clean_sample(form_id: str, count: int, seed: int) -> list[dict]:
    dictionary = project_forms()[form_id].dictionary
    return generate_submissions(dictionary, DEPLOYMENT, count, seed=seed, mistake_rate=0.0)


def _answers(submission: dict) -> dict:
    return {k: v for k, v in submission.items() if not k.startswith("_") and not k.startswith(("formhub/", "meta/"))}


@pytest.mark.parametrize("form_id, repeat_key", [
    ("household_survey", "members"), ("training_attendance", "participants"), ("water_point_inspection", None),
])
def test_filled_answer_set_gives_a_submission(form_id: str, repeat_key: str | None) -> None:
    built = project_forms()[form_id]
    sample = _clean_sample(form_id, 60, seed=21)

    def complete(s: dict) -> bool:
        has_repeat = repeat_key is None or len(s.get(repeat_key, [])) >= 3
        multiple = any(f.xlsform_type == "select_multiple" and f.kobo_key in s for f in built.dictionary.fields())
        wants_multiple = any(f.xlsform_type == "select_multiple" for f in built.dictionary.fields())
        return has_repeat and (multiple or not wants_multiple) and any(k.endswith("village") for k in s)

    submission = next(s for s in sample if complete(s))
    [result] = fill_forms(built.xform, [_answers(submission)], language=FRENCH)
    assert result.ok, (result.violations, result.errors)
    xml = result.submission_xml
    assert f'id="{form_id}"' in xml and f'version="{built.version}"' in xml
    assert re.search(r"<instanceID>uuid:[0-9a-f-]{36}</instanceID>", xml)
    village = next(v for k, v in submission.items() if k.endswith("/village"))
    assert f"<village>{village}</village>" in xml
    if repeat_key:
        assert xml.count(f"<{repeat_key}>") == len(submission[repeat_key])


@pytest.mark.parametrize("form_id, path, bad_value, french", [
    ("household_survey", ("members", 1, "members/member_age"), "150", "L'âge doit être entre 0 et 110 ans"),
    ("training_attendance", ("participants", 0, "participants/post_test_score"), "25", "La note est entre 0 et 20"),
    ("water_point_inspection", (None, None, "status/users_per_day"), "9000", "Entre 0 et 5 000 usagers"),
])
def test_constraint_violation_is_reported_in_french(form_id: str, path: tuple, bad_value: str, french: str) -> None:
    built = project_forms()[form_id]
    submission = copy.deepcopy(next(s for s in _clean_sample(form_id, 40, seed=22)
                                    if path[0] is None or len(s.get(path[0], [])) > path[1]))
    repeat, index, key = path
    (submission[repeat][index] if repeat else submission)[key] = bad_value
    [result] = fill_forms(built.xform, [_answers(submission)], language=FRENCH)
    assert not result.ok
    assert [(v["kind"], v["message"]) for v in result.violations] == [("constraint", french)]


@pytest.mark.parametrize("form_id", FORM_IDS)
def test_generated_submissions_are_what_collect_could_produce(form_id: str) -> None:
    """A sample from the generator (2% mistakes on purpose): every submission our validation
    passes is accepted by the engine; every constraint or required mistake is caught by it."""
    built = project_forms()[form_id]
    dictionary = built.dictionary
    sample = generate_submissions(dictionary, DEPLOYMENT, 60, seed=23, mistake_rate=0.15)
    batch = type_submissions(dictionary, sample)
    issues = batch.issues + FormValidator(dictionary).validate(batch.tables)
    flagged: dict[str, set[str]] = {}
    for issue in issues:
        flagged.setdefault(issue.root_uuid, set()).add(issue.check_code)
    results = fill_forms(built.xform, [_answers(s) for s in sample], language=FRENCH)
    assert len(results) == len(sample)
    checked_mistakes = 0
    for submission, result in zip(sample, results):
        codes = flagged.get(submission["meta/rootUuid"], set())
        if not codes:
            assert result.ok, (submission["_id"], result.violations, result.errors)
        elif codes & {"constraint", "required"}:
            checked_mistakes += 1
            assert {v["kind"] for v in result.violations} & {"constraint", "required"}
    assert checked_mistakes > 0
