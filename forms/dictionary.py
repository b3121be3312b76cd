"""The field dictionary: what a compiled form says about each of its fields.

It is derived by code from pyxform's compiled survey (never typed by hand) and is
the one contract that drives test-data generation, typing, validation and the
layout of the warehouse tables (DESIGN.md, contract 1).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from forms.errors import FormError

MAX_COLUMN_LENGTH = 63

# XLSForm question type -> DuckDB type of its column(s). Types not listed are text.
DUCKDB_TYPES: dict[str, str] = {
    "integer": "BIGINT",
    "decimal": "DOUBLE",
    "range": "DOUBLE",
    "date": "DATE",
    "today": "DATE",
    "dateTime": "TIMESTAMPTZ",
    "start": "TIMESTAMPTZ",
    "end": "TIMESTAMPTZ",
    "time": "TIMETZ",
    "select_multiple": "VARCHAR[]",
    "geopoint": "DOUBLE",
}
GEOPOINT_PARTS = ("latitude", "longitude", "altitude", "accuracy")
NO_DATA_TYPES = {"note", "group", "repeat"}
PYXFORM_TYPE_NAMES = {
    "select one": "select_one",
    "select all that apply": "select_multiple",
    "select one external": "select_one_external",
}
# Columns every table has before its fields; a field never takes one of these names.
MAIN_SYSTEM_COLUMNS = (
    "root_uuid", "submission_id", "uuid", "form_version", "submission_time",
    "submitted_by", "validation_status",
)
REPEAT_SYSTEM_COLUMNS = ("root_uuid", "row_key", "parent_row_key", "position")
SYSTEM_COLUMN_TYPES = {
    "root_uuid": "VARCHAR", "submission_id": "BIGINT", "uuid": "VARCHAR", "form_version": "VARCHAR",
    "submission_time": "TIMESTAMPTZ", "submitted_by": "VARCHAR", "validation_status": "VARCHAR",
    "row_key": "VARCHAR", "parent_row_key": "VARCHAR", "position": "BIGINT",
}
SKIPPED_META = {"instanceID", "instanceName", "deprecatedID", "rootUuid"}


@dataclass(frozen=True)
class Choice:
    name: str
    labels: dict[str, str]
    filters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Field:
    name: str
    kobo_key: str
    xpath: str
    column: str
    xlsform_type: str
    duckdb_type: str
    table: str
    labels: dict[str, str]
    list_name: str | None = None
    required: bool = False
    relevant: str | None = None
    constraint: str | None = None
    constraint_message: dict[str, str] = field(default_factory=dict)
    choice_filter: str | None = None
    calculation: str | None = None
    pii: bool = False
    fake: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    choice_names: list[str] = field(default_factory=list)  # select_multiple: one boolean column each

    def columns(self) -> list[tuple[str, str]]:
        """The physical columns this field fills, with their DuckDB types."""
        if self.xlsform_type == "geopoint":
            return [(f"{self.column}_{part}", "DOUBLE") for part in GEOPOINT_PARTS]
        if self.xlsform_type == "select_multiple":
            return [(self.column, "VARCHAR[]"), (f"{self.column}_raw", "VARCHAR")] + [
                (self.column + suffix, "BOOLEAN") for suffix in choice_suffixes(self.choice_names)]
        return [(self.column, self.duckdb_type)]


@dataclass(frozen=True)
class Table:
    name: str
    parent: str | None
    repeat_key: str | None
    labels: dict[str, str]
    fields: list[Field]

    @property
    def is_repeat(self) -> bool:
        return self.parent is not None

    def system_columns(self) -> tuple[str, ...]:
        return REPEAT_SYSTEM_COLUMNS if self.is_repeat else MAIN_SYSTEM_COLUMNS

    def column_types(self) -> list[tuple[str, str]]:
        """Every column of the clean table with its DuckDB type, system columns first."""
        return ([(c, SYSTEM_COLUMN_TYPES[c]) for c in self.system_columns()]
                + [column for f in self.fields for column in f.columns()])


@dataclass(frozen=True)
class FieldDictionary:
    form_id: str
    version: str
    title: str
    default_language: str
    languages: list[str]
    tables: dict[str, Table]
    choices: dict[str, list[Choice]]

    @property
    def main_table(self) -> Table:
        return next(t for t in self.tables.values() if not t.is_repeat)

    def fields(self) -> Iterator[Field]:
        for table in self.tables.values():
            yield from table.fields

    def field_by_name(self, name: str) -> Field:
        for candidate in self.fields():
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def children_of(self, table_name: str) -> list[Table]:
        return [t for t in self.tables.values() if t.parent == table_name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "FieldDictionary":
        data = json.loads(text)
        tables = {
            name: Table(
                name=t["name"], parent=t["parent"], repeat_key=t["repeat_key"], labels=t["labels"],
                fields=[Field(**f) for f in t["fields"]],
            )
            for name, t in data["tables"].items()
        }
        choices = {name: [Choice(**c) for c in items] for name, items in data["choices"].items()}
        return cls(
            form_id=data["form_id"], version=data["version"], title=data["title"],
            default_language=data["default_language"], languages=data["languages"],
            tables=tables, choices=choices,
        )


def snake_case(name: str) -> str:
    """A safe SQL/Stata column name: lower case, [a-z0-9_], not starting with a digit."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    text = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "field"
    return f"f_{text}" if text[0].isdigit() else text


