"""pandera schemas built from the field dictionary, plus the hand-written rules.

Nothing the form says is copied by hand here: types, required (only where the
question was relevant), choice lists, numeric and date ranges and regular expressions
all come from the compiled form. Each check carries a code; failures become issues
with a message in plain words (contract 4).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import pandera.pandas as pa

from forms.dictionary import Field, FieldDictionary, Table
from forms.expressions import TODAY, bound_date, date_bounds, numeric_bounds
from warehouse.typing import RELEVANT_PREFIX, Issue, label_of

# Mali's bounding box, with a small margin for border villages.
MALI_LATITUDE = (10.1, 25.1)
MALI_LONGITUDE = (-12.3, 4.3)
_REGEX_CONSTRAINT = re.compile(r"^\s*regex\(\s*\.\s*,\s*'([^']*)'\s*\)\s*$")
DATE_TYPES = ("date", "dateTime", "today")


@dataclass(frozen=True)
class CheckInfo:
    code: str
    column: str | None
    field: Field | None
    message: Callable[[object], str]


def _labels(field: Field) -> tuple[str, str]:
    """The question's label in French and in English (either falls back to the other)."""
    french = next((v for k, v in field.labels.items() if "fr" in k.lower()), "") or label_of(field)
    english = next((v for k, v in field.labels.items() if "en" in k.lower().split("(")[-1]), "") or french
    return french, english


class TableSchema:
    """A pandera DataFrameSchema for one table and a catalogue of what each check means."""

    def __init__(self, dictionary: FieldDictionary, table: Table):
        self.table = table
        self.catalogue: dict[str, CheckInfo] = {}
        columns: dict[str, pa.Column] = {}
        frame_checks: list[pa.Check] = []
        for f in table.fields:
            fr, en = _labels(f)
            checks: list[pa.Check] = []
            if f.xlsform_type in ("select_one", "select_multiple") and f.list_name in dictionary.choices:
                allowed = {c.name for c in dictionary.choices[f.list_name]}
                info = CheckInfo("choice", f.column, f, lambda v, fr=fr, en=en:
                                 f"'{v}' ne fait pas partie des choix de « {fr} » / "
                                 f"'{v}' is not one of the choices of '{en}'")
                if f.xlsform_type == "select_one":
                    test = lambda s, allowed=allowed: s.isin(allowed)  # noqa: E731
                else:
                    test = lambda s, allowed=allowed: s.map(lambda items: set(items) <= allowed).astype(bool)  # noqa: E731
                checks.append(self._check(f"choice:{f.column}", info, test))
            constraint = _constraint_test(f)
            if constraint:
                checks.append(self._check(f"constraint:{f.column}", CheckInfo(
                    "constraint", f.column, f, _constraint_message(f, fr, en)), constraint))
            if checks and f.column in dict(f.columns()):  # columns without checks would cost time for nothing
                columns[f.column] = pa.Column(nullable=True, checks=checks)
            if f.required:
                code = f"required:{f.column}"
                info = CheckInfo("required", f.column, f, lambda v, fr=fr, en=en:
                                 f"Réponse obligatoire manquante : « {fr} » / Required answer missing: '{en}'")
                first_column = f.columns()[0][0]
                if f.relevant:
                    frame_checks.append(self._check(code, info, lambda d, c=first_column, r=RELEVANT_PREFIX + f.column:
                                                    d[c].notna() | ~d[r].astype(bool), ignore_na=False))
                else:
                    frame_checks.append(self._check(code, info, lambda d, c=first_column: d[c].notna(),
                                                    ignore_na=False))
            if f.xlsform_type == "geopoint" and not table.is_repeat:
                lat, lon = f"{f.column}_latitude", f"{f.column}_longitude"
                code = f"gps_in_mali:{f.column}"
                info = CheckInfo("gps_in_mali", f.column, f, lambda v, fr=fr, en=en:
                                 f"Le point GPS « {fr} » est hors du Mali (latitude et longitude inversées ?) / "
                                 f"The GPS point '{en}' is outside Mali (latitude and longitude swapped?)")
                frame_checks.append(self._check(code, info, lambda d, lat=lat, lon=lon: d[lat].isna() | (
                    d[lat].between(*MALI_LATITUDE) & d[lon].between(*MALI_LONGITUDE)).fillna(False), ignore_na=False))
        self.schema = pa.DataFrameSchema(columns, checks=frame_checks, strict=False, coerce=False)

    def _check(self, code: str, info: CheckInfo, fn: Callable, ignore_na: bool = True) -> pa.Check:
        self.catalogue[code] = info
        return pa.Check(fn, error=code, ignore_na=ignore_na)

    def validate(self, frame: pd.DataFrame, submission_ids: dict[str, int | None]) -> list[Issue]:
        if frame.empty:
            return []
        try:
            self.schema.validate(frame, lazy=True)
            return []
        except pa.errors.SchemaErrors as errors:
            cases = errors.failure_cases
        issues: list[Issue] = []
        # A frame-wide check reports each failing row once per column: keep one per row.
        cases = cases.drop_duplicates(subset=["check", "index"])
        for case in cases.itertuples(index=False):
            info = self.catalogue.get(str(case.check))
            index = case.index
            if info is None or index is None or pd.isna(index):
                raise RuntimeError(f"unexpected validation failure in {self.table.name}: {case}")
            cell = lambda name: frame.at[index, name]  # noqa: E731 - not frame.loc[index]: a whole row is slow to build
            column = info.column
            value = cell(column) if column in frame.columns else None
            if info.code == "gps_in_mali":
                value = f"{cell(f'{column}_latitude')} {cell(f'{column}_longitude')}"
            value_text = None if value is None or (not isinstance(value, list) and pd.isna(value)) else str(value)
            root_uuid = cell("root_uuid")
            issues.append(Issue(
                root_uuid=root_uuid, submission_id=submission_ids.get(root_uuid),
                table_name=self.table.name, column_name=column,
                row_key=cell("row_key") if self.table.is_repeat else None,
                check_code=info.code, value=value_text, severity="error", message=info.message(value_text),
            ))
        return issues


