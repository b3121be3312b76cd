"""Prefect flows: they only sequence small tasks over plain functions (flows/sync.py,
kobo/publish.py, warehouse/rebuild.py, warehouse/exports.py).

| flow | what it does | deployment (prefect.yaml) |
|---|---|---|
| ``sync_all`` | pulls every configured project, one ``sync-form`` task each | ``sync-all-hourly`` |
| ``sync_form`` | pulls one project | |
| ``publish_forms`` | imports and deploys our forms in KoboToolbox | |
| ``quality_report`` | refreshes the analyst tables, summarises the quarantine, writes the report | ``quality-report-daily`` |
| ``rebuild`` | rebuilds clean tables, marts and analyst tables from raw (no network) | |
| ``sync_flow`` | the ``terrain sync`` / ``terrain demo`` entry (explicit arguments, no settings file) | |

Every flow reads its settings with ``flows.settings.load_settings`` (``terrain.toml`` plus
environment; parameters override). The KoboToolbox token is never a parameter: it comes
from ``KOBO_TOKEN`` or the Prefect Secret block ``kobo-token``.

One writer at a time: a flow that writes the warehouse holds ``warehouse.lock.WriterLock``
for its whole run; a second one waits ``lock_timeout_seconds`` and then fails with a
message naming the holder. The DuckDB file itself is opened per form and closed between
forms, so readers can open it between two forms.

Each run ends with a summary per form (pulled, new, edited, deleted, quarantined,
seconds, status) as a Prefect markdown artifact and in the logs. A form that fails does
not stop the others; the run then fails at the end, after the summary.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable

import duckdb

# No internet in the field or here: Prefect's ephemeral server must not try to send telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows.progress import make_progress  # noqa: E402
from flows.settings import Settings, load_settings  # noqa: E402
from flows.sync import Progress, SyncSummary, deployed_asset_uids, resolve_token, sync_asset  # noqa: E402
from forms.errors import TerrainError  # noqa: E402
from kobo.client import KoboClient  # noqa: E402
from warehouse.lock import WarehouseBusy, WriterLock  # noqa: E402
from warehouse.store import Warehouse, WarehouseInUse  # noqa: E402

RETRIES = 2
RETRY_DELAYS = [10, 60]  # seconds; the client already retried each request a few times
SUMMARY_COLUMNS = ("formulaire / form", "projet / project", "reçues / pulled", "nouvelles / new",
                   "modifiées / edited", "supprimées / deleted", "en quarantaine / quarantined", "secondes / seconds",
                   "état / status")


# Prefect's words when Ctrl+C or SIGTERM stops a run (prefect/states.py), and Terrain's.
STOPPED_BY_SIGNAL = ("Crash detected! Execution was aborted by an interrupt signal.",
                     "Crash detected! Execution was aborted by a termination signal.")
STOPPED_SAID = ("exécution arrêtée par Ctrl+C ou un signal d'arrêt : ce qui a été enregistré est gardé, la "
                "prochaine synchronisation reprend là / run stopped by Ctrl+C or a stop signal: what was committed "
                "is kept, the next sync resumes from there")


class _NoTracebackForExplainedErrors(logging.Filter):
    """A TerrainError says what happened and what to do, in French and in English;
    Prefect's traceback of it (a failed task, a failed flow) only buried that for a data
    manager. Any other exception keeps its traceback. A run stopped on purpose (Ctrl+C,
    SIGTERM) is not an ERROR "Crash detected!": it is said as a warning, in both languages."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TerrainError):
            record.exc_info, record.exc_text = None, None
        if record.msg in STOPPED_BY_SIGNAL:
            record.msg, record.args = STOPPED_SAID, ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


for _engine_logger in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_engine_logger).addFilter(_NoTracebackForExplainedErrors())


class RunFailed(TerrainError):
    """Some forms of a run failed; the others went through (see the run's summary)."""


