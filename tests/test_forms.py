"""forms/: the markdown source builds into an .xlsx, an XForm and a field dictionary."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import openpyxl
import pytest

from forms.build import build_form, write_build
from forms.dictionary import MAX_COLUMN_LENGTH, build_dictionary
from forms.errors import FormError
from forms.expressions import TODAY, date_bounds, evaluate, is_true, numeric_bounds
from forms.source import SOURCES_DIR, read_admin_units
from pyxform.xls2xform import convert


def test_build_writes_xlsx_xform_and_dictionary(household, tmp_path: Path) -> None:
    xlsx, xform, dictionary = write_build(household, tmp_path)
    workbook = openpyxl.load_workbook(xlsx)
    assert workbook.sheetnames == ["survey", "choices", "settings"]
    header = [c.value for c in workbook["survey"][1]]
    assert "label::Français (fr)" in header and "label::English (en)" in header
    # Expressions are stored as text, never turned into spreadsheet formulas.
    relevant = [row[header.index("relevant")].value for row in workbook["survey"].iter_rows(min_row=2)]
    assert "${consent} = 'yes'" in relevant
    assert all(cell.data_type != "f" for row in workbook["survey"].iter_rows() for cell in row)
    text = xform.read_text(encoding="utf-8")
    assert 'id="household_survey"' in text and 'version="2026112401"' in text
    assert '<translation lang="Français (fr)" default="true()">' in text and 'lang="English (en)"' in text
    saved = json.loads(dictionary.read_text(encoding="utf-8"))
    assert saved["form_id"] == "household_survey"
    assert set(saved["tables"]) == {"households", "household_members"}


def test_xform_is_compiled_from_the_written_xlsx(household, tmp_path: Path) -> None:
    """What a data manager uploads (.xlsx) compiles to exactly our XForm."""
    path = tmp_path / "household_survey.xlsx"
    path.write_bytes(household.xlsx)
    again = convert(str(path), form_name="household_survey", pretty_print=True)
    assert again.xform == household.xform


def test_dictionary_describes_tables_types_and_labels(household) -> None:
    d = household.dictionary
    assert d.languages == ["Français (fr)", "English (en)"]
    members = d.tables["household_members"]
    assert members.parent == "households" and members.repeat_key == "members"
    age = d.field_by_name("member_age")
    assert (age.table, age.kobo_key, age.duckdb_type, age.required) == ("household_members", "members/member_age", "BIGINT", True)
    assert age.labels == {"Français (fr)": "Âge (années révolues)", "English (en)": "Age (completed years)"}
    assert numeric_bounds(age.constraint) == (0.0, 110.0, True, True)
    location = d.field_by_name("location")
    assert [c for c, _ in location.columns()] == ["location_latitude", "location_longitude", "location_altitude", "location_accuracy"]
    activities = d.field_by_name("income_activities")
    assert activities.columns()[:3] == [("income_activities", "VARCHAR[]"), ("income_activities_raw", "VARCHAR"),
                                        ("income_activities__farming", "BOOLEAN")]
    assert len(activities.columns()) == 2 + len(d.choices["activity"])
    assert activities.kobo_key == "livelihood/income_activities"
    # Group relevance is inherited by the questions inside the group.
    assert "${consent} = 'yes'" in d.field_by_name("head_name").relevant
    assert d.field_by_name("head_name").pii and not d.field_by_name("head_age").pii
    # The administrative cascade comes from the shared CSV, with its filter columns.
    units = read_admin_units()
    assert len(d.choices["village"]) == len({u["village"] for u in units})
    assert d.choices["cercle"][0].filters == {"region": "sikasso"}


def test_forms_diff_sees_every_change_a_data_manager_makes(tmp_path: Path) -> None:
    """A relabelled choice, a new constraint message, a changed choice filter, a question
    no longer marked personal: "Aucune différence" was printed for each."""
    from forms.build import build_form
    from forms.diff import diff_dictionaries

    def form(version: str, **changes: str) -> Path:
        text = f"""
| survey |
| | type | name | label::Français (fr) | label::English (en) | constraint | constraint_message::Français (fr) | constraint_message::English (en) | choice_filter | terrain_pii |
| | select_one place | place | Lieu | Place | | | | | |
| | select_one spot | spot | Point | Spot | | | | {changes.get("filter", "place=${place}")} | |
| | integer | age | Âge | Age | . < 120 | {changes.get("message", "Trop âgé")} | Too old | | |
| | text | name | Nom | Name | | | | | {changes.get("pii", "yes")} |

