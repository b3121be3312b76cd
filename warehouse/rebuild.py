"""Rebuilding the clean tables from raw: everything but raw can be rebuilt (contract 2).

Each submission is typed again with the dictionary of the version it was collected
with, as stored in meta, so a rebuild needs no network and gives the same tables."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from warehouse.load import FormLoader
from warehouse.store import Warehouse, quote

CHUNK = 5000


@dataclass
class RebuildResult:
    asset_uid: str
    form_id: str
    submissions: int
    quarantined: int


def rebuild_asset(warehouse: Warehouse, asset_uid: str, roots: set[str] | None = None) -> RebuildResult:
    """Retypes the project's submissions (or only ``roots``) from raw, in one transaction."""
    form_id = warehouse.con.execute("SELECT any_value(form_id) FROM raw.submissions WHERE asset_uid = ?",
                                    [asset_uid]).fetchone()[0]
    current = next(d for d in warehouse.latest_dictionaries() if d.form_id == form_id)
    loader = FormLoader(warehouse, current, asset_uid,
                        version_lookup=lambda version_uid: warehouse.dictionary_for(asset_uid, version_uid))
    now = dt.datetime.now(dt.timezone.utc)
    con = warehouse.con
    with warehouse.transaction():
        # Every submission of the project (or the chosen ones), in chunks of CHUNK by _id.
        con.execute("CREATE OR REPLACE TEMP TABLE rebuild_roots AS SELECT root_uuid, "
                    "(row_number() OVER (ORDER BY min(submission_id)) - 1) // $chunk AS chunk "
                    "FROM raw.submissions WHERE asset_uid = $asset_uid AND (CAST($chosen AS VARCHAR[]) IS NULL "
                    "OR list_contains(CAST($chosen AS VARCHAR[]), root_uuid)) GROUP BY root_uuid",
                    {"chunk": CHUNK, "asset_uid": asset_uid, "chosen": sorted(roots) if roots is not None else None})
        for table in loader.form_tables():
            con.execute(f"DELETE FROM {quote(table)} WHERE root_uuid IN (SELECT root_uuid FROM rebuild_roots)")
        total = con.execute("SELECT count(*) FROM raw.submissions WHERE asset_uid = ? AND is_current AND deleted_at "
                            "IS NULL AND root_uuid IN (SELECT root_uuid FROM rebuild_roots)", [asset_uid]).fetchone()[0]
        chunks = con.execute("SELECT coalesce(max(chunk) + 1, 0) FROM rebuild_roots").fetchone()[0]
        quarantined = sum(loader.retype_from_raw("SELECT root_uuid FROM rebuild_roots WHERE chunk = ?", [chunk], now)
                          for chunk in range(chunks))
    loader.run_warehouse_checks(everything=True)  # the clean rows were deleted up front, their groups unnoted
    return RebuildResult(asset_uid=asset_uid, form_id=form_id, submissions=total, quarantined=quarantined)


@dataclass
class AppliedCorrections:
    """What applying a corrections file did."""

    rebuilt: list[RebuildResult]
    problems: list[str]  # this file's lines not applied, each with its line number
    earlier_problems: list[str]  # lines of earlier files still not applied (outdated, targeting nothing)
    still_quarantined: list[tuple[str, int, str]]  # (root_uuid, _id, reasons) of the retyped still kept out


def apply_corrections_file(warehouse: Warehouse, path: Path) -> AppliedCorrections:
    """Imports the corrections file and retypes the submissions whose corrections changed;
    says which lines were not applied (this file's by their line), and which retyped
    submissions are still kept out, and why."""
    from validation.corrections import import_corrections, last_line_of_each_answer, read_corrections

    rows = read_corrections(path)
    lines = {answer: row["line"] for answer, row in last_line_of_each_answer(rows).items()}
    now = dt.datetime.now(dt.timezone.utc)
    with warehouse.transaction():
        result = import_corrections(warehouse.con, rows, str(path), now)
    assets = [r[0] for r in warehouse.con.execute("SELECT DISTINCT asset_uid FROM raw.submissions ORDER BY 1").fetchall()]
    rebuilt = [rebuild_asset(warehouse, uid, result.changed_roots) for uid in assets] if result.changed_roots else []
    problems: list[tuple[int, str]] = []
    earlier: list[str] = []
    for root, name, row_key, problem, source in warehouse.con.execute(
            "SELECT root_uuid, field, row_key, problem, source_file FROM meta.corrections "
            "WHERE status IN ('no_target', 'outdated') ORDER BY ALL").fetchall():
        answer = f"{root} {name}" + (f" (row_key {row_key})" if row_key else "")
        line = lines.get((root, name, row_key))
        if line is None:
            earlier.append(f"{Path(source).name} : {answer} : {problem}")
        else:
            problems.append((line, f"{path.name} ligne {line} / line {line} : {answer} : {problem}"))
    # Retyped for an applied correction, and still kept out (not for a line that targets
    # nothing, is outdated or was cancelled: those corrected nothing).
    still = warehouse.con.execute(
        "SELECT root_uuid, submission_id, reasons FROM quality.quarantine "
        "WHERE list_contains(CAST($roots AS VARCHAR[]), root_uuid) "
        "AND root_uuid IN (SELECT root_uuid FROM meta.corrections WHERE status = 'applied') ORDER BY submission_id",
        {"roots": sorted(result.changed_roots)}).fetchall()
    return AppliedCorrections(rebuilt, [text for _, text in sorted(problems)], earlier, still)


def rebuild_all(warehouse: Warehouse) -> list[RebuildResult]:
    assets = [r[0] for r in warehouse.con.execute("SELECT DISTINCT asset_uid FROM raw.submissions ORDER BY 1").fetchall()]
    return [rebuild_asset(warehouse, asset_uid) for asset_uid in assets]