class _ColumnNamer:
    """Gives each field of one table a unique column name, deterministically in form
    order: its own name, else prefixed by its group, else numbered."""

    def __init__(self, reserved: tuple[str, ...]):
        self.taken = set(reserved)

    def name(self, field_name: str, group_path: list[str], suffixes: tuple[str, ...],
             preferred: str | None = None) -> str:
        base = preferred or snake_case(field_name)
        candidates = [base]
        if group_path:
            candidates.append(snake_case("_".join(group_path[-1:] + [field_name])))
        for candidate in candidates:
            candidate = candidate[: MAX_COLUMN_LENGTH - max((len(s) for s in suffixes), default=0)]
            if self._free(candidate, suffixes):
                return self._take(candidate, suffixes)
        number = 2
        while True:
            tail = f"_{number}"
            candidate = base[: MAX_COLUMN_LENGTH - len(tail) - max((len(s) for s in suffixes), default=0)] + tail
            if self._free(candidate, suffixes):
                return self._take(candidate, suffixes)
            number += 1

    def _free(self, candidate: str, suffixes: tuple[str, ...]) -> bool:
        return all(candidate + s not in self.taken for s in suffixes or ("",))

    def _take(self, candidate: str, suffixes: tuple[str, ...]) -> str:
        self.taken.update(candidate + s for s in suffixes or ("",))
        return candidate


