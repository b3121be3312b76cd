"""Labels as data, and the labelled views built on them.

Every field and choice label of every form version goes to ``meta.field_labels`` and
``meta.choice_labels``. For each language (``fr``, ``en``) a schema holds one view per
clean table where choice codes read as their labels (``fr.households.water_source``
= 'Forage équipé de pompe'); column names stay the same, so queries work in both.
The views are for analysts: personal data is left out (warehouse/pii.py).

A label is the one of the version deployed last that has it (meta.form_versions), not
of the "highest" version name: "10" sorts before "9", and a project built in
KoboToolbox's form builder has random version names.
"""

from __future__ import annotations

import re

import duckdb
import pandas as pd

from forms.dictionary import FieldDictionary
from warehouse.pii import without_personal_data

LATEST_LABELS = "meta.latest_choice_labels"


def newest_version_key(prefix: str = "") -> str:
    """What makes a version of meta.form_versions (``prefix``: its alias) the newest: it
    was deployed last; one never found deployed comes before, by when it was first seen."""
    return f"{prefix}last_deployed IS NOT NULL, coalesce({prefix}last_deployed, {prefix}first_seen)"


# A label of the newest version that has it (then by version name, for a tie).
NEWEST_LABEL = f"arg_max(l.label, ({newest_version_key('v.')}, l.version)) AS label"
VERSION_OF_LABEL = "LEFT JOIN meta.form_versions AS v USING (form_id, version)"
# The label of each column of a table in a language ($table, $language).
COLUMN_LABELS = (f"SELECT l.column_name, {NEWEST_LABEL} FROM meta.field_labels AS l {VERSION_OF_LABEL} "
                 "WHERE l.table_name = $table AND l.language = $language GROUP BY ALL")


def language_code(language: str) -> str:
    """'Français (fr)' -> 'fr'; a language without a code in brackets -> its snake-cased name."""
    match = re.search(r"\(([A-Za-z]{2,3}(?:[-_][A-Za-z]+)?)\)\s*$", language)
    code = match.group(1) if match else language
    return re.sub(r"[^a-z0-9]+", "_", code.lower()).strip("_") or "default"


def literal(text: str) -> str:
    """A SQL string literal, for names from the field dictionary in view definitions."""
    return "'" + text.replace("'", "''") + "'"


def store_labels(con: duckdb.DuckDBPyConnection, dictionary: FieldDictionary) -> None:
    fields, choices = [], []
    for f in dictionary.fields():
        for column, _ in f.columns():
            for language in dictionary.languages:
                fields.append((dictionary.form_id, dictionary.version, f.table, column, f.name, f.kobo_key,
                               f.xlsform_type, f.list_name, f.pii, language_code(language), f.labels.get(language)))
    for list_name, items in dictionary.choices.items():
        for choice in items:
            for language in dictionary.languages:
                choices.append((dictionary.form_id, dictionary.version, list_name, choice.name,
                                language_code(language), choice.labels.get(language)))
    con.execute("DELETE FROM meta.field_labels WHERE form_id = ? AND version = ?", [dictionary.form_id, dictionary.version])
    con.execute("DELETE FROM meta.choice_labels WHERE form_id = ? AND version = ?", [dictionary.form_id, dictionary.version])
    for table, rows, width in (("meta.field_labels", fields, 11), ("meta.choice_labels", choices, 6)):
        if rows:
            frame = pd.DataFrame(rows)
            con.register("label_rows", frame)
            try:
                con.execute(f"INSERT INTO {table} SELECT * FROM label_rows")
            finally:
                con.unregister("label_rows")


def create_labelled_views(con: duckdb.DuckDBPyConnection, dictionary: FieldDictionary) -> None:
    """(Re)creates ``<language>.<table>`` views for every table of the form. Labels come from
    the version deployed last that names the choice, so older codes keep their label."""
    con.execute(f"""
        CREATE OR REPLACE VIEW {LATEST_LABELS} AS
        SELECT l.form_id, l.list_name, l.choice_name, l.language, {NEWEST_LABEL}
        FROM meta.choice_labels AS l {VERSION_OF_LABEL} GROUP BY ALL""")
    form = literal(dictionary.form_id)
    for language in dictionary.languages:
        code = language_code(language)
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{code}"')
        for table in dictionary.tables.values():
            replaced = []
            for f in table.fields:
                if not f.list_name or f.xlsform_type not in ("select_one", "select_multiple") or f.pii:
                    continue
                column, lang, name = f'"{f.column}"', literal(code), literal(f.list_name)
                match = (f"l.form_id = {form} AND l.list_name = {name} AND l.language = {lang}")
                if f.xlsform_type == "select_one":
                    replaced.append(f"coalesce((SELECT l.label FROM {LATEST_LABELS} l WHERE {match} "
                                    f"AND l.choice_name = t.{column}), t.{column}) AS {column}")
                else:
                    replaced.append(
                        f"(SELECT list(coalesce(l.label, u.x) ORDER BY u.i) FROM (SELECT unnest(t.{column}) AS x, "
                        f"unnest(range(1, len(t.{column}) + 1)) AS i) u LEFT JOIN {LATEST_LABELS} l ON {match} "
                        f"AND l.choice_name = u.x) AS {column}")
            select = without_personal_data(table, salted=False, replaced=replaced)
            con.execute(f'CREATE OR REPLACE VIEW "{code}"."{table.name}" AS SELECT {select} FROM main."{table.name}" t')
