"""forms/check.py: each broken form gives one catalogue message placed by form, sheet,
row and column (as Excel shows the built .xlsx), and `terrain forms check` fails on it.

The broken forms are written inline as markdown tables, as in pyxform's own tests.
Row numbers count the header as row 1, so the first question is on row 2.
"""

from __future__ import annotations

import io
import string
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest

from forms.build import write_xlsx
from forms.check import CATALOGUE, Problem, check_all, check_source, run_check
from forms.source import SOURCES_DIR, load_source, source_paths

ROOT = Path(__file__).resolve().parents[1]

CHOICES = """
| choices |
| | list_name | name | label::Français (fr) | label::English (en) |
| | yes_no | yes | Oui | Yes |
| | yes_no | no | Non | No |
"""
SETTINGS = """
| settings |
| | form_id | version | default_language |
| | broken | 2026010101 | Français (fr) |
"""


def write_form(tmp_path: Path, survey: str, choices: str = CHOICES, settings: str = SETTINGS) -> Path:
    path = tmp_path / "broken.md"
    path.write_text(survey + choices + settings, encoding="utf-8")
    return path


def reported(path: Path, code: str, sheet: str | None, row: int | None, column: str | None) -> Problem:
    """The form has exactly this one problem; run_check prints it and fails on errors only."""
    problems = check_source(path)
    assert [(p.code, p.sheet, p.row, p.column) for p in problems] == [(code, sheet, row, column)], problems
    out = io.StringIO()
    assert run_check([path], out=out) == (1 if CATALOGUE[code].severity == "error" else 0)
    printed = out.getvalue()
    where = "broken.md"
    if row and path.suffix == ".md":  # the markdown line of the row, as editors show it
        line = problems[0].line
        assert line and path.read_text(encoding="utf-8").splitlines()[line - 1].lstrip().startswith("|")
        where = f"broken.md:{line}"
    place = [f"{label} {value}" for label, value in (("sheet", sheet), ("row", row), ("column", column)) if value]
    assert ", ".join([where] + place) + f": [{code}" in printed
    assert str(problems[0]) in printed
    french = [f"{label} {value}" for label, value in (("feuille", sheet), ("ligne", row), ("colonne", column)) if value]
    assert ", ".join([where] + french) + f" : [{code}" in printed  # French first, English beneath
    assert problems[0].message_fr and printed.index(problems[0].message_fr) < printed.index(problems[0].message)
    return problems[0]


def test_a_well_formed_form_has_no_problem(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | select_one yes_no | consent | Accord ? | Consent? | |
| | integer | age | Âge | Age | ${consent} = 'yes' |
""")
    assert check_source(path) == []
    out = io.StringIO()
    assert run_check([path], out=out) == 0
    assert out.getvalue() == "1 formulaire vérifié : 0 erreur, 0 avertissement. / Checked 1 form: 0 errors, 0 warnings.\n"


def test_problem_reads_as_form_sheet_row_column_code_message() -> None:
    problem = Problem("TF101", "error", "household_survey.md", "survey", 12, "relevant", "Cannot be read.")
    assert str(problem) == "household_survey.md, sheet survey, row 12, column relevant: [TF101] Cannot be read."
    warning = Problem("TF207", "warning", "f.md", "settings", 2, "version", "Not dated.")
    assert str(warning) == "f.md, sheet settings, row 2, column version: [TF207 warning] Not dated."


# --- broken forms (TF1xx) ---------------------------------------------------------------

def test_TF101_expression_that_cannot_be_read(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | integer | age | Âge | Age | |
| | text | school | École | School | (${age} >= 6 and ${age} <= 16 |
""")
    problem = reported(path, "TF101", "survey", 3, "relevant")
    assert "`(${age} >= 6 and ${age} <= 16`" in problem.message
    assert "closing bracket" in problem.message


@pytest.mark.parametrize("expression", ["${age} >", "${age} == 3", "${age} > 1)", "${age} = 'yes", "${age > 1"])
def test_TF101_dangling_operators_signs_quotes_and_brackets(tmp_path: Path, expression: str) -> None:
    path = write_form(tmp_path, f"""
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | integer | age | Âge | Age | |
| | text | note_age | Note | Note | {expression} |
""")
    reported(path, "TF101", "survey", 3, "relevant")