def error_texts(error: BaseException | None, fallback: str = "failed") -> dict[str, str]:
    """A failure as a summary keeps it: the bilingual text, and each language apart (to
    compose a run's message in French, then in English)."""
    if isinstance(error, TerrainError):
        return {"error": str(error), "error_fr": error.fr, "error_en": error.en}
    text = str(error) if isinstance(error, BaseException) else fallback
    return {"error": text, "error_fr": text, "error_en": text}


def run_failed(failed: list[dict[str, Any]], total: int, what_fr: str, what_en: str) -> RunFailed:
    """One error for a run whose forms failed in part, naming each failure in both languages."""
    def name(s: dict[str, Any]) -> str:
        return s["form_id"] + (f" ({s['asset_uid']})" if s.get("asset_uid") not in (None, "?") else "")
    return RunFailed(f"{len(failed)} formulaire(s) sur {total} {what_fr} : "
                     + " ; ".join(f"{name(s)} : {s.get('error_fr', s['error'])}" for s in failed),
                     f"{len(failed)} of {total} form(s) {what_en}: "
                     + "; ".join(f"{name(s)}: {s.get('error_en', s['error'])}" for s in failed))


# -- retries only for transient errors ---------------------------------------------------
def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry a task only when it failed on something that may pass
    (a 5xx, 429, timeout or cut connection: ``KoboError.transient``), never on a wrong
    token, a missing project or a busy warehouse."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - the task's own exception, inspected
        return bool(getattr(error, "transient", False))
    return False


class _Recorder(Progress):
    """Passes progress on, and keeps the form's summary, even when the sync fails."""

    def __init__(self, inner: Progress):
        super().__init__(report=inner.report)
        self.inner = inner
        self.summary: SyncSummary | None = None

    def start(self, summary: SyncSummary, total: int | None) -> None:
        self.summary = summary
        self.inner.start(summary, total)

    def page(self, summary: SyncSummary, remaining: int, started: float) -> None:
        self.summary = summary
        self.inner.page(summary, remaining, started)

    def note(self, summary: SyncSummary, message: str) -> None:
        self.inner.note(summary, message)

    def finish(self, summary: SyncSummary) -> None:
        self.summary = summary
        self.inner.finish(summary)


def _client(settings: Settings) -> KoboClient:
    return KoboClient(settings.kobo_url, resolve_token(), page_size=settings.page_size, verify_tls=settings.verify_tls)


# -- tasks ---------------------------------------------------------------------------------
@task(name="list-projects", cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=transient_only)
def list_projects(settings: Settings) -> list[str]:
    with _client(settings) as client:
        return deployed_asset_uids(client)


@task(name="sync-form", task_run_name="sync-form-{asset_uid}", cache_policy=NO_CACHE, retries=RETRIES,
      retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only)
def sync_form_task(settings: Settings, asset_uid: str) -> dict[str, Any]:
    """Syncs one project; holds the writer lock (re-entrant: free when the flow holds it)."""
    logger = get_run_logger()
    recorder = _Recorder(make_progress(logger.info))
    form_id = None
    try:
        with WriterLock(settings.warehouse_path, settings.lock_timeout_seconds, purpose="sync"), \
                _client(settings) as client, \
                Warehouse(settings.warehouse_path, wait_seconds=settings.lock_timeout_seconds) as warehouse:
            form_id = warehouse.form_of(asset_uid)  # named in the summary even if the sync fails before it starts
            summary = sync_asset(client, warehouse, asset_uid, recorder, settings.sync_settings())
    except Exception as error:
        # The flow's summary shows what the form did before it failed.
        done = recorder.summary or (SyncSummary(form_id=form_id, asset_uid=asset_uid) if form_id else None)
        error.terrain_summary = done.as_dict() if done else None  # type: ignore[attr-defined]
        raise
    return summary.as_dict()


@task(name="publish-form", task_run_name="publish-form-{form_id}", cache_policy=NO_CACHE, retries=RETRIES,
      retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only)