def keep_columns(dictionary: FieldDictionary, earlier: list[FieldDictionary]) -> FieldDictionary:
    """The dictionary with each question in the column earlier versions of the form gave it
    (by its key in the submissions), and no question in a column that meant another one.

    Columns are named in form order within each version: when a version drops a question
    whose name another group's question shared, that one would take the freed name, and
    the column would hold two questions' answers, told apart by nothing in the table.
    A question whose type changed (an integer become a decimal or a text) cannot keep its
    column, whose type is that of its earlier answers: it gets a new one, named after the
    column and its new type (``age__decimal``), as dlt makes a variant column."""
    if not earlier:
        return dictionary
    owners: dict[tuple[str, str], tuple[str, str]] = {}  # (table, column) -> (kobo_key, type) that first had it
    had: dict[tuple[str, str], list[str]] = {}  # (table, kobo_key) -> the columns it had, first first
    for version in earlier:
        for table in version.tables.values():
            for f in table.fields:
                columns = had.setdefault((table.name, f.kobo_key), [])
                if f.column not in columns:
                    columns.append(f.column)
                for column, duck_type in f.columns():
                    owners.setdefault((table.name, column), (f.kobo_key, duck_type))
    tables = {}
    for table in dictionary.tables.values():
        taken = set(table.system_columns()) | {c for t, c in owners if t == table.name}
        kept: dict[str, str] = {}
        variant: dict[str, str] = {}  # kobo_key -> its first column, for a question whose type changed
        for f in table.fields:
            columns = had.get((table.name, f.kobo_key), [])
            mine = [column for column in columns if all(
                owners.get((table.name, c), (f.kobo_key, t)) == (f.kobo_key, t)
                for c, t in replace(f, column=column).columns())]
            if mine:
                kept[f.kobo_key] = mine[0]
            elif columns:
                variant[f.kobo_key] = columns[0]
        namer = _ColumnNamer(tuple(taken | set(kept.values())))
        fields = []
        for f in table.fields:
            suffixes = _suffixes(f.xlsform_type, f.choice_names)
            preferred = f"{variant[f.kobo_key]}__{snake_case(f.xlsform_type)}" if f.kobo_key in variant else None
            column = kept.get(f.kobo_key) or namer.name(f.name, f.kobo_key.split("/")[:-1], suffixes, preferred)
            fields.append(f if column == f.column else replace(f, column=column))
        tables[table.name] = replace(table, fields=fields)
    if all(a is b for name in tables for a, b in zip(tables[name].fields, dictionary.tables[name].fields)):
        return dictionary
    return replace(dictionary, tables=tables)


def distinct_version(dictionary: FieldDictionary, earlier: list[FieldDictionary],
                     version_uid: str | None) -> FieldDictionary:
    """The dictionary under a version name that no earlier version of other content holds.

    KoboToolbox tells a project's versions apart by their uid; the XLSForm ``version``
    setting may stay the same when a project is redeployed with new questions, or be absent
    (forms made in the Kobo form builder). Stored under the same name as the first, the new
    questions would get no column. Such a version is named ``<version>+<version uid>``
    (``+<content digest>`` without a uid)."""
    content = _content(dictionary)
    same_name = [d for d in earlier if (d.form_id, d.version) == (dictionary.form_id, dictionary.version)]
    if not same_name or _content(same_name[0]) == content:
        return dictionary
    suffix = version_uid or hashlib.sha256(content.encode()).hexdigest()[:12]
    return replace(dictionary, version=f"{dictionary.version}+{suffix}" if dictionary.version else suffix)


def distinct_tables(dictionary: FieldDictionary, taken: set[str]) -> FieldDictionary:
    """The dictionary with none of its tables named like one of another form (``taken``):
    two projects that each have a repeat ``members`` would otherwise fill one table with
    rows of two different things. A repeat becomes ``<main table>__<repeat>``, a main
    table ``<name>_2`` (or the next free number). The form first synced keeps its names."""
    if not taken & set(dictionary.tables):
        return dictionary
    renamed: dict[str, str] = {}
    used = taken | set(dictionary.tables)
    main = dictionary.main_table.name
    if main in taken:
        number = 2
        while f"{main}_{number}" in used:
            number += 1
        renamed[main] = f"{main}_{number}"
        used.add(renamed[main])
    for name in dictionary.tables:
        if name != main and name in taken:
            candidate = f"{renamed.get(main, main)}__{name}"[:MAX_COLUMN_LENGTH]
            number = 2
            while candidate in used:
                candidate, number = f"{renamed.get(main, main)}__{name}_{number}"[:MAX_COLUMN_LENGTH], number + 1
            renamed[name] = candidate
            used.add(candidate)

    def new(name: str | None) -> str | None:
        return renamed.get(name, name) if name is not None else None

    tables = {new(t.name): replace(t, name=new(t.name), parent=new(t.parent),
                                   fields=[replace(f, table=new(f.table)) for f in t.fields])
              for t in dictionary.tables.values()}
    return replace(dictionary, tables=tables)