def _constraint_test(f: Field) -> Callable[[pd.Series], pd.Series] | None:
    """The column-wide test of the simple constraints: numeric ranges, date ranges against
    literals and today(), regular expressions. Others are left to Collect."""
    bounds = numeric_bounds(f.constraint) if f.xlsform_type in ("integer", "decimal", "range") else None
    if bounds:
        return lambda s: _in_bounds(s, *bounds)
    dates = date_bounds(f.constraint) if f.xlsform_type in DATE_TYPES else None
    if dates:
        return lambda s: _in_date_bounds(s, *dates)
    regex = _REGEX_CONSTRAINT.match(f.constraint or "")
    if regex and f.xlsform_type in ("text", "barcode"):
        return lambda s: s.str.contains(regex.group(1), regex=True)
    return None


def _in_bounds(series: pd.Series, low: float | pd.Timestamp | None, high: float | pd.Timestamp | None,
               low_in: bool, high_in: bool) -> pd.Series:
    ok = pd.Series(True, index=series.index)
    if low is not None:
        ok &= series >= low if low_in else series > low
    if high is not None:
        ok &= series <= high if high_in else series < high
    return ok


def _in_date_bounds(series: pd.Series, low, high, low_in: bool, high_in: bool) -> pd.Series:
    """Date bounds on a DATE column (python dates) or a TIMESTAMPTZ one (pandas, UTC): a
    date stands for its midnight, as XPath compares a dateTime with a date. today() is read
    now, at validation time. A ``. >= today()`` bound is left to Collect, which checked it
    on the day: read later (a rebuild, a correction) it would refuse every older answer."""
    moments = pd.to_datetime(series, utc=True)
    low = None if low is None or low is TODAY else pd.Timestamp(bound_date(low), tz="UTC")
    high = None if high is None else pd.Timestamp(bound_date(high), tz="UTC")
    return _in_bounds(moments, low, high, low_in, high_in)


def _constraint_message(f: Field, fr: str, en: str) -> Callable[[object], str]:
    """The form's own constraint message, in both languages, with the value that broke it."""
    own = list(f.constraint_message.values())
    own_fr = own[0] if own else f"règle {f.constraint}"
    own_en = own[1] if len(own) > 1 else (own[0] if own else f"rule {f.constraint}")

    def message(value: object) -> str:
        return f"« {fr} » = {value} : {own_fr} / '{en}' = {value}: {own_en}"

    return message


class FormValidator:
    """Validates every table of one form version."""

    def __init__(self, dictionary: FieldDictionary):
        self.dictionary = dictionary
        self.schemas = {name: TableSchema(dictionary, table) for name, table in dictionary.tables.items()}

    def validate(self, tables: dict[str, pd.DataFrame]) -> list[Issue]:
        main = tables[self.dictionary.main_table.name]
        submission_ids = dict(zip(main["root_uuid"], main["submission_id"].astype("object")))
        issues: list[Issue] = []
        for name, schema in self.schemas.items():
            issues.extend(schema.validate(tables[name].reset_index(drop=True), submission_ids))
        return issues
