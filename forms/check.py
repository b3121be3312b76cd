"""Checking XLSForm sources before anyone uploads them (`terrain forms check`).

pyxform stops at the first problem and speaks in XForm terms; a data manager needs
every problem at once, each placed by form, sheet, row and column as Excel shows
them, in plain words. So we run our own checks on the markdown source first, with a
catalogue of codes modelled on pyxform's ErrorCode, and hand the form to pyxform
only when ours find no error; what pyxform still rejects is reported as TF100.

Codes: TF1xx are broken forms (an expression that cannot be read, an unknown
``${name}``, a missing choice list...); TF2xx are Terrain's house rules (both
languages everywhere, constraint messages, Stata-sized names, unique choice names,
settings). Errors make the check fail; warnings are shown but do not.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, NamedTuple, TextIO

from forms.build import SHEET_ORDER, build_form, recorded_versions, version_problem
from forms.dictionary import NOT_PERSONAL_WORDS, PERSONAL_WORDS
from forms.errors import ExpressionError, FormError
from forms.expressions import FUNCTIONS, Node, parse
from forms.source import FormSource, load_source, source_paths

Severity = Literal["error", "warning"]


class Rule(NamedTuple):
    """One catalogue entry, like pyxform's ``Detail``: a severity, a short title for
    listings, and the message's templates in French and in English, filled with the
    problem's details."""

    severity: Severity
    title: str
    fr: str
    en: str


class Both(NamedTuple):
    """A detail worded in French and in English (the rest, names and numbers, are both)."""

    fr: str
    en: str


