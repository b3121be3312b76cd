"""Personal data out of what analysts read (issue 5, item 5).

Fields the form marks ``terrain_pii`` (names, phones, exact household GPS) never reach
an analyst as they are. A GPS point is rounded to 0.01° (about 1 km), without altitude
and accuracy. Other personal answers become a salted SHA-256 in the analyst tables (the
same person gives the same hash, so counts and joins still work), or are left out where
no salt may go: a view's definition is stored in the warehouse, and the salt never is.
"""

from __future__ import annotations

from forms.dictionary import Table


def without_personal_data(table: Table, salted: bool, replaced: list[str] | None = None) -> str:
    """The select list of ``t`` (a row of ``table``) without personal data: hashed with
    ``$salt`` when ``salted``, else left out; with the caller's other ``replaced``
    expressions ("<expr> AS <column>", of columns that are not personal)."""
    replaced, excluded = list(replaced or []), []
    for f in table.fields:
        if not f.pii:
            continue
        if f.xlsform_type == "geopoint":
            for part in ("latitude", "longitude"):
                column = f'"{f.column}_{part}"'
                replaced.append(f"round({column}, 2) AS {column}")
            excluded += [f'"{f.column}_altitude"', f'"{f.column}_accuracy"']
        elif f.xlsform_type == "select_multiple" or not salted:
            excluded += [f'"{column}"' for column, _ in f.columns()]
        else:
            column = f'"{f.column}"'
            replaced.append(f"CASE WHEN {column} IS NULL THEN NULL ELSE sha256($salt || CAST({column} AS VARCHAR)) END "
                            f"AS {column}")
    select = "t.*"
    if excluded:
        select += f" EXCLUDE ({', '.join(excluded)})"
    if replaced:
        select += f" REPLACE ({', '.join(replaced)})"
    return select
