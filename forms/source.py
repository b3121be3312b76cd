"""Reading the diffable text source of a form: XLSForm sheets written as markdown tables
(the format pyxform's own tests use), with the shared administrative units merged
into the choices sheet.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from forms.errors import FormError

FORMS_DIR = Path(__file__).resolve().parent
SOURCES_DIR = FORMS_DIR / "sources"
ADMIN_UNITS_CSV = FORMS_DIR / "admin_units.csv"
ADMIN_LEVELS = ("region", "cercle", "commune", "village")


@dataclass
class Sheet:
    name: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int] = field(default_factory=list)  # a markdown source's line of each row (none for .xlsx)

    def records(self) -> list[dict[str, str]]:
        return [{h: v for h, v in zip(self.header, row) if v} for row in self.rows]


@dataclass
class FormSource:
    path: Path
    sheets: dict[str, Sheet]

    @property
    def form_id(self) -> str:
        settings = self.sheets.get("settings")
        if settings and settings.records() and settings.records()[0].get("form_id"):
            return settings.records()[0]["form_id"]
        return self.path.stem


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:]
    if inner.endswith("|"):
        inner = inner[:-1]
    return [cell.strip().replace(r"\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def read_markdown_sheets(text: str, origin: str = "form") -> dict[str, Sheet]:
    """Parses ``| sheet |`` blocks; the first cell of a row names a new sheet, the
    following rows hold the header then the data, as in pyxform's markdown format."""
    sheets: dict[str, Sheet] = {}
    current: Sheet | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip().startswith("|"):
            continue
        cells = _cells(line)
        if all(re.fullmatch(r":?-*:?", c) for c in cells):
            continue
        if cells[0]:
            current = Sheet(name=cells[0].lower(), header=[], rows=[])
            sheets[current.name] = current
            if any(cells[1:]):
                current.header = cells[1:]
            continue
        if current is None:
            raise FormError(f"{origin}, ligne {number} : une ligne de tableau vient avant tout nom de feuille",
                            f"{origin}, line {number}: a table row comes before any sheet name")
        if not current.header:
            current.header = cells[1:]
        elif any(cells[1:]):
            current.rows.append(cells[1:] + [""] * (len(current.header) - len(cells[1:])))
            current.lines.append(number)
    return sheets


def read_xlsx_sheets(path: Path) -> dict[str, Sheet]:
    """The sheets of an XLSForm workbook (.xlsx), as the markdown source gives them: a
    partner's form is checked and built like our own."""
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except OSError as error:
        raise FormError(f"impossible de lire le formulaire {path} : {error.strerror or error}",
                        f"cannot read the form {path}: {error.strerror or error}") from error
    except Exception as error:  # noqa: BLE001 - openpyxl's many ways of saying "not a workbook"
        raise FormError(f"{path.name} n'est pas un classeur XLSForm lisible : {error}",
                        f"{path.name} is not an XLSForm workbook that can be read: {error}") from None

    def text(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).strip()

    sheets: dict[str, Sheet] = {}
    for worksheet in workbook.worksheets:
        rows = [[text(v) for v in row] for row in worksheet.iter_rows(values_only=True)]
        rows = [row for row in rows if any(row)]
        if rows:
            header, width = rows[0], len(rows[0])
            sheets[worksheet.title.strip().lower()] = Sheet(
                name=worksheet.title.strip().lower(), header=header,
                rows=[(row + [""] * width)[:width] for row in rows[1:]])
    workbook.close()
    return sheets


def read_admin_units(path: Path = ADMIN_UNITS_CSV) -> list[dict[str, str]]:
    """The units, each with its ``line`` in the file (blank lines counted)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return [{**unit, "line": str(reader.line_num)} for unit in reader]


def admin_unit_choices(units: list[dict[str, str]], origin: str = ADMIN_UNITS_CSV.name) -> list[dict[str, str]]:
    """One choice per unit and level, each filtered on its parent level (for choice_filter).
    A code names one unit: the same village code under two communes would leave one of
    them out of its commune's list (an enumerator there could not finish the form), and
    merge two villages in the warehouse; it is refused, with the rows to fix."""
    choices: list[dict[str, str]] = []
    seen: dict[tuple[str, str], tuple[str, str]] = {}  # (level, code) -> (parent code, CSV line)
    for number, unit in enumerate(units, start=2):
        line = unit.get("line", str(number))
        for depth, level in enumerate(ADMIN_LEVELS):
            parent = ADMIN_LEVELS[depth - 1] if depth else None
            key, parent_code = (level, unit[level]), unit[parent] if parent else ""
            if not unit[level].strip():
                raise FormError(f"{origin}, ligne {line} : le code {level} est vide ; chaque unité a besoin d'un code",
                                f"{origin}, line {line}: the {level} code is empty; every unit needs a code")
            if key in seen:
                first_parent, first_line = seen[key]
                if first_parent != parent_code:
                    raise FormError(
                        f"{origin}, ligne {line} : le code {level} '{unit[level]}' est déjà celui d'un "
                        f"{level} de {parent} '{first_parent}' (ligne {first_line}) ; donnez-lui un code à lui, par "
                        f"exemple '{unit[level]}_{parent_code}'",
                        f"{origin}, line {line}: the {level} code '{unit[level]}' is already a {level} "
                        f"of {parent} '{first_parent}' (line {first_line}); give it a code of its own, e.g. "
                        f"'{unit[level]}_{parent_code}'")
                continue
            seen[key] = (parent_code, line)
            choice = {"list_name": level, "name": unit[level], "label": unit[f"{level}_label"]}
            if parent:
                choice[parent] = parent_code
            choices.append(choice)
    return choices


def load_source(path: Path, admin_units: Path = ADMIN_UNITS_CSV) -> FormSource:
    """Reads a form's markdown source; if it uses the administrative cascade, appends
    the units from the shared CSV so every form offers the same, extendable list."""
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        sheets = read_xlsx_sheets(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise FormError(f"impossible de lire la source du formulaire {path} : {error.strerror}",
                            f"cannot read the form source {path}: {error.strerror}") from error
        except UnicodeDecodeError:
            raise FormError(f"{path.name} n'est ni une source de formulaire markdown (texte UTF-8), ni un XLSForm (.xlsx)",
                            f"{path.name} is not a markdown form source (UTF-8 text), nor an XLSForm (.xlsx)") from None
        sheets = read_markdown_sheets(text, origin=path.name)
    if "survey" not in sheets:
        raise FormError(f"{path.name} : aucune feuille 'survey'", f"{path.name}: no 'survey' sheet found")
    survey_types = {r.get("type", "") for r in sheets["survey"].records()}
    uses_admin = any(t.split()[-1] in ADMIN_LEVELS for t in survey_types if t.startswith("select_one "))
    if uses_admin and path.suffix.lower() == ".md":  # a workbook carries its own choices
        choices = sheets.setdefault("choices", Sheet("choices", ["list_name", "name", "label"], []))
        label_columns = [h for h in choices.header if h == "label" or h.startswith("label::")]
        for level in ADMIN_LEVELS[:-1]:
            if level not in choices.header:
                choices.header.append(level)
                for row in choices.rows:
                    row.append("")
        for choice in admin_unit_choices(read_admin_units(admin_units), admin_units.name):
            row = []
            for column in choices.header:
                row.append(choice["label"] if column in label_columns else choice.get(column, ""))
            choices.rows.append(row)
    return FormSource(path=path, sheets=sheets)


def source_paths(directory: Path = SOURCES_DIR) -> list[Path]:
    return sorted(directory.glob("*.md"))