CATALOGUE: dict[str, Rule] = {
    # Broken forms: KoboToolbox would refuse them, or they would misbehave in Collect.
    "TF100": Rule("error", "pyxform cannot compile the form",
                  "pyxform ne peut pas compiler le formulaire : {detail}",
                  "pyxform cannot compile the form: {detail}"),
    "TF101": Rule("error", "expression cannot be read",
                  "L'expression `{expression}` est illisible : {reason}. Vérifiez les parenthèses, les guillemets, "
                  "et que chaque opérateur (=, and, +...) a quelque chose de chaque côté.",
                  "The expression `{expression}` cannot be read: {reason}. Check the brackets, the quotes, "
                  "and that every operator (=, and, +...) has something on both sides."),
    "TF102": Rule("error", "unknown ${name} reference",
                  "${{{name}}} désigne une question absente de la feuille survey{suggestion}. "
                  "Corrigez le nom, ou ajoutez la question.",
                  "${{{name}}} refers to a question that is not in the survey sheet{suggestion}. "
                  "Correct the name, or add the question."),
    "TF103": Rule("error", "choice list missing",
                  "La question utilise la liste de choix '{list_name}', absente de la feuille choices{suggestion}. "
                  "Corrigez le nom de la liste, ou ajoutez ses choix à la feuille choices.",
                  "The question uses the choice list '{list_name}', which is not in the choices sheet{suggestion}. "
                  "Correct the list name, or add the list's choices to the choices sheet."),
    "TF104": Rule("error", "choice_filter column missing",
                  "Le choice_filter utilise la colonne '{name}', mais la feuille choices n'a pas cette "
                  "colonne{suggestion}. Ajoutez une colonne '{name}' à la feuille choices, ou corrigez le nom.",
                  "The choice_filter uses the column '{name}', but the choices sheet has no such column{suggestion}. "
                  "Add a '{name}' column to the choices sheet, or correct the name."),
    "TF105": Rule("error", "duplicate question name",
                  "Le nom '{name}' est déjà utilisé à la ligne {first_row}. Chaque question, groupe et répétition "
                  "a besoin de son propre nom (des noms qui ne diffèrent que par les majuscules comptent comme le "
                  "même, comme dans l'entrepôt).",
                  "The name '{name}' is already used on row {first_row}. Every question, group and repeat needs "
                  "its own name (names differing only in capital letters count as the same, as in the warehouse)."),
    "TF106": Rule("error", "form source cannot be read",
                  "La source du formulaire est illisible : {detail}",
                  "The form source cannot be read: {detail}"),
    "TF107": Rule("error", "question name without ${ }",
                  "L'expression `{expression}` utilise '{name}' sans ${{ }} : elle ne désigne donc jamais la "
                  "question (toujours vide). Écrivez ${{{name}}}.",
                  "The expression `{expression}` uses '{name}' without ${{ }}, so it never refers to the question "
                  "(it is always empty). Write ${{{name}}}."),
    "TF110": Rule("warning", "expression Terrain cannot evaluate",
                  "L'expression `{expression}` utilise {features}. KoboToolbox et Collect l'acceptent, mais le "
                  "générateur de données de test et la validation de Terrain ne savent pas l'évaluer et "
                  "s'arrêteront sur ce formulaire.",
                  "The expression `{expression}` uses {features}. KoboToolbox and Collect accept it, but Terrain's "
                  "test-data generator and validation cannot evaluate it and will stop on this form."),
    "TF190": Rule("warning", "pyxform warning",
                  "Avertissement de pyxform : {detail}",
                  "pyxform warns: {detail}"),
    # House rules.
    "TF201": Rule("error", "text missing in a language",
                  "{what} existe en {present} mais pas en {language}. Ajoutez ce texte dans la colonne '{column}'.",
                  "The {what} is given in {present} but not in {language}. Add it in the column '{column}'."),
    "TF202": Rule("error", "constraint without a message",
                  "Cette question a une contrainte mais pas de message de contrainte. Ajoutez-en un en "
                  "{languages}, pour que l'enquêteur sache quoi corriger.",
                  "This question has a constraint but no constraint message. Add one in {languages}, so the "
                  "enumerator knows what to correct."),
    "TF203": Rule("error", "name too long for Stata",
                  "{what} '{name}' a {length} caractères ; Stata en permet au plus {limit}, un export Stata le "
                  "couperait ou le renommerait. Choisissez un nom plus court.",
                  "The {what} '{name}' has {length} characters; Stata allows at most {limit}, so a Stata export "
                  "would cut or rename it. Use a shorter name."),
    "TF204": Rule("error", "duplicate choice name",
                  "Le nom de choix '{name}' est déjà utilisé dans la liste '{list_name}' à la ligne {first_row}. "
                  "Chaque choix d'une liste a besoin de son propre nom.",
                  "The choice name '{name}' is already used in the list '{list_name}' on row {first_row}. "
                  "Each choice of a list needs its own name."),
    "TF205": Rule("error", "setting missing",
                  "La feuille settings n'a pas de {setting}. Ajoutez-le : {why}.",
                  "The settings sheet has no {setting}. Add it: {why}."),
    "TF206": Rule("error", "version is not a number",
                  "La version '{version}' ne doit contenir que des chiffres : aaaammjjNN, la date puis un compteur "
                  "à deux chiffres (par exemple 2026112401).",
                  "The version '{version}' must contain only digits: yyyymmddNN, the date then a two-digit "
                  "counter (e.g. 2026112401)."),
    "TF207": Rule("warning", "version not yyyymmddNN",
                  "La version '{version}' n'est pas de la forme aaaammjjNN (une vraie date puis un compteur à deux "
                  "chiffres, par exemple 2026112401). Les versions doivent toujours augmenter ; la date le rend "
                  "facile à voir.",
                  "The version '{version}' is not in the form yyyymmddNN (a real date then a two-digit counter, "
                  "e.g. 2026112401). Versions must keep increasing; the date makes that easy to see."),
    "TF208": Rule("error", "version not raised for a change",
                  "{detail}",
                  "{detail}"),
    "TF209": Rule("error", "terrain_pii not understood",
                  "La valeur '{value}' de terrain_pii n'est pas comprise : écrivez yes (ou oui) pour une donnée "
                  "qui identifie une personne (sur un groupe : toutes ses questions), ou laissez vide. Sinon la "
                  "donnée sortirait en clair dans les exports.",
                  "The terrain_pii value '{value}' is not understood: write yes (or oui) for data that "
                  "identifies a person (on a group: all its questions), or leave it empty. Otherwise the data "
                  "would leave in clear in the exports."),
}