def test_row_numbers_are_those_of_the_built_xlsx(tmp_path: Path) -> None:
    """A data manager opening the .xlsx in Excel finds the expression at the row and column given."""
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | integer | age | Âge | Age | |
| | begin_group | school | École | School | |
| | text | school_name | Nom de l'école | School name | ${age} >= 6 and |
| | end_group | | | | |
""")
    [problem] = check_source(path)
    sheet = openpyxl.load_workbook(io.BytesIO(write_xlsx(load_source(path))))[problem.sheet]
    header = [cell.value for cell in sheet[1]]
    assert sheet.cell(problem.row, header.index(problem.column) + 1).value == "${age} >= 6 and"


def test_TF102_unknown_reference(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | integer | household_size | Taille | Size | |
| | integer | children | Enfants | Children | ${houshold_size} > 1 |
""")
    problem = reported(path, "TF102", "survey", 3, "relevant")
    assert "${houshold_size}" in problem.message and "did you mean 'household_size'" in problem.message


def test_TF102_unknown_reference_in_a_label(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | text | head_name | Nom | Name |
| | integer | head_age | Âge de ${head_name} | Age of ${head} |
""")
    reported(path, "TF102", "survey", 3, "label::English (en)")


def test_TF103_choice_list_missing(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | select_one yes_no | consent | Accord ? | Consent? |
| | select_multiple water_source | source | Source | Source |
""")
    problem = reported(path, "TF103", "survey", 3, "type")
    assert "'water_source'" in problem.message


def test_TF104_choice_filter_on_a_missing_column(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | choice_filter |
| | select_one site | site | Site | Site | |
| | select_one plot | plot | Parcelle | Plot | stie=${site} |
""", choices="""
| choices |
| | list_name | name | label::Français (fr) | label::English (en) | site |
| | site | north | Nord | North | |
| | plot | plot_1 | Parcelle 1 | Plot 1 | north |
""")
    problem = reported(path, "TF104", "survey", 3, "choice_filter")
    assert "'stie'" in problem.message and "did you mean 'site'" in problem.message


def test_TF105_duplicate_question_name(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | integer | age | Âge | Age |
| | begin_group | member | Membre | Member |
| | integer | Age | Âge du membre | Member's age |
| | end_group | member | | |
""")
    problem = reported(path, "TF105", "survey", 4, "name")
    assert "row 2" in problem.message


def test_TF106_source_without_survey_sheet(tmp_path: Path) -> None:
    path = write_form(tmp_path, "")
    problem = reported(path, "TF106", None, None, None)
    assert "no 'survey' sheet" in problem.message
    assert problem.message_fr == "La source du formulaire est illisible : aucune feuille 'survey'"


def test_TF107_question_name_without_dollar_braces(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | select_one yes_no | consent | Accord ? | Consent? | |
| | integer | age | Âge | Age | consent = 'yes' |
""")
    problem = reported(path, "TF107", "survey", 3, "relevant")
    assert "${consent}" in problem.message


def test_TF100_what_pyxform_rejects_keeps_its_row(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | integer | age | Âge | Age |
| | text | head name | Nom | Name |
""")
    problem = reported(path, "TF100", "survey", 3, "name")
    assert problem.message.startswith("pyxform cannot compile the form: On the 'survey' sheet")
    assert "[row" not in problem.message


def test_TF100_pyxform_message_without_sheet_is_placed_on_the_survey(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | begin_group | member | Membre | Member |
| | integer | age | Âge | Age |
""")
    problem = reported(path, "TF100", "survey", 2, None)
    assert "Unmatched 'begin_group'" in problem.message


def test_TF110_function_terrain_cannot_evaluate_is_only_a_warning(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant | calculation |
| | date | visit | Date | Date | | |
| | integer | age | Âge | Age | ${visit} < now() | |
| | calculate | year | | | | format-date(today(), '%Y') |
""")
    problem = reported(path, "TF110", "survey", 3, "relevant")
    assert "now()" in problem.message


@pytest.mark.parametrize("expression", ["count(../age) > 0", "position(..) = 1",
                                        "pulldata('prices', 'price', 'item', ${age}) > 0",
                                        "jr:choice-name(${age}, '${age}') != ''"])
def test_valid_xpath_terrain_cannot_evaluate_is_never_an_error(tmp_path: Path, expression: str) -> None:
    path = write_form(tmp_path, f"""
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | integer | age | Âge | Age | |
| | text | remark | Remarque | Remark | {expression} |
""")
    reported(path, "TF110", "survey", 3, "relevant")


def test_TF190_pyxform_warning(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | image::Français (fr) |
| | text | photo_note | Photo | Photo | pump.png |
""")
    problem = reported(path, "TF190", None, None, None)
    assert "English (en)" in problem.message and "image" in problem.message


# --- house rules (TF2xx) ----------------------------------------------------------------

def test_TF201_label_missing_in_a_language(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | integer | age | Âge | |
""")
    problem = reported(path, "TF201", "survey", 2, "label::English (en)")
    assert "given in Français (fr) but not in English (en)" in problem.message


