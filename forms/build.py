"""Building a form: source -> .xlsx (xlsxwriter) -> XForm (pyxform) -> field dictionary.

The XForm is compiled from the very .xlsx we write, so what a data manager uploads to
KoboToolbox is exactly what was compiled and described in the dictionary.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import xlsxwriter
from pyxform.errors import PyXFormError
from pyxform.xls2xform import convert

from forms.dictionary import FieldDictionary, build_dictionary
from forms.errors import FormError
from forms.source import FORMS_DIR, FormSource, load_source, source_paths

BUILD_DIR = FORMS_DIR / "build"
SHEET_ORDER = ("survey", "choices", "settings")


@dataclass
class BuiltForm:
    form_id: str
    version: str
    source: FormSource
    xlsx: bytes
    xform: str
    dictionary: FieldDictionary
    warnings: list[str] = field(default_factory=list)


def write_xlsx(source: FormSource) -> bytes:
    """Writes the sheets as an XLSForm workbook. Every cell is written as text so that
    expressions such as ``=`` comparisons never become spreadsheet formulas."""
    buffer = io.BytesIO()
    workbook = xlsxwriter.Workbook(buffer, {"in_memory": True, "strings_to_formulas": False,
                                            "strings_to_numbers": False, "strings_to_urls": False})
    bold = workbook.add_format({"bold": True})
    names = [n for n in SHEET_ORDER if n in source.sheets] + [n for n in source.sheets if n not in SHEET_ORDER]
    for name in names:
        sheet = source.sheets[name]
        worksheet = workbook.add_worksheet(name)
        worksheet.write_row(0, 0, sheet.header, bold)
        for row_number, row in enumerate(sheet.rows, start=1):
            for column_number, value in enumerate(row):
                if value:
                    worksheet.write_string(row_number, column_number, value)
        worksheet.freeze_panes(1, 0)
    workbook.close()
    return buffer.getvalue()


def compile_xlsx(xlsx: bytes, form_id: str, origin: str) -> tuple[str, dict, list[str]]:
    """Compiles an XLSForm workbook with pyxform; returns the XForm, the compiled survey and warnings."""
    warnings: list[str] = []
    try:
        result = convert(io.BytesIO(xlsx), warnings=warnings, file_type=".xlsx", form_name=form_id,
                         pretty_print=True)
    except PyXFormError as error:
        raise FormError(f"{origin} : pyxform refuse le formulaire : {error}", f"{origin}: {error}") from error
    return result.xform, result._pyxform, warnings


def build_form(path: Path) -> BuiltForm:
    """Builds one form in memory (no files written)."""
    source = load_source(path)
    xlsx = write_xlsx(source)
    xform, compiled, warnings = compile_xlsx(xlsx, source.form_id, path.name)
    dictionary = build_dictionary(compiled)
    return BuiltForm(form_id=dictionary.form_id, version=dictionary.version, source=source, xlsx=xlsx,
                     xform=xform, dictionary=dictionary, warnings=warnings)


def write_build(built: BuiltForm, out_dir: Path = BUILD_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{built.form_id}.xlsx", out_dir / f"{built.form_id}.xml",
             out_dir / f"{built.form_id}.dictionary.json"]
    paths[0].write_bytes(built.xlsx)
    paths[1].write_text(built.xform, encoding="utf-8")
    paths[2].write_text(built.dictionary.to_json(), encoding="utf-8")
    return paths


@lru_cache(maxsize=None)
def project_forms() -> dict[str, BuiltForm]:
    """Our own forms (forms/sources/*.md), built once per process, by form_id."""
    return {built.form_id: built for built in (build_form(p) for p in source_paths())}


def reserved_tables(form_id: str) -> set[str]:
    """The tables of our own forms other than ``form_id``: the marts and the README's
    queries read them, so a project of another form synced first must not take them.
    None for one of our own forms (theirs differ by construction), told by its source's
    file name without compiling anything: a sync pays for it only on another form."""
    if form_id in {path.stem for path in source_paths()}:
        return set()
    return {name for built in project_forms().values() if built.form_id != form_id for name in built.dictionary.tables}


def project_form(form_id: str) -> BuiltForm:
    forms = project_forms()
    if form_id not in forms:
        raise FormError(f"pas de formulaire '{form_id}' dans forms/sources (connus : {', '.join(sorted(forms))})",
                        f"no form '{form_id}' in forms/sources (known: {', '.join(sorted(forms))})")
    return forms[form_id]


def dictionary_from_sheets(sheets: dict[str, list[dict[str, str]]], origin: str, form_name: str | None = None) -> FieldDictionary:
    """Compiles XLSForm sheets given as dicts (e.g. from a KoboToolbox asset) into a field dictionary."""
    try:
        result = convert(dict(sheets), form_name=form_name)
    except PyXFormError as error:
        raise FormError(f"{origin} : pyxform refuse le formulaire : {error}", f"{origin}: {error}") from error
    return build_dictionary(result._pyxform)


VERSIONS_FILE = FORMS_DIR / "versions.json"


def source_fingerprint(built: BuiltForm) -> str:
    """A hash of everything that makes up the form: its source and the admin units."""
    from hashlib import sha256

    from forms.source import ADMIN_UNITS_CSV

    digest = sha256(built.source.path.read_bytes())
    digest.update(ADMIN_UNITS_CSV.read_bytes())
    return digest.hexdigest()


def recorded_versions(path: Path = VERSIONS_FILE) -> dict[str, dict[str, str]]:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def version_problem(built: BuiltForm, recorded: dict[str, dict[str, str]]) -> FormError | None:
    """Every change to a form must raise its settings version (ODK Collect and KoboToolbox
    tell form versions apart by it); None when the form is consistent with the record."""
    previous = recorded.get(built.form_id)
    if previous is None:
        return None
    fingerprint = source_fingerprint(built)
    if fingerprint == previous["fingerprint"]:
        if built.version != previous["version"]:
            return FormError(f"{built.form_id} : la version est passée de {previous['version']} à {built.version} "
                             f"mais le formulaire n'a pas changé ; lancez `terrain forms build` pour l'enregistrer",
                             f"{built.form_id}: version changed from {previous['version']} to {built.version} "
                             f"but the form did not; run `terrain forms build` to record it")
        return None
    if not built.version.isdigit() or not previous["version"].isdigit() or int(built.version) <= int(previous["version"]):
        higher = int(previous["version"]) + 1 if previous["version"].isdigit() else None
        return FormError(f"{built.form_id} : le formulaire a changé depuis l'enregistrement de la version "
                         f"{previous['version']} ; augmentez 'version' dans sa feuille settings (par exemple à "
                         f"{higher or 'un nombre plus grand'})",
                         f"{built.form_id}: the form changed since version {previous['version']} was recorded; "
                         f"raise 'version' in its settings sheet (e.g. to {higher or 'a higher number'})")
    return None


def version_problems(forms: list[BuiltForm]) -> list[FormError]:
    """version_problem of each form against the record (forms/versions.json)."""
    recorded = recorded_versions()
    return [problem for problem in (version_problem(built, recorded) for built in forms) if problem]


def record_versions(forms: list[BuiltForm], path: Path = VERSIONS_FILE) -> None:
    import json

    recorded = recorded_versions(path)
    for built in forms:
        recorded[built.form_id] = {"version": built.version, "fingerprint": source_fingerprint(built)}
    path.write_text(json.dumps(dict(sorted(recorded.items())), indent=2) + "\n", encoding="utf-8")