FIRST_DATA_ROW = 2  # the .xlsx has the header on row 1, as pyxform's "[row : N]" counts
STATA_NAME_LIMIT = 32
TRANSLATED = {"label": Both("Le libellé", "label"), "hint": Both("L'indication", "hint"),
              "guidance_hint": Both("L'indication pour l'enquêteur", "guidance hint"),
              "constraint_message": Both("Le message de contrainte", "constraint message"),
              "required_message": Both("Le message d'obligation", "required message")}
DEFAULT_LANGUAGE = "default"  # pyxform's name for a translatable column without ::language
# Columns holding XPath; the first four are also evaluated by Terrain (forms/expressions.py).
EVALUATED_COLUMNS = ("relevant", "constraint", "required", "choice_filter")
EXPRESSION_COLUMNS = {"survey": EVALUATED_COLUMNS + ("readonly", "calculation", "repeat_count"),
                      "settings": ("instance_name",)}
YES_NO = {"yes", "no", "true", "false"}  # the literal values of required and readonly
SELECT_TYPE = re.compile(r"^(?:select_one|select_multiple|rank)\s+(\S+)")
REFERENCE = re.compile(r"\$\{(?:last-saved#)?([^}]*)\}")
SETTINGS_WHY = {"form_id": Both("KoboToolbox et l'entrepôt connaissent le formulaire par lui",
                                "KoboToolbox and the warehouse know the form by it"),
                "version": Both("chaque nouvel envoi demande une version plus grande, écrite aaaammjjNN (par "
                                "exemple 2026112401)",
                                "each new upload needs a higher version, written yyyymmddNN (e.g. 2026112401)")}


@dataclass(frozen=True)
class Problem:
    """One finding, placed where a data manager can find it in the .xlsx."""

    code: str
    severity: Severity
    form: str
    sheet: str | None
    row: int | None
    column: str | None
    message: str  # in English
    message_fr: str = ""
    line: int | None = None  # in a markdown source, the line of the row (rows count as in the .xlsx)

    def __str__(self) -> str:
        """The French line first (when there is one), then the English one beneath it;
        a markdown source's line as editors show it, ``file.md:20``."""
        def line(words: tuple[str, str, str], warning: str, colon: str, message: str) -> str:
            where = f"{self.form}:{self.line}" if self.line else self.form
            place = [where] + [f"{label} {value}" for label, value in
                               zip(words, (self.sheet, self.row, self.column)) if value]
            tag = self.code if self.severity == "error" else f"{self.code} {warning}"
            return f"{', '.join(place)}{colon} [{tag}] {message}"

        english = line(("sheet", "row", "column"), "warning", ":", self.message)
        if not self.message_fr:
            return english
        return line(("feuille", "ligne", "colonne"), "avertissement", " :", self.message_fr) + "\n    " + english


@dataclass
class _Findings:
    """Collects the problems of one form, filling severity and message from the catalogue."""

    form: str
    problems: list[Problem] = field(default_factory=list)
    source: FormSource | None = None  # once read: a markdown source gives its rows' lines

    def add(self, code: str, sheet: str | None, row: int | None, column: str | None, **details: object) -> None:
        rule = CATALOGUE[code]
        fr = {k: v.fr if isinstance(v, Both) else v for k, v in details.items()}
        en = {k: v.en if isinstance(v, Both) else v for k, v in details.items()}
        self.problems.append(Problem(code, rule.severity, self.form, sheet, row, column,
                                     rule.en.format(sheet=sheet, row=row, column=column, **en),
                                     rule.fr.format(sheet=sheet, row=row, column=column, **fr),
                                     self._line(sheet, row)))

    def _line(self, sheet: str | None, row: int | None) -> int | None:
        found = self.source.sheets.get(sheet or "") if self.source else None
        index = (row or 0) - FIRST_DATA_ROW
        return found.lines[index] if found and 0 <= index < len(found.lines) else None