def test_TF201_hint_in_one_language_only_where_the_other_column_is_absent(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | hint::Français (fr) |
| | integer | age | Âge | Age | En années |
""")
    reported(path, "TF201", "survey", 2, "hint::English (en)")


def test_TF201_choice_label_missing_in_a_language(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | select_one yes_no | consent | Accord ? | Consent? |
""", choices="""
| choices |
| | list_name | name | label::Français (fr) | label::English (en) |
| | yes_no | yes | Oui | Yes |
| | yes_no | no | | No |
""")
    reported(path, "TF201", "choices", 3, "label::Français (fr)")


def test_TF202_constraint_without_message(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | constraint |
| | integer | age | Âge | Age | . >= 0 and . <= 110 |
""")
    problem = reported(path, "TF202", "survey", 2, "constraint_message::Français (fr)")
    assert "Français (fr) and English (en)" in problem.message


def test_TF203_question_name_too_long_for_stata(tmp_path: Path) -> None:
    name = "water_trip_minutes_including_the_queue"
    path = write_form(tmp_path, f"""
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | integer | {name} | Minutes | Minutes |
""")
    problem = reported(path, "TF203", "survey", 2, "name")
    assert f"'{name}' has {len(name)} characters" in problem.message and "32" in problem.message


def test_TF203_choice_list_name_too_long_for_stata(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | select_one main_source_of_drinking_water_list | source | Source | Source |
""", choices="""
| choices |
| | list_name | name | label::Français (fr) | label::English (en) |
| | main_source_of_drinking_water_list | well | Puits | Well |
| | main_source_of_drinking_water_list | river | Fleuve | River |
""")
    reported(path, "TF203", "choices", 2, "list_name")


def test_TF204_duplicate_choice_name(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | select_one yes_no | consent | Accord ? | Consent? |
""", choices="""
| choices |
| | list_name | name | label::Français (fr) | label::English (en) |
| | yes_no | yes | Oui | Yes |
| | yes_no | no | Non | No |
| | yes_no | yes | Peut-être | Maybe |
| | other_list | yes | Oui | Yes |
""")
    problem = reported(path, "TF204", "choices", 4, "name")
    assert "row 2" in problem.message


@pytest.mark.parametrize("setting", ["form_id", "version"])
def test_TF205_setting_missing(tmp_path: Path, setting: str) -> None:
    values = {"form_id": "broken", "version": "2026010101"}
    values[setting] = ""
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | integer | age | Âge | Age |
""", settings=f"""
| settings |
| | form_id | version | default_language |
| | {values['form_id']} | {values['version']} | Français (fr) |
""")
    reported(path, "TF205", "settings", 2, setting)


def test_TF205_no_settings_sheet_misses_both(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | integer | age | Âge | Age |
""", settings="")
    assert [(p.code, p.sheet, p.row, p.column) for p in check_source(path)] == [
        ("TF205", "settings", None, "form_id"), ("TF205", "settings", None, "version")]


@pytest.mark.parametrize(("version", "code"), [("v2", "TF206"), ("2026-11-24", "TF206"), ("3", "TF207"),
                                                ("2026133101", "TF207")])
def test_TF206_TF207_version_digits_and_dated(tmp_path: Path, version: str, code: str) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | integer | age | Âge | Age |
""", settings=f"""
| settings |
| | form_id | version |
| | broken | {version} |
""")
    problem = reported(path, code, "settings", 2, "version")
    assert f"'{version}'" in problem.message


# --- our forms, the catalogue, the command ------------------------------------------------

@pytest.mark.parametrize("path", source_paths(), ids=lambda p: p.name)
def test_our_forms_have_no_error(path: Path) -> None:
    assert [str(p) for p in check_source(path) if p.severity == "error"] == []


def test_run_check_defaults_to_our_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(None) == 0
    assert f"Checked {len(source_paths())} form" in capsys.readouterr().out


def test_check_all_reads_a_folder_and_reports_every_problem(tmp_path: Path) -> None:
    write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | select_one yes_no | consent | Accord ? | | ${consnt} = 'yes' |