def publish_form_task(settings: Settings, form_id: str) -> dict[str, Any]:
    from forms.build import project_form
    from kobo.publish import publish_form

    started = time.monotonic()
    with _client(settings) as client:
        result = publish_form(client, project_form(form_id))
    return {"form_id": form_id, **asdict(result), "seconds": round(time.monotonic() - started, 2)}


@task(name="refresh-analyst-tables", cache_policy=NO_CACHE)
def refresh_analyst_tables_task(settings: Settings) -> list[str]:
    with WriterLock(settings.warehouse_path, settings.lock_timeout_seconds, purpose="quality report"), \
            Warehouse(settings.warehouse_path) as warehouse:
        return warehouse.refresh_analyst_tables()


QUARANTINE_BY_CHECK = """
SELECT i.form_id, i.check_code, count(DISTINCT i.root_uuid) AS submissions, count(*) AS issues
FROM quality.issues i
JOIN quality.quarantine q ON q.asset_uid = i.asset_uid AND q.root_uuid = i.root_uuid
WHERE i.severity = 'error' AND i.resolved_at IS NULL
GROUP BY i.form_id, i.check_code
ORDER BY i.form_id, submissions DESC, i.check_code
"""
QUARANTINE_BY_FORM = """
SELECT s.form_id, count(DISTINCT s.root_uuid) AS submissions, count(DISTINCT q.root_uuid) AS quarantined
FROM raw.submissions s
LEFT JOIN quality.quarantine q ON q.asset_uid = s.asset_uid AND q.root_uuid = s.root_uuid
WHERE s.is_current AND s.deleted_at IS NULL
GROUP BY s.form_id ORDER BY s.form_id
"""


@task(name="quarantine-counts", cache_policy=NO_CACHE)
def quarantine_counts_task(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    with WriterLock(settings.warehouse_path, settings.lock_timeout_seconds, purpose="quality report"), \
            Warehouse(settings.warehouse_path, read_only=True) as warehouse:
        result = {}
        for name, sql in (("by_form", QUARANTINE_BY_FORM), ("by_check", QUARANTINE_BY_CHECK)):
            columns, rows = warehouse.query(sql)
            result[name] = [dict(zip(columns, row)) for row in rows]
        return result


@task(name="write-quality-report", cache_policy=NO_CACHE)
def write_report_task(settings: Settings) -> str | None:
    """The XLSX quality report, when validation/report.py provides ``write_report``."""
    try:
        from validation.report import write_report  # type: ignore[import-not-found]
    except ImportError:
        get_run_logger().info("no XLSX quality report yet (validation.report.write_report is not available)")
        return None
    out = Path(settings.report_dir) / f"quality-{dt.date.today():%Y-%m-%d}.xlsx"
    out.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(settings.warehouse_path, settings.lock_timeout_seconds, purpose="quality report"):
        return str(write_report(settings.warehouse_path, out))


@task(name="rebuild-warehouse", cache_policy=NO_CACHE)
def rebuild_task(settings: Settings) -> list[dict[str, Any]]:
    from warehouse.rebuild import rebuild_all

    with WriterLock(settings.warehouse_path, settings.lock_timeout_seconds, purpose="rebuild"), \
            Warehouse(settings.warehouse_path) as warehouse:
        results = [asdict(r) for r in rebuild_all(warehouse)]
        warehouse.create_marts()
        warehouse.refresh_analyst_tables()
    return results


# -- summaries -----------------------------------------------------------------------------
def markdown_table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |")
    return "\n".join(lines)


def summary_rows(summaries: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s.get("form_id") or "?", s.get("asset_uid") or "?", s.get("pulled", 0), s.get("new", 0),
             s.get("edited", 0), s.get("deleted", 0), s.get("quarantined", 0), s.get("seconds", 0),
             s.get("status", "ok") if not s.get("error") else f"{s.get('status', 'failed')}: {s['error']}"]
            for s in summaries]