| choices |
| | list_name | name | label::Français (fr) | label::English (en) | place |
| | place | north | {changes.get("north", "Nord")} | North | |
| | spot | well | Puits | Well | north |

| settings |
| | form_id | version | default_language |
| | tiny | {version} | Français (fr) |
"""
        path = tmp_path / version / "tiny.md"
        path.parent.mkdir()
        path.write_text(text, encoding="utf-8")
        return path

    old = build_form(form("2026010101")).dictionary
    same = build_form(form("2026010102")).dictionary
    assert diff_dictionaries(old, same) == []
    new = build_form(form("2026010103", north="Nord du cercle", message="Âge trop grand", filter="place=${place} or true()",
                          pii="")).dictionary
    lines = diff_dictionaries(old, new)
    assert len(lines) == 4, lines
    assert any(line.startswith("~ choix north de la liste place : libellé / label : ") and "Nord du cercle" in line
               for line in lines)
    assert any(line.startswith("~ question age : message de contrainte / constraint message : ") and
               "Âge trop grand" in line for line in lines)
    assert any(line.startswith("~ question spot : filtre de choix / choice filter : ") for line in lines)
    assert "~ question name : donnée personnelle / personal data : oui / yes -> non / no" in lines


def test_a_village_code_used_under_two_communes_is_refused_with_its_lines(tmp_path: Path) -> None:
    """Village names repeat across Mali; a row added with a code another commune's village
    has left the new commune's list empty (its enumerators could not finish a form) and
    would merge two villages in the warehouse. `forms check` names both lines."""
    from forms.check import check_source
    from forms.source import ADMIN_UNITS_CSV, load_source

    rows = ADMIN_UNITS_CSV.read_text(encoding="utf-8").splitlines()
    kafana = next(i for i, row in enumerate(rows) if ",kafana," in row) + 1
    units = tmp_path / "admin_units.csv"
    added = "sikasso,Sikasso,sikasso,Sikasso,kapala,Kapala,kafana,Kafana,11.2,-5.9"
    units.write_text("\n".join(rows + ["", added]) + "\n", encoding="utf-8")  # a blank line before it counts
    with pytest.raises(FormError) as refused:
        load_source(SOURCES_DIR / "household_survey.md", admin_units=units)
    assert (f"admin_units.csv, line {len(rows) + 2}: the village code 'kafana' is already a village of commune "
            f"'dembela' (line {kafana}); give it a code of its own, e.g. 'kafana_kapala'") == refused.value.en
    assert "admin_units.csv, ligne" in refused.value.fr
    units.write_text("\n".join(rows + [added.replace(",kafana,", ",,")]) + "\n", encoding="utf-8")
    with pytest.raises(FormError, match=f"line {len(rows) + 1}: the village code is empty"):
        load_source(SOURCES_DIR / "household_survey.md", admin_units=units)
    assert [p.code for p in check_source(SOURCES_DIR / "household_survey.md")] == []  # the project's own list is fine


def test_column_names_are_unique_short_and_deterministic(tmp_path: Path) -> None:
    source = """