def merge_versions(versions: list[FieldDictionary]) -> FieldDictionary:
    """One dictionary for what spans a form's versions (labelled views, analyst tables),
    ``versions`` newest last: every table and column any version has, each column's field
    as the newest version that has it says, personal if any version marked it so (a
    version that drops a name question leaves its column full of names), and a
    select_multiple with the choices of every version (each has its boolean column)."""
    newest = versions[-1]
    personal = {(f.table, f.column) for d in versions for f in d.fields() if f.pii}

    def place(f: Field) -> str:
        """A field's first physical column: a geopoint "home" fills home_latitude..., and
        a text "home" of another version the column home; both are kept (keyed by their
        name alone, the newer replaced the older, whose columns then went unhidden)."""
        return f.columns()[0][0]

    tables: dict[str, Table] = {}
    for version in versions:
        for table in version.tables.values():
            fields = {place(f): f for f in (tables[table.name].fields if table.name in tables else [])}
            for f in table.fields:
                earlier = fields.get(place(f))
                if earlier is not None and f.xlsform_type == earlier.xlsform_type == "select_multiple":
                    f = replace(f, choice_names=list(dict.fromkeys(earlier.choice_names + f.choice_names)))
                fields[place(f)] = f
            tables[table.name] = replace(table, fields=[replace(f, pii=f.pii or (f.table, f.column) in personal)
                                                        for f in fields.values()])
    choices = {name: items for version in versions for name, items in version.choices.items()}
    languages = list(dict.fromkeys(language for version in reversed(versions) for language in version.languages))
    return replace(newest, tables=tables, choices=choices, languages=languages)


def _content(dictionary: FieldDictionary) -> str:
    """What tells two versions' content apart. The personal marks do not: a version
    stored by an older Terrain, which read fewer of them, is the same version (it gains
    the marks instead: Warehouse.register_form_version)."""
    unmarked = {name: replace(table, fields=[replace(f, pii=False) for f in table.fields])
                for name, table in dictionary.tables.items()}
    return replace(dictionary, version="", tables=unmarked).to_json()


def choice_suffixes(choice_names: list[str]) -> list[str]:
    """``__<choice>`` for each choice of a select_multiple (its boolean column)."""
    return [f"__{snake_case(name)}" for name in choice_names]


def _suffixes(xlsform_type: str, choice_names: list[str]) -> tuple[str, ...]:
    if xlsform_type == "geopoint":
        return tuple(f"_{p}" for p in GEOPOINT_PARTS)
    if xlsform_type == "select_multiple":
        return ("", "_raw", *choice_suffixes(choice_names))
    return ("",)


