"""Reduced versions of the reliability benchmark (issue #8), with the same code as
bench/reliability.py: syncs SIGKILLed at set points and resumed, and a sync through a
storm of faults while submissions arrive, change and disappear and a new form version
is deployed. Each ends with a warehouse equal to a calm, uninterrupted sync's."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import reliability  # noqa: E402

# Kill points per trial: ("loaded", n) once n pages of new submissions are committed (a
# batch of 600 submissions, 3 pages, at a time),
# ("index", n) once n pages of ids are listed by the reconciliation, ("opened", 1) as soon
# as the warehouse is open (the schema written, nothing pulled yet).
KILL_PLANS = [
    [("loaded", 3)],
    [("loaded", 7), ("index", 2)],
    [("opened", 1), ("loaded", 1), ("loaded", 9)],
]


def test_killed_syncs_resume_to_the_warehouse_of_an_uninterrupted_sync(tmp_path: Path) -> None:
    lines: list[str] = []
    # The syncs also reopen their warehouse before every batch but the first (as a sync of
    # 1,000,000 does every 100,000 submissions): kills land around reopenings too.
    result = reliability.killed_runs(size=3000, page_size=200, batch_size=600, plans=KILL_PLANS, folder=tmp_path,
                                     report=lines.append, reopen_every=600)
    details = "\n".join(lines)
    assert result.failures == [], details
    assert result.lost == 0 and result.duplicated == 0, details
    assert {k: v for k, v in result.differences.items() if v} == {}, details
    assert result.trials == 3 and result.kills == 6, details  # every kill met a running sync
    assert result.phases.get("pulling new submissions", 0) >= 3, result.phases
    assert result.phases.get("reconciling: listing ids", 0) >= 1, result.phases
    assert result.wal_left >= 1, details  # a killed run left a write-ahead log, and the next run replayed it
    assert result.runs_left_running == 0, details  # killed runs are marked 'interrupted' in meta.sync_runs


def test_a_fault_storm_with_changes_and_a_new_form_version_mid_sync_ends_as_a_calm_sync(tmp_path: Path) -> None:
    lines: list[str] = []
    result = reliability.fault_storm(size=600, page_size=25, seed=5, deploy_at=0.2, folder=tmp_path,
                                     report=lines.append)
    details = "\n".join(lines + result.failures)
    assert result.failures == [], details
    assert result.lost == 0 and result.duplicated == 0, details
    assert {k: v for k, v in result.differences.items() if v} == {}, details
    assert result.changes["added"] and result.changes["edited"] and result.changes["deleted"], result.changes
    assert result.changes["new versions deployed mid-sync"] == 1, result.changes
    assert sum(result.faults.values()) >= 5 and len([k for k, v in result.faults.items() if v]) >= 3, result.faults
    assert result.expected == 600 + result.changes["added"] - result.changes["deleted"]