| | select_one colour | colour | Couleur | Colour | |
""")
    results = check_all([tmp_path])
    assert list(results) == [tmp_path / "broken.md"]
    assert [(p.code, p.row, p.column) for p in results[tmp_path / "broken.md"]] == [
        ("TF201", 2, "label::English (en)"), ("TF102", 2, "relevant"), ("TF103", 3, "type")]
    out = io.StringIO()
    assert run_check([tmp_path], out=out) == 1
    assert out.getvalue().splitlines()[-1] == ("1 formulaire vérifié : 3 erreurs, 0 avertissement. / "
                                               "Checked 1 form: 3 errors, 0 warnings.")


def test_every_catalogue_code_is_well_formed_and_tested() -> None:
    tests = Path(__file__).read_text(encoding="utf-8")
    for code, rule in CATALOGUE.items():
        assert code[:2] == "TF" and code[2:].isdigit() and rule.severity in ("error", "warning"), code
        assert rule.title and rule.fr and rule.en, code
        fields = [{name for _, name, _, _ in string.Formatter().parse(text) if name} for text in (rule.fr, rule.en)]
        assert fields[0] == fields[1], code  # the French and English messages say the same things
        assert f"def test_{code}" in tests or f'"{code}"' in tests.split("# --- our forms")[0], code


def test_TF209_a_personal_mark_terrain_does_not_understand(tmp_path: Path) -> None:
    """terrain_pii "x" (or "personnel") was read as not personal, silently: the names went
    out in clear. "oui" is understood, and on a group marks each of its questions."""
    from forms.build import build_form

    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | terrain_pii |
| | text | head_name | Nom | Name | personnel |
""")
    problem = reported(path, "TF209", "survey", 2, "terrain_pii")
    assert "'personnel' is not understood" in problem.message
    marked = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | terrain_pii |
| | text | head_name | Nom | Name | oui |
| | begin_group | contact | Contact | Contact | yes |
| | text | phone | Téléphone | Phone | |
| | geopoint | home | Position | Position | |
| | end_group | | | | |
| | integer | size | Taille | Size | non |
""")
    assert [p.code for p in check_source(marked)] == []
    personal = {f.name: f.pii for f in build_form(marked).dictionary.fields()}
    assert personal == {"head_name": True, "phone": True, "home": True, "size": False}


def test_TF208_a_changed_form_needs_a_higher_version(tmp_path: Path) -> None:
    """What `terrain forms build` refuses, the check says first: our form changed under
    the version recorded, or a version moved back without a change."""
    source = (SOURCES_DIR / "household_survey.md").read_text(encoding="utf-8")
    changed = tmp_path / "household_survey.md"
    changed.write_text(source.replace("Photo de la concession", "Photo de la maison"), encoding="utf-8")
    [problem] = [p for p in check_source(changed) if p.severity == "error"]
    assert (problem.code, problem.sheet, problem.column) == ("TF208", "settings", "version")
    assert "raise 'version'" in problem.message and "augmentez 'version'" in problem.message_fr
    older = tmp_path / "older" / "household_survey.md"
    older.parent.mkdir()
    older.write_text(source.replace("| household_survey | 2026112401 |", "| household_survey | 2025010101 |"),
                     encoding="utf-8")
    assert [p.code for p in check_source(older) if p.severity == "error"] == ["TF208"]


def test_terrain_forms_check_command(tmp_path: Path) -> None:
    path = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) |
| | select_one yes_no | consent | Accord ? | Consent? |
| | select_one water_source | source | Source | Source |
""")
    result = subprocess.run([sys.executable, "-m", "flows.cli", "forms", "check", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    line = 1 + path.read_text(encoding="utf-8").splitlines().index("| | select_one water_source | source | Source | Source |")
    assert f"broken.md:{line}, feuille survey, ligne 3, colonne type : [TF103]" in result.stdout
    assert f"broken.md:{line}, sheet survey, row 3, column type: [TF103]" in result.stdout
    assert "'water_source'" in result.stdout


def test_an_xlsform_workbook_is_checked_like_a_source(tmp_path: Path) -> None:
    """A partner's XLSForm (.xlsx): the same checks, at the workbook's own rows."""
    source = write_form(tmp_path, """
| survey |
| | type | name | label::Français (fr) | label::English (en) | relevant |
| | integer | household_size | Taille | Size | |
| | integer | children | Enfants | Children | ${houshold_size} > 1 |
""")
    workbook = tmp_path / "partner.xlsx"
    workbook.write_bytes(write_xlsx(load_source(source)))
    problems = check_source(workbook)
    assert [(p.code, p.sheet, p.row, p.column) for p in problems] == [("TF102", "survey", 3, "relevant")]
    not_a_workbook = tmp_path / "notes.xlsx"
    not_a_workbook.write_text("pas un classeur", encoding="utf-8")
    assert [p.code for p in check_source(not_a_workbook)] == ["TF106"]