def publish_summary(key: str, title: str, markdown: str) -> None:
    """Logs the summary and keeps it as a Prefect artifact of the run."""
    logger = get_run_logger()
    logger.info("%s\n%s", title, markdown)
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=f"## {title}\n\n{markdown}\n", key=key, description=title)
    except Exception as error:  # noqa: BLE001 - the summary is in the logs already
        logger.warning("impossible d'enregistrer l'artefact %s / could not store the %s artifact: %s", key, key, error)


def publish_quality_summary(warehouse_path: str) -> None:
    """The data manager's report in short (per form, top checks, enumerators) as an artifact
    of every sync, the same figures as the XLSX report's."""
    from validation.report import build_report_data, report_markdown

    try:
        with Warehouse(warehouse_path) as warehouse:
            markdown = report_markdown(build_report_data(warehouse.con, dont_know=False, open_issues=False))
    except (TerrainError, duckdb.Error) as error:
        # The forms' data is committed by now: a summary that cannot be made must not fail
        # the run (the daily quality-report flow shows the same error in full).
        get_run_logger().warning("pas de résumé de qualité des données (les données synchronisées sont gardées) / "
                                 "no data-quality summary (the synced data is kept): %s",
                                 (str(error).splitlines() or [type(error).__name__])[0])
        return
    publish_summary("data-quality", "Qualité des données / Data quality", markdown)


def _failed_summary(asset_uid: str, state: Any, error: Any) -> dict[str, Any]:
    """The summary row of a form whose task failed with ``error`` (its state's result)."""
    recorded = getattr(error, "terrain_summary", None)
    summary = dict(recorded) if recorded else SyncSummary(form_id="?", asset_uid=asset_uid).as_dict()
    summary["status"] = "failed"
    summary.update(error_texts(error if isinstance(error, BaseException) else None, state.message or "failed"))
    return summary


def _sync(settings: Settings, asset_uids: Iterable[str], title: str) -> list[dict[str, Any]]:
    """Syncs the projects one after the other under the writer lock; a failed form is
    recorded and the next one goes on. Ends with the summary; raises if any form failed."""
    logger = get_run_logger()
    started = time.monotonic()
    try:
        uids = list(asset_uids) or list_projects(settings)
    except TerrainError as error:
        publish_summary("sync-summary", f"{title} : pas lancée / did not run",
                        f"Les projets n'ont pas pu être listés : {error.fr}\n\nThe projects could not be listed: {error.en}")
        raise
    logger.info("%s : %d projet(s) de %s vers %s / %d project(s) from %s into %s", title, len(uids),
                settings.kobo_url, settings.warehouse_path, len(uids), settings.kobo_url, settings.warehouse_path)
    summaries: list[dict[str, Any]] = []
    try:
        with WriterLock(settings.warehouse_path, settings.lock_timeout_seconds, purpose="sync") as lock:
            if lock.waited >= 1:
                logger.info("attendu %.0f s qu'un autre processus finisse d'écrire l'entrepôt / waited %.0f s for "
                            "another run to finish writing the warehouse", lock.waited, lock.waited)
            form_settings = settings
            for uid in uids:
                state = sync_form_task(form_settings, uid, return_state=True)
                if state.is_completed():
                    summaries.append(state.result())
                    continue
                error = state.result(raise_on_failure=False)
                summaries.append(_failed_summary(uid, state, error))
                if isinstance(error, WarehouseInUse):
                    # Waited lock_timeout_seconds for another program holding the file: the
                    # next forms do not wait as long again each.
                    form_settings = replace(settings, lock_timeout_seconds=0)
            publish_quality_summary(settings.warehouse_path)
    except WarehouseBusy as error:
        publish_summary("sync-summary", f"{title} : pas lancée / did not run",
                        f"L'entrepôt était occupé : {error.fr}\n\nThe warehouse was busy: {error.en}")
        raise
    total = round(time.monotonic() - started, 1)
    failed = [s for s in summaries if s.get("status") != "ok"]
    done = len(summaries) - len(failed)
    publish_summary("sync-summary", f"{title} : {done} formulaire(s) sur {len(summaries)} synchronisé(s) en {total} s"
                    f" / {done} of {len(summaries)} form(s) synced in {total} s",
                    markdown_table(SUMMARY_COLUMNS, summary_rows(summaries)))
    if failed:
        raise run_failed(failed, len(summaries), "en échec", "failed")
    return summaries


