"""What analysts take away: tables without personal data (see warehouse/pii.py) and the
indicator marts, as Parquet, CSV or XLSX. The salt lives outside the warehouse.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import duckdb
import xlsxwriter

from forms.dictionary import FieldDictionary
from forms.errors import TerrainError
from warehouse.labels import COLUMN_LABELS, language_code
from warehouse.pii import without_personal_data
from warehouse.store import quote

ANALYST_SCHEMA = "analyst"
MARTS_SCHEMA = "marts"
SALT_ENV = "TERRAIN_PII_SALT"
XLSX_MAX_ROWS = 1_048_575  # Excel's limit, less the header row
EXCEL_SHEET_NAME_MAX = 31
FORMATS = ("parquet", "csv", "xlsx")


class ExportError(TerrainError):
    """An export cannot be written."""


def pii_salt(warehouse_path: Path) -> str:
    """The salt for hashing personal data: $TERRAIN_PII_SALT, else a file beside the
    warehouse created once (readable by its owner only). Never stored in the warehouse."""
    from_env = os.environ.get(SALT_ENV, "").strip()
    if from_env:
        return from_env
    salt_file = warehouse_path.resolve().with_suffix(".salt")
    if not salt_file.exists():
        salt_file.write_text(secrets.token_hex(32), encoding="utf-8")
        salt_file.chmod(0o600)
    return salt_file.read_text(encoding="utf-8").strip()


def refresh_analyst_tables(con: duckdb.DuckDBPyConnection, dictionaries: list[FieldDictionary], salt: str) -> list[str]:
    """Rebuilds ``analyst.<table>`` for every clean table: the same rows without personal data."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {ANALYST_SCHEMA}")
    names = []
    for dictionary in dictionaries:
        for table in dictionary.tables.values():
            sql = (f'CREATE OR REPLACE TABLE {ANALYST_SCHEMA}."{table.name}" AS '
                   f'SELECT {without_personal_data(table, salted=True)} FROM main."{table.name}" t')
            con.execute(sql, {"salt": salt} if "$salt" in sql else None)
            names.append(table.name)
    return names


@dataclass
class ExportResult:
    files: list[Path]
    rows: dict[str, int]


def exportable(con: duckdb.DuckDBPyConnection) -> list[str]:
    """What can be exported: each analyst table by its name, each mart as ``marts.<name>``."""
    return [name if schema == ANALYST_SCHEMA else f"{schema}.{name}" for schema, name in con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema IN (?, ?) ORDER BY table_schema = ? DESC, table_name",
        [ANALYST_SCHEMA, MARTS_SCHEMA, ANALYST_SCHEMA]).fetchall()]


def _relation(name: str) -> str:
    """The relation an exportable name reads: ``analyst."<table>"`` or ``marts."<mart>"``."""
    schema, _, table = name.rpartition(".") if name.startswith(f"{MARTS_SCHEMA}.") else (ANALYST_SCHEMA, "", name)
    return f"{schema}.{quote(table)}"