| survey |
| | type | name | label |
| | begin_group | a | A |
| | integer | size | Size |
| | end_group | | |
| | begin_group | b | B |
| | integer | size | Size again |
| | end_group | | |
| | text | Root_UUID | Clashes with a system column |
| | text | aVeryLongQuestionNameThatGoesOnAndOnBeyondWhatPostgresAndStataAccept | Long |
| settings |
| | form_id |
| | clash_test |
"""
    path = tmp_path / "clash.md"
    path.write_text(source, encoding="utf-8")
    compiled = convert(str(path))._pyxform
    first, second = build_dictionary(compiled), build_dictionary(compiled)
    columns = [f.column for f in first.main_table.fields]
    assert columns == [f.column for f in second.main_table.fields]
    assert columns[:3] == ["size", "b_size", "root_uuid_2"]
    assert len(set(columns)) == len(columns)
    assert all(len(c) <= MAX_COLUMN_LENGTH for c in columns)


def test_broken_form_gives_a_form_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.md"
    path.write_text("| survey |\n| | type | name | label |\n| | select_one nolist | q | Q |\n", encoding="utf-8")
    with pytest.raises(FormError, match="broken.md"):
        build_form(path)


def test_every_source_builds_without_warnings() -> None:
    for path in sorted(SOURCES_DIR.glob("*.md")):
        assert build_form(path).warnings == []


@pytest.mark.parametrize("expression, answers, expected", [
    ("${consent} = 'yes'", {"consent": "yes"}, True),
    ("${consent} = 'yes'", {}, False),
    ("${age} >= 6 and ${age} <= 16", {"age": "12"}, True),
    ("${age} >= 6 and ${age} <= 16", {"age": "17"}, False),
    ("${age} >= 6 and ${age} <= 16", {}, False),
    ("selected(${acts}, 'other')", {"acts": "farming other"}, True),
    ("not(selected(${acts}, 'other'))", {"acts": "farming"}, True),
    ("${src} != 'piped' or ${n} > 2 * 3", {"src": "piped", "n": "7"}, True),
    ("regex(${id}, '^[A-Z]{3}-[0-9]{4}$')", {"id": "SIK-0042"}, True),
])
def test_expressions(expression: str, answers: dict, expected: bool) -> None:
    assert is_true(expression, answers.get) is expected


@pytest.mark.parametrize("expression, current, expected", [
    (". <= today()", dt.datetime.now(dt.timezone.utc).date().isoformat(), True),
    (". <= today()", "2999-01-01", False),
    (". >= date('2020-01-01') and . <= today()", "2019-12-31", False),
    (". >= date('2020-01-01') and . <= today()", "2020-01-01", True),
    (". > date('2020-01-01')", "2020-01-01", False),
    (". > date('2020-01-01')", "2020-01-01T08:00:00.000+00:00", True),  # a dateTime is past midnight
    (". < date('2020-01-10')", "2020-01-09", True),  # as dates, not as text or numbers
    (". = date('2020-01-01')", "2020-01-01", True),
    (". != ''", "2020-01-01", True),
    (". >= 10", "9", False),  # numbers still compare as numbers
])
def test_date_expressions(expression: str, current: str, expected: bool) -> None:
    assert is_true(expression, {}.get, current=current) is expected


def test_date_bounds() -> None:
    assert date_bounds(". <= today()") == (None, TODAY, True, True)
    assert date_bounds(". >= date('2020-01-01') and . < today()") == (dt.date(2020, 1, 1), TODAY, True, False)
    assert date_bounds('. > date("2024-02-29")') == (dt.date(2024, 2, 29), None, False, True)
    for other in (". > ${start_date}", ". >= 0 and . <= 110", ". <= date('2024-02-30')", ". <= today() or . = ''", None):
        assert date_bounds(other) is None
    assert numeric_bounds(". <= today()") is None


def test_choice_filter_reads_choice_columns() -> None:
    assert is_true("region=${region}", {"region": "gao"}.get, choice={"region": "gao"})
    assert not is_true("region=${region}", {"region": "gao"}.get, choice={"region": "mopti"})
    assert evaluate("string-length(.)", {}.get, current="abcd") == 4


def test_unsupported_expression_is_reported() -> None:
    with pytest.raises(FormError, match="not supported"):
        is_true("pulldata('x', 'y', 'z', ${a})", {}.get)


def test_every_form_change_raised_its_version() -> None:
    """forms/versions.json records each form's version with a fingerprint of its source:
    a change without a higher version fails here (and in `terrain forms build`)."""
    from forms.build import project_forms, recorded_versions, source_fingerprint, version_problem

    recorded = recorded_versions()
    for built in project_forms().values():
        assert version_problem(built, recorded) is None
        assert recorded[built.form_id] == {"version": built.version, "fingerprint": source_fingerprint(built)}, (
            f"run `terrain forms build` to record {built.form_id} version {built.version}")


def test_a_change_without_a_new_version_is_refused(household, tmp_path: Path) -> None:
    from forms.build import recorded_versions, version_problem

    changed = tmp_path / "household_survey.md"
    changed.write_text(household.source.path.read_text(encoding="utf-8").replace(
        "Photo de la concession", "Photo de la maison"), encoding="utf-8")
    problem = version_problem(build_form(changed), recorded_versions())
    assert problem is not None and "raise 'version'" in str(problem)
    bumped = tmp_path / "bumped" / "household_survey.md"
    bumped.parent.mkdir()
    bumped.write_text(changed.read_text(encoding="utf-8").replace("| household_survey | 2026112401 |",
                                                                   "| household_survey | 2026112402 |"), encoding="utf-8")
    assert version_problem(build_form(bumped), recorded_versions()) is None