# -- flows -----------------------------------------------------------------------------------
@flow(name="sync-all", log_prints=False)
def sync_all(settings_path: str | None = None, kobo_url: str | None = None, forms: list[str] | None = None,
             warehouse_path: str | None = None, attachments_dir: str | None = None,
             download_attachments: bool | None = None, page_size: int | None = None, parallel: int | None = None,
             reconcile: str | None = None, write_back: bool | None = None,
             lock_timeout_seconds: float | None = None) -> list[dict[str, Any]]:
    """Syncs every configured project (``forms`` in terrain.toml; empty: every deployed one),
    each in its own task; one failing form does not stop the others. Parameters left
    empty come from the settings file and the environment."""
    settings = load_settings(settings_path, kobo_url=kobo_url, forms=forms, warehouse_path=warehouse_path,
                             attachments_dir=attachments_dir, download_attachments=download_attachments,
                             page_size=page_size, parallel=parallel, reconcile=reconcile,
                             write_back=write_back, lock_timeout_seconds=lock_timeout_seconds)
    return _sync(settings, settings.forms, "sync-all")


@flow(name="sync-form", log_prints=False)
def sync_form(asset_uid: str, settings_path: str | None = None, kobo_url: str | None = None,
              warehouse_path: str | None = None, attachments_dir: str | None = None,
              download_attachments: bool | None = None, page_size: int | None = None, parallel: int | None = None,
              reconcile: str | None = None, write_back: bool | None = None,
              lock_timeout_seconds: float | None = None) -> dict[str, Any]:
    """Syncs one project (asset uid)."""
    settings = load_settings(settings_path, kobo_url=kobo_url, warehouse_path=warehouse_path,
                             attachments_dir=attachments_dir, download_attachments=download_attachments,
                             page_size=page_size, parallel=parallel, reconcile=reconcile,
                             write_back=write_back, lock_timeout_seconds=lock_timeout_seconds)
    return _sync(settings, [asset_uid], f"sync-form {asset_uid}")[0]