# --- reading the source ---------------------------------------------------------------

def _rows(source: FormSource, sheet: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Each non-empty row of a sheet with its .xlsx row number."""
    found = source.sheets.get(sheet)
    for index, record in enumerate(found.records() if found else []):
        yield index + FIRST_DATA_ROW, record


def _is_end(record: dict[str, str]) -> bool:
    return record.get("type", "").replace(" ", "_") in ("end_group", "end_repeat")


def _named_rows(source: FormSource) -> Iterator[tuple[int, str]]:
    """Survey rows that define a name (end_group rows may repeat their group's name)."""
    for row, record in _rows(source, "survey"):
        if record.get("name") and not _is_end(record):
            yield row, record["name"]


def _split_column(column: str) -> tuple[str, str]:
    base, _, language = column.partition("::")
    return base.strip(), language.strip() or DEFAULT_LANGUAGE


def _join_column(base: str, language: str) -> str:
    return base if language == DEFAULT_LANGUAGE else f"{base}::{language}"


def _languages(source: FormSource) -> list[str]:
    """The languages of the form's translatable columns, in the order of the columns."""
    languages: list[str] = []
    for sheet in ("survey", "choices"):
        for column in source.sheets[sheet].header if sheet in source.sheets else []:
            base, language = _split_column(column)
            if base in TRANSLATED and language not in languages:
                languages.append(language)
    return languages


def _texts(record: dict[str, str], base: str) -> dict[str, str]:
    """The non-empty texts of one translatable column, by language."""
    return {language: value for column, value in record.items()
            for b, language in [_split_column(column)] if b == base}


def _did_you_mean(word: str, known: Iterable[str]) -> Both:
    close = difflib.get_close_matches(word, list(known), n=1)
    return Both(f" (vouliez-vous dire '{close[0]}' ?)", f" (did you mean '{close[0]}'?)") if close else Both("", "")


def _both_joined(parts: Iterable[str | Both]) -> Both:
    """"a and b" in both languages."""
    items = [p if isinstance(p, Both) else Both(p, p) for p in parts]
    return Both(" et ".join(p.fr for p in items), " and ".join(p.en for p in items))


# --- expressions --------------------------------------------------------------------------

_XPATH_LEXEME = re.compile(r"""'[^']*'|"[^"]*"|(?P<parent>\.\.)|(?P<path>[/\[\]@|])"""
                           r"""|(?P<call>[A-Za-z_][\w\-]*(?::[\w\-]+)?)(?=\s*\()""")
_OPERATOR_WORDS = {"and", "or", "div", "mod"}
_PATHS = Both("des chemins ou prédicats XPath (/ [ ] @ |)", "XPath paths or predicates (/ [ ] @ |)")


@dataclass
class _Reading:
    """What an expression says: its tree (None when it cannot be read), why it cannot
    be read, and the XPath features Terrain's evaluator does not run."""

    tree: Node | None
    error: Both | None
    unsupported: list[Both]


def _read_expression(text: str) -> _Reading:
    """Parses with forms.expressions, but first swaps valid XPath it does not run (other
    functions, '..') for stand-ins it reads, so that only real syntax faults are errors.
    Paths and predicates have no stand-in: those expressions are left to pyxform."""
    unsupported: list[Both] = []

    def stand_in(match: re.Match[str]) -> str:
        call = match.group("call")
        if call and call not in FUNCTIONS and call not in _OPERATOR_WORDS:
            unsupported.append(Both(f"la fonction {call}()", f"the function {call}()"))
            return "concat"
        if match.group("parent"):
            unsupported.append(Both("'..' (le nœud parent)", "'..' (the parent node)"))
            return "."
        if match.group("path"):
            unsupported.append(_PATHS)
        return match.group(0)

    readable = _XPATH_LEXEME.sub(stand_in, text)
    unsupported = list(dict.fromkeys(unsupported))
    try:
        return _Reading(parse(readable), None, unsupported)
    except ExpressionError as error:
        if _PATHS in unsupported:
            return _Reading(None, None, unsupported)
        return _Reading(None, _plain_reason(error), unsupported)


def _plain_reason(error: ExpressionError) -> Both:
    """The parser's reason without the expression it quotes (our message shows it)."""
    if re.fullmatch(r"the expression '.*' ends too early", error.en, flags=re.S):
        return Both("elle s'arrête trop tôt (il manque une parenthèse fermante ou une valeur à la fin)",
                    "it ends too early (a closing bracket or a value is missing at the end)")
    near = re.fullmatch(r"cannot read the expression near (.*)", error.en, flags=re.S)
    if near:
        return Both(f"le texte à partir de {near.group(1)} n'est pas compris (cherchez un guillemet ou un ${{ }} "
                    f"non fermé, ou un signe qu'XPath n'utilise pas, comme == ou &&)",
                    f"the text from {near.group(1)} on is not understood (look for an unclosed quote or ${{ }}, "
                    "or a sign XPath does not use, such as == or &&)")
    fr, en = (re.sub(r" dans '.*'$", "", error.fr, flags=re.S), re.sub(r" in '.*'$", "", error.en, flags=re.S))
    return Both(f"il y a {fr}" if en.startswith("unexpected") else fr,
                f"there is an {en}" if en.startswith("unexpected") else en)


def _bare_names(node: Node) -> Iterator[str]:
    if node.kind == "name":
        yield node.value
    for arg in node.args:
        yield from _bare_names(arg)


# --- checks -------------------------------------------------------------------------------

def _check_expressions(source: FormSource, findings: _Findings) -> None:
    """TF101, TF104, TF107, TF110."""
    choice_columns = set(source.sheets["choices"].header) if "choices" in source.sheets else set()
    for sheet, columns in EXPRESSION_COLUMNS.items():
        for row, record in _rows(source, sheet):
            for column in columns:
                text = record.get(column, "")
                if not text or text.lower() in YES_NO:
                    continue
                reading = _read_expression(text)
                if reading.error:
                    findings.add("TF101", sheet, row, column, expression=text, reason=reading.error)
                    continue
                if reading.unsupported and column in EVALUATED_COLUMNS:
                    findings.add("TF110", sheet, row, column, expression=text,
                                 features=_both_joined(reading.unsupported))
                for name in dict.fromkeys(_bare_names(reading.tree) if reading.tree else []):
                    if column != "choice_filter":
                        findings.add("TF107", sheet, row, column, expression=text, name=name)
                    elif name not in choice_columns:
                        findings.add("TF104", sheet, row, column, name=name,
                                     suggestion=_did_you_mean(name, choice_columns))


def _check_references(source: FormSource, findings: _Findings) -> None:
    """TF102: every ${name}, in any cell (labels too), must name a survey row."""
    names = {name for _, name in _named_rows(source)}
    for sheet in source.sheets:
        for row, record in _rows(source, sheet):
            for column, value in record.items():
                for name in dict.fromkeys(REFERENCE.findall(value)):
                    if name not in names:
                        findings.add("TF102", sheet, row, column, name=name, suggestion=_did_you_mean(name, names))


def _check_choice_lists(source: FormSource, findings: _Findings) -> None:
    """TF103, TF204 and the list-name half of TF203."""
    lists: dict[str, dict[str, int]] = {}
    for row, record in _rows(source, "choices"):
        list_name, name = record.get("list_name", ""), record.get("name", "")
        if list_name and list_name not in lists and len(list_name) > STATA_NAME_LIMIT:
            findings.add("TF203", "choices", row, "list_name", what=Both("Le nom de liste de choix", "choice list name"),
                         name=list_name,
                         length=len(list_name), limit=STATA_NAME_LIMIT)
        seen = lists.setdefault(list_name, {})
        if name and name in seen:
            findings.add("TF204", "choices", row, "name", name=name, list_name=list_name, first_row=seen[name])
        seen.setdefault(name, row)
    for row, record in _rows(source, "survey"):
        match = SELECT_TYPE.match(record.get("type", ""))
        if match and match.group(1) not in lists:
            findings.add("TF103", "survey", row, "type", list_name=match.group(1),
                         suggestion=_did_you_mean(match.group(1), lists))


def _check_names(source: FormSource, findings: _Findings) -> None:
    """TF105 and the question half of TF203."""
    first: dict[str, int] = {}
    for row, name in _named_rows(source):
        if name.lower() in first:
            findings.add("TF105", "survey", row, "name", name=name, first_row=first[name.lower()])
        first.setdefault(name.lower(), row)
        if len(name) > STATA_NAME_LIMIT:
            findings.add("TF203", "survey", row, "name", what=Both("Le nom", "name"), name=name, length=len(name),
                         limit=STATA_NAME_LIMIT)


def _check_translations(source: FormSource, findings: _Findings) -> None:
    """TF201 and TF202: a text given in one language is given in all of the form's, and
    every constraint tells the enumerator what is wrong."""
    languages = _languages(source) or [DEFAULT_LANGUAGE]
    for sheet in ("survey", "choices"):
        for row, record in _rows(source, sheet):
            for base, what in TRANSLATED.items():
                texts = _texts(record, base)
                for language in [language for language in languages if texts and language not in texts]:
                    findings.add("TF201", sheet, row, _join_column(base, language), what=what,
                                 present=_both_joined(texts), language=language)
            if sheet == "survey" and record.get("constraint") and not _texts(record, "constraint_message"):
                findings.add("TF202", sheet, row, _join_column("constraint_message", languages[0]),
                             languages=_both_joined(languages))


def _check_settings(source: FormSource, findings: _Findings) -> None:
    """TF205, TF206, TF207."""
    row, settings = next(_rows(source, "settings"), (None, {}))
    for setting, why in SETTINGS_WHY.items():
        if not settings.get(setting):
            findings.add("TF205", "settings", row, setting, setting=setting, why=why)
    version = settings.get("version", "")
    if version and not version.isdigit():
        findings.add("TF206", "settings", row, "version", version=version)
    elif version and not _is_dated_version(version):
        findings.add("TF207", "settings", row, "version", version=version)


def _check_personal_marks(source: FormSource, findings: _Findings) -> None:
    """TF209: a terrain_pii Terrain does not read as yes or no (e.g. "x", "personnel")."""
    for row, record in _rows(source, "survey"):
        value = record.get("terrain_pii", "")
        if value.strip().lower() not in PERSONAL_WORDS + NOT_PERSONAL_WORDS:
            findings.add("TF209", "survey", row, "terrain_pii", value=value)


def _is_dated_version(version: str) -> bool:
    try:
        datetime.strptime(version[:8], "%Y%m%d")
    except ValueError:
        return False
    return len(version) == 10


CHECKS: tuple[Callable[[FormSource, _Findings], None], ...] = (
    _check_names, _check_references, _check_expressions, _check_choice_lists, _check_translations,
    _check_settings, _check_personal_marks,
)


# --- pyxform ------------------------------------------------------------------------------

_PYXFORM_ROW = re.compile(r"\[row : (\d+)\]\s*")
_PYXFORM_PLACE = re.compile(r"On the '(?P<sheet>[^']+)' sheet, the '(?P<column>[^']+)' value")


def _add_pyxform(findings: _Findings, code: str, text: str) -> None:
    """pyxform names the row as "[row : N]" and often the sheet and column: keep them."""
    row_match, place = _PYXFORM_ROW.search(text), _PYXFORM_PLACE.search(text)
    row = int(row_match.group(1)) if row_match else None
    sheet = place.group("sheet") if place else ("survey" if row else None)
    findings.add(code, sheet, row, place.group("column") if place else None,
                 detail=_PYXFORM_ROW.sub("", text).strip())


def _order(source: FormSource) -> Callable[[Problem], tuple[int, int, int]]:
    """Sorts problems as a person reads the workbook: sheet by sheet, row by row, left to right."""
    sheets = [n for n in SHEET_ORDER if n in source.sheets] + [n for n in source.sheets if n not in SHEET_ORDER]

    def key(problem: Problem) -> tuple[int, int, int]:
        header = source.sheets[problem.sheet].header if problem.sheet in source.sheets else []
        return (sheets.index(problem.sheet) if problem.sheet in sheets else len(sheets), problem.row or 0,
                header.index(problem.column) if problem.column in header else len(header))

    return key


# --- entry points -------------------------------------------------------------------------

def check_source(path: Path) -> list[Problem]:
    """Our checks on the markdown source, then, only when they find no error, pyxform's
    (TF100 for its error, TF190 for its warnings). Sorted by sheet, row and column."""
    findings = _Findings(path.name)
    try:
        source = load_source(path)
    except FormError as error:
        findings.add("TF106", None, None, None,
                     detail=Both(_without_origin(error.fr, path), _without_origin(error.en, path)))
        return findings.problems
    findings.source = source
    for check in CHECKS:
        check(source, findings)
    if not any(p.severity == "error" for p in findings.problems):
        try:
            built = build_form(path)
        except FormError as error:
            _add_pyxform(findings, "TF100", _without_origin(error.en, path))
        else:
            for warning in built.warnings:
                _add_pyxform(findings, "TF190", warning)
            # As `terrain forms build` would refuse it: a change with no higher version.
            if problem := version_problem(built, recorded_versions()):
                row, _ = next(_rows(source, "settings"), (None, {}))
                findings.add("TF208", "settings", row, "version", detail=Both(problem.fr, problem.en))
    return sorted(findings.problems, key=_order(source))


def _without_origin(message: str, path: Path) -> str:
    """The message without the file name it starts with (the problem's line shows it)."""
    for origin in (f"{path.name}: ", f"{path.name} : ", f"{path.name}, "):
        message = message.removeprefix(origin)
    return message


def _expand(paths: Iterable[Path]) -> list[Path]:
    """A folder stands for the forms (*.md) it holds."""
    return [found for path in paths for found in (source_paths(path) if path.is_dir() else [path])]


def check_all(paths: Iterable[Path]) -> dict[Path, list[Problem]]:
    return {path: check_source(path) for path in _expand(paths)}


def run_check(paths: list[Path] | None = None, out: TextIO | None = None) -> int:
    """`terrain forms check`: prints each problem on one line and a summary; returns 1
    when any form has an error (so CI fails), else 0. Default: every form in forms/sources."""
    out = out or sys.stdout
    results = check_all(paths if paths else source_paths())
    problems = [problem for found in results.values() for problem in found]
    for problem in problems:
        print(problem, file=out)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    forms = len(results)
    print(f"{_count(forms, 'formulaire', True)} vérifié{'s' if forms > 1 else ''} : "
          f"{_count(errors, 'erreur', True)}, {_count(warnings, 'avertissement', True)}. / "
          f"Checked {_count(forms, 'form')}: {_count(errors, 'error')}, {_count(warnings, 'warning')}.",
          file=out)
    return 1 if errors else 0


def _count(number: int, noun: str, french: bool = False) -> str:
    """"2 errors", "1 error", "0 errors"; in French 0 is singular too ("0 erreur")."""
    return f"{number} {noun}{'s' if number > 1 or (number == 0 and not french) else ''}"