def _labels(value: Any, default_language: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {default_language: str(value)}


def _parameters(value: Any) -> dict[str, str]:
    """XLSForm parameters, given by pyxform as a dict or as the raw 'a=1 b=2' text."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = (part.split("=", 1) for part in str(value or "").replace(";", " ").replace(",", " ").split())
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2)}


def _and(*expressions: str | None) -> str | None:
    present = [e for e in expressions if e]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return " and ".join(f"({e})" for e in present)


# How build_dictionary reads a form; raised when the same form source is read into more
# than before, so versions stored with an older reading are read again (warehouse/store.py).
# 2: terrain_pii "oui"/"vrai", and a group's or repeat's mark.
DICTIONARY_READING = 2
# terrain_pii: what marks a question (or a group: all its questions) personal, and what
# says it is not; `forms check` refuses any other value (TF209).
PERSONAL_WORDS = ("yes", "oui", "true", "vrai", "1")
NOT_PERSONAL_WORDS = ("", "no", "non", "false", "faux", "0")


def is_personal(value: Any) -> bool:
    return str(value if value is not None else "").strip().lower() in PERSONAL_WORDS


def build_dictionary(compiled: dict[str, Any]) -> FieldDictionary:
    """Derives the field dictionary from pyxform's compiled survey (ConvertResult._pyxform)."""
    form_id = compiled.get("id_string") or compiled.get("name")
    if not form_id:
        raise FormError("le formulaire n'a pas de form_id dans sa feuille settings",
                        "the form has no form_id in its settings sheet")
    default_language = compiled.get("default_language") or "default"
    main_table_name = compiled.get("terrain_table") or snake_case(form_id)
    languages: list[str] = []
    tables: dict[str, Table] = {}
    root = compiled.get("name") or "data"

    def note_languages(labels: dict[str, str]) -> None:
        for language in labels:
            if language not in languages:
                languages.append(language)

    def new_table(name: str, parent: str | None, repeat_key: str | None, labels: dict) -> tuple[Table, _ColumnNamer]:
        name = snake_case(name)
        while name in tables:
            name = f"{name}_2"
        table = Table(name=name, parent=parent, repeat_key=repeat_key, labels=labels, fields=[])
        tables[name] = table
        reserved = REPEAT_SYSTEM_COLUMNS if parent else MAIN_SYSTEM_COLUMNS
        return table, _ColumnNamer(reserved)

    def walk(children: list[dict], path: list[str], table: Table, namer: _ColumnNamer,
             relevant: str | None, in_meta: bool, personal: bool = False) -> None:
        for child in children:
            kind = PYXFORM_TYPE_NAMES.get(child.get("type", ""), child.get("type", ""))
            name = child["name"]
            bind = child.get("bind", {}) or {}
            own_relevant = _and(relevant, bind.get("relevant"))
            own_personal = personal or is_personal(child.get("terrain_pii"))  # a group's mark: all its questions
            labels = _labels(child.get("label"), default_language)
            note_languages(labels)
            if kind == "group":
                walk(child.get("children", []), path + [name], table, namer, own_relevant, in_meta or name == "meta",
                     own_personal)
                continue
            if kind == "repeat":
                key = "/".join(path + [name])
                repeat_table, repeat_namer = new_table(child.get("terrain_table") or name, table.name, key, labels)
                walk(child.get("children", []), path + [name], repeat_table, repeat_namer, own_relevant, False,
                     own_personal)
                continue
            if kind in NO_DATA_TYPES or (in_meta and name in SKIPPED_META):
                continue
            list_name = child.get("list_name") or child.get("itemset")
            choice_names = ([str(c["name"]) for c in (compiled.get("choices") or {}).get(list_name, [])]
                            if kind == "select_multiple" else [])
            column = namer.name(name, path, _suffixes(kind, choice_names))
            message = _labels(bind.get("jr:constraintMsg"), default_language)
            note_languages(message)
            table.fields.append(Field(
                name=name,
                kobo_key="/".join(path + [name]),
                xpath="/" + "/".join([root] + path + [name]),
                column=column,
                xlsform_type=kind,
                duckdb_type=DUCKDB_TYPES.get(kind, "VARCHAR"),
                table=table.name,
                labels=labels,
                list_name=list_name,
                required=str(bind.get("required", "")).strip().lower() in ("yes", "true", "true()"),
                relevant=own_relevant,
                constraint=bind.get("constraint"),
                constraint_message=message,
                choice_filter=child.get("choice_filter"),
                calculation=bind.get("calculate"),
                pii=own_personal,
                fake=child.get("terrain_fake"),
                parameters=_parameters(child.get("parameters")),
                choice_names=choice_names,
            ))

    main, main_namer = new_table(main_table_name, None, None, _labels(compiled.get("title"), default_language))
    walk(compiled.get("children", []), [], main, main_namer, None, False)

    choices: dict[str, list[Choice]] = {}
    for list_name, items in (compiled.get("choices") or {}).items():
        parsed = []
        for item in items:
            labels = _labels(item.get("label"), default_language)
            note_languages(labels)
            filters = {k: str(v) for k, v in item.items() if k not in ("name", "label", "media")}
            parsed.append(Choice(name=str(item["name"]), labels=labels, filters=filters))
        choices[list_name] = parsed
    if default_language in languages:
        languages.remove(default_language)
    languages.insert(0, default_language)
    return FieldDictionary(
        form_id=form_id,
        version=str(compiled.get("version") or ""),
        title=str(compiled.get("title") or form_id),
        default_language=default_language,
        languages=languages,
        tables=tables,
        choices=choices,
    )