@flow(name="publish-forms", log_prints=False)
def publish_forms(settings_path: str | None = None, kobo_url: str | None = None,
                  form_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Imports our forms (default: every form in forms/sources) into KoboToolbox and deploys
    them, each in its own task; one failing form does not stop the others."""
    from forms.build import project_forms

    settings = load_settings(settings_path, kobo_url=kobo_url)
    results = []
    for form_id in form_ids or sorted(project_forms()):
        state = publish_form_task(settings, form_id, return_state=True)
        if state.is_completed():
            results.append({**state.result(), "status": "ok"})
        else:
            error = state.result(raise_on_failure=False)
            results.append({"form_id": form_id, "asset_uid": "?", "version_id": "", "created": False,
                            "seconds": 0, "status": "failed", **error_texts(error)})
    failed = [r for r in results if r["status"] != "ok"]
    rows = [[r["form_id"], r["asset_uid"], r["version_id"], "créé / created" if r["created"] else "redéployé / redeployed",
             r["seconds"], r["status"] if r["status"] == "ok" else f"échec / failed: {r['error']}"] for r in results]
    done = len(results) - len(failed)
    publish_summary("publish-summary", f"publish-forms : {done} formulaire(s) sur {len(results)} publié(s) sur "
                    f"{settings.kobo_url} / {done} of {len(results)} form(s) published",
                    markdown_table(("formulaire / form", "projet / project", "version", "action", "secondes / seconds",
                                    "état / status"), rows))
    if failed:
        raise run_failed(failed, len(results), "non publié(s)", "could not be published")
    return results


@flow(name="quality-report", log_prints=False)
def quality_report(settings_path: str | None = None, warehouse_path: str | None = None,
                   report_dir: str | None = None, lock_timeout_seconds: float | None = None) -> dict[str, Any]:
    """Refreshes the analyst tables, summarises the quarantine per form and check (an
    artifact and the logs), and writes the XLSX report when validation.report provides it."""
    settings = load_settings(settings_path, warehouse_path=warehouse_path, report_dir=report_dir,
                             lock_timeout_seconds=lock_timeout_seconds)
    with WriterLock(settings.warehouse_path, settings.lock_timeout_seconds, purpose="quality report"):
        tables = refresh_analyst_tables_task(settings)
        counts = quarantine_counts_task(settings)
        report = write_report_task(settings)
    by_form = markdown_table(("formulaire / form", "soumissions / submissions", "en quarantaine / in quarantine",
                              "part / share"),
                             [[r["form_id"], r["submissions"], r["quarantined"],
                               f"{(r['quarantined'] / r['submissions'] if r['submissions'] else 0):.1%}"]
                              for r in counts["by_form"]])
    by_check = markdown_table(("formulaire / form", "contrôle / check", "soumissions en quarantaine / submissions "
                               "in quarantine", "erreurs ouvertes / open errors"),
                              [[r["form_id"], r["check_code"], r["submissions"], r["issues"]]
                               for r in counts["by_check"]])
    markdown = (f"### Par formulaire / Per form\n\n{by_form}\n\n### Par formulaire et contrôle / Per form and "
                f"check\n\n{by_check}\n\nTables d'analyse actualisées / Analyst tables refreshed: {len(tables)}."
                + (f" Rapport / Report: `{report}`." if report else ""))
    publish_summary("quality-report", f"quality-report : {Path(settings.warehouse_path).name}, "
                    f"{dt.date.today():%Y-%m-%d}", markdown)
    return {"tables": tables, "report": report, **counts}


@flow(name="rebuild", log_prints=False)
def rebuild(settings_path: str | None = None, warehouse_path: str | None = None,
            lock_timeout_seconds: float | None = None) -> list[dict[str, Any]]:
    """Rebuilds the clean tables, the marts and the analyst tables from raw (no network)."""
    settings = load_settings(settings_path, warehouse_path=warehouse_path, lock_timeout_seconds=lock_timeout_seconds)
    results = rebuild_task(settings)
    rows = [[r.get("form_id"), r.get("asset_uid"), r.get("submissions"), r.get("quarantined")] for r in results]
    publish_summary("rebuild-summary", f"rebuild : {Path(settings.warehouse_path).name}, {len(results)} "
                    f"formulaire(s) / form(s)",
                    markdown_table(("formulaire / form", "projet / project", "soumissions retypées / submissions "
                                    "retyped", "en quarantaine / in quarantine"), rows))
    return results


@flow(name="sync", log_prints=False)
def sync_flow(base_url: str, asset_uids: list[str] | None = None, warehouse_path: str = "terrain.duckdb",
              page_size: int = 1000, parallel: int = 1, reconcile: str = "auto", download_attachments: bool = True,
              attachments_dir: str | None = None, write_back: bool = False,
              lock_timeout_seconds: float | None = None) -> list[dict]:
    """``terrain sync`` and ``terrain demo``: syncs the given projects (default: every
    deployed one) with exactly these arguments; only the lock timeout comes from the
    settings. The token is read from KOBO_TOKEN or the Secret block 'kobo-token'."""
    from dataclasses import replace

    settings = replace(load_settings(lock_timeout_seconds=lock_timeout_seconds), kobo_url=base_url,
                       forms=tuple(asset_uids or ()), warehouse_path=str(warehouse_path), page_size=page_size,
                       parallel=parallel, reconcile=reconcile, download_attachments=download_attachments,
                       attachments_dir=attachments_dir, write_back=write_back)
    return _sync(settings, settings.forms, "sync")


__all__ = ["RunFailed", "publish_forms", "quality_report", "rebuild", "sync_all", "sync_flow", "sync_form",
           "transient_only"]