def export_tables(con: duckdb.DuckDBPyConnection, tables: list[str], out_dir: Path, fmt: str,
                  language: str = "fr") -> ExportResult:
    """Writes each of ``tables`` (see exportable): one Parquet or CSV file each, or one XLSX
    workbook with a sheet each and the column labels in ``language``."""
    if fmt not in FORMATS:
        raise ExportError(f"format d'export inconnu '{fmt}' : choisissez parmi {', '.join(FORMATS)}",
                          f"unknown export format '{fmt}': use one of {', '.join(FORMATS)}")
    known = exportable(con)
    unknown = [t for t in tables if t not in known]
    if unknown:
        raise ExportError(f"pas de table {', '.join(unknown)} à exporter ; les tables sont : "
                          f"{', '.join(known) or 'aucune pour le moment'}",
                          f"no table {', '.join(unknown)} to export; the tables are: {', '.join(known) or 'none yet'}")
    languages = [row[0] for row in con.execute("SELECT DISTINCT language FROM meta.field_labels ORDER BY 1").fetchall()]
    if fmt == "xlsx" and language not in languages:
        raise ExportError(f"pas de libellés dans la langue '{language}' : les formulaires ont "
                          f"{', '.join(languages) or 'aucune'}",
                          f"no labels in the language '{language}': the forms have {', '.join(languages) or 'none'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {t: con.execute(f"SELECT count(*) FROM {_relation(t)}").fetchone()[0] for t in tables}
    if fmt in ("parquet", "csv"):
        files = []
        for table in tables:
            path = out_dir / f"{table}.{fmt}"
            options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
            target = str(path).replace("'", "''")
            con.execute(f"COPY (SELECT * FROM {_relation(table)}) TO '{target}' ({options})")
            files.append(path)
        return ExportResult(files=files, rows=rows)
    path = out_dir / "terrain.xlsx"
    _write_workbook(con, tables, path, language)
    return ExportResult(files=[path], rows=rows)


def sheet_names(tables: list[str]) -> dict[str, str]:
    """Each table's sheet name: Excel allows 31 characters, and two names alike in their
    first 31 (household_members_vaccinations_2025 and _2026) get a number ("~2")."""
    names: dict[str, str] = {}
    for table in tables:
        name, number = table[:EXCEL_SHEET_NAME_MAX], 1
        while name.lower() in (taken.lower() for taken in names.values()):  # Excel ignores case
            number += 1
            name = f"{table[:EXCEL_SHEET_NAME_MAX - len(str(number)) - 1]}~{number}"
        names[table] = name
    return names


def _write_workbook(con: duckdb.DuckDBPyConnection, tables: list[str], path: Path, language: str) -> None:
    workbook = xlsxwriter.Workbook(str(path), {
        # Text from the field stays text: "=HYPERLINK(...)" in an answer is never a formula.
        "strings_to_formulas": False, "strings_to_urls": False, "strings_to_numbers": False,
        "remove_timezone": True, "constant_memory": True,
    })
    header = workbook.add_format({"bold": True, "text_wrap": True, "valign": "top", "bg_color": "#DDEBF7"})
    date = workbook.add_format({"num_format": "yyyy-mm-dd"})
    sheets = sheet_names(tables)
    stamp = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm"})
    for table in tables:
        count = con.execute(f"SELECT count(*) FROM {_relation(table)}").fetchone()[0]
        if count > XLSX_MAX_ROWS:
            raise ExportError(f"{table} a {count} lignes, plus qu'Excel n'en permet ({XLSX_MAX_ROWS}) : "
                              f"exportez-la en Parquet ou en CSV",
                              f"{table} has {count} rows, more than Excel allows ({XLSX_MAX_ROWS}): "
                              f"export it as Parquet or CSV instead")
        labels = dict(con.execute(COLUMN_LABELS, {"table": table, "language": language}).fetchall())
        # A cursor of its own: con.execute() would replace this result with the next query's.
        # It starts in DuckDB's default database, not in the one a writer attached: hence
        # the table's database named.
        database = con.execute("SELECT current_database()").fetchone()[0]
        cursor = con.cursor().execute(f"SELECT * FROM {quote(database)}.{_relation(table)}")
        columns = [d[0] for d in cursor.description]
        sheet = workbook.add_worksheet(sheets[table])
        for index, column in enumerate(columns):
            label = labels.get(column)
            sheet.write_string(0, index, f"{label}\n({column})" if label else column, header)
        sheet.set_row(0, 45)
        sheet.freeze_panes(1, 0)
        row_number = 1
        while batch := cursor.fetchmany(10_000):
            for row in batch:
                for index, value in enumerate(row):
                    _write_cell(sheet, row_number, index, value, date, stamp)
                row_number += 1
    workbook.close()


def _write_cell(sheet, row: int, column: int, value, date_format, stamp_format) -> None:
    import datetime as dt

    if value is None:
        return
    if isinstance(value, bool):
        sheet.write_boolean(row, column, value)
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return  # Excel has no NaN or infinity (a value from an older warehouse)
        sheet.write_number(row, column, value)
    elif isinstance(value, dt.datetime):
        sheet.write_datetime(row, column, value.replace(tzinfo=None) if value.tzinfo is None else
                             value.astimezone(dt.timezone.utc).replace(tzinfo=None), stamp_format)
    elif isinstance(value, dt.date):
        sheet.write_datetime(row, column, dt.datetime(value.year, value.month, value.day), date_format)
    elif isinstance(value, list):
        sheet.write_string(row, column, " ".join(str(v) for v in value))
    else:
        sheet.write_string(row, column, str(value))


__all__ = ["ExportError", "export_tables", "exportable", "language_code", "pii_salt", "refresh_analyst_tables"]
