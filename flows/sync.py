"""Syncing KoboToolbox projects into the warehouse: plain functions, testable without
Prefect. The Prefect flows in flows/pipeline.py only call these.

KoboToolbox has no "modified since" and deletes without a trace (kobo-api.md §3.5,
§3.7), so a sync is two passes: an incremental pull of new submissions after the
``_id`` watermark (re-reading a small overlap for late arrivals), and a
reconciliation that lists every ``_id``/``_uuid``/``rootUuid`` to find edits and
hard deletes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import duckdb

from forms.build import dictionary_from_sheets, project_forms
from forms.dictionary import FieldDictionary
from forms.errors import Terminated
from kobo.client import KoboClient, Page
from kobo.content import content_settings, form_id_of, xlsform_from_content
from kobo.errors import ProjectNotFound
from warehouse.attachments import AttachmentStore, fetch_pending_attachments
from warehouse.load import PAGE_COUNTS, FormLoader, PageResult
from warehouse.store import Warehouse, quote

log = logging.getLogger(__name__)
TOKEN_ENV = "KOBO_TOKEN"
SECRET_BLOCK = "kobo-token"
INDEX_FIELDS = ["_id", "_uuid", "meta/rootUuid"]
T = TypeVar("T")


@dataclass(frozen=True)
class SyncSettings:
    """How a sync pulls. Defaults suit a laptop on a slow link from Mali."""

    page_size: int = 1000
    batch_size: int = 2000  # submissions landed, typed, checked and committed together (a kill loses at
    #                         most these; a sync's memory grows with it)
    overlap: int = 100  # submissions re-read below the watermark, for late arrivals
    reopen_every: int = 100_000  # submissions between two reopenings of the warehouse (memory; Warehouse.reopen)
    reconcile: str = "auto"  # "auto" | "always" | "never"
    reconcile_below: int = 50_000  # auto: every sync under this many submissions, else daily
    reconcile_every: dt.timedelta = dt.timedelta(days=1)
    prefetch: bool = True  # fetch the next page while this one is loaded
    parallel: int = 1  # >1: fetch that many _id ranges at once (new submissions only)
    download_attachments: bool = True
    write_back: bool = False  # set KoboToolbox validation statuses: on hold if quarantined, approved once clean
    attachments_dir: str | None = None  # default: "attachments" beside the warehouse file


@dataclass
class SyncSummary:
    """What one sync of one project did; printed, logged and kept in meta.sync_runs."""

    form_id: str
    asset_uid: str
    pulled: int = 0
    new: int = 0
    edited: int = 0
    unchanged: int = 0
    restored: int = 0  # marked deleted before, sent again by the server: back in the clean tables
    quarantined: int = 0
    deleted: int = 0
    attachments: int = 0
    statuses_written: int = 0
    reconciled: bool = False
    pages: int = 0
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None

    def add(self, result: PageResult, pages: int = 1) -> None:
        for name in PAGE_COUNTS:
            setattr(self, name, getattr(self, name) + getattr(result, name))
        self.pages += pages

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    """Reports pages as they land; the command line puts a bar on top of this."""

    report: Callable[[str], None] = field(default=lambda message: log.info(message))

    def start(self, summary: SyncSummary, total: int | None) -> None:
        if total is None:
            self.report(f"{summary.form_id} : soumissions à recevoir, nombre inconnu / unknown number of submissions to pull")
        else:
            self.report(f"{summary.form_id} : {total} soumissions à recevoir / {total} submissions to pull")

    def page(self, summary: SyncSummary, remaining: int, started: float) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = summary.pulled / elapsed
        left = (remaining / rate) if rate else 0.0
        self.report(f"{summary.form_id} : page {summary.pages}, {summary.pulled} soumissions, {rate:.0f}/s, "
                    f"environ {left:.0f} s restantes / {summary.pulled} submissions, about {left:.0f} s left")

    def note(self, summary: SyncSummary, message: str) -> None:
        self.report(f"{summary.form_id} : {message}")

    def finish(self, summary: SyncSummary) -> None:
        pass


def resolve_token() -> str:
    """The KoboToolbox token from KOBO_TOKEN, else from the Prefect Secret block 'kobo-token'."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    try:
        from prefect.blocks.system import Secret

        return Secret.load(SECRET_BLOCK).get()
    except Exception:  # noqa: BLE001 - no block, no API: the client gives the clear message
        return ""


def dictionary_for_asset(asset: dict[str, Any]) -> FieldDictionary:
    """Our own compiled form when the project is one of ours (same form_id and version),
    else one compiled from the project's content as served by KoboToolbox, so any
    project a data manager already runs gets typed tables."""
    content = asset.get("content") or {}
    form_id = form_id_of(content)
    ours = project_forms().get(form_id or "")
    if ours is not None and str(content_settings(content).get("version") or ours.version) == ours.version:
        return ours.dictionary
    sheets = xlsform_from_content(content)
    if not any(s.get("form_id") for s in sheets["settings"]):
        sheets["settings"] = [{**(sheets["settings"][0] if sheets["settings"] else {}), "form_id": asset["uid"]}]
    return dictionary_from_sheets(sheets, origin=f"KoboToolbox project {asset['uid']}",
                                  form_name=form_id or asset["uid"])


def read_stored_versions_again(client: KoboClient, warehouse: Warehouse, asset: dict[str, Any]) -> None:
    """The project's versions stored with an older reading of forms (an older Terrain read
    fewer personal marks) are read again from their forms on the server, once: each gains
    the marks it missed, whether or not a submission of it comes again."""
    for version_uid, stored in warehouse.versions_read_before(asset["uid"]):
        warehouse.bring_up_to_date(stored, version_on_server(client, asset["uid"], version_uid))


def version_on_server(client: KoboClient, asset_uid: str, version_uid: str) -> FieldDictionary | None:
    """An older form version as the server keeps it (``/versions/{uid}/``), compiled;
    None when the server no longer has it."""
    try:
        version = client.get_json(f"api/v2/assets/{asset_uid}/versions/{version_uid}/")
    except ProjectNotFound:
        return None
    return dictionary_for_asset({"uid": asset_uid, "content": version.get("content") or {}})


def version_lookup(client: KoboClient, warehouse: Warehouse, asset: dict[str, Any]) -> Callable[[str], FieldDictionary | None]:
    """Finds the dictionary of an older form version: from the warehouse if it was seen
    before, else from the version's content on the server (``/versions/{uid}/``)."""
    def lookup(version_uid: str) -> FieldDictionary | None:
        known = warehouse.dictionary_for(asset["uid"], version_uid)
        if known is not None:
            return known
        found = version_on_server(client, asset["uid"], version_uid)
        if found is None:
            log.warning("la version %s du formulaire du projet %s est inconnue du serveur : ses soumissions sont "
                        "typées avec la version déployée / form version %s of project %s is unknown to the server; "
                        "its submissions are typed with the deployed version", version_uid, asset["uid"],
                        version_uid, asset["uid"])
        return found

    return lookup


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yields ``items`` while a background thread already fetches the next ones, so the
    network wait of page n+1 overlaps the loading of page n."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            buffer.put((done, error))

    worker = threading.Thread(target=produce, name="page-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def reconciliation_due(warehouse: Warehouse, asset_uid: str, total: int, settings: SyncSettings) -> bool:
    if settings.reconcile == "always":
        return True
    if settings.reconcile == "never":
        return False
    if total < settings.reconcile_below:
        return True
    last = warehouse.last_reconciled(asset_uid)
    return last is None or _now() - last >= settings.reconcile_every


def reconcile(client: KoboClient, warehouse: Warehouse, loader: FormLoader, asset_uid: str,
              summary: SyncSummary, progress: Progress | None) -> None:
    """Lists every submission's identity on the server, fetches what changed or is missing,
    and marks as deleted what the server no longer has."""
    warehouse.start_reconciliation()
    for page in client.iter_pages(asset_uid, fields=INDEX_FIELDS):
        warehouse.add_to_server_index(page.results)
    deleted, changed_ids = warehouse.reconciliation_diff(asset_uid)
    for start in range(0, len(changed_ids), client.page_size):
        chunk = changed_ids[start:start + client.page_size]
        for page in client.iter_pages(asset_uid, ids=chunk):
            summary.add(loader.load_page(page, None, checks=False))
    with warehouse.transaction():
        loader.mark_deleted(deleted, _now())
        warehouse.mark_reconciled(asset_uid, _now())
    summary.deleted += len(deleted)
    summary.reconciled = True
    if progress:
        progress.note(summary, f"rapprochement : {len(changed_ids)} modifiée(s) ou en retard, {len(deleted)} "
                               f"supprimée(s) sur le serveur / reconciled: {len(changed_ids)} changed or late, "
                               f"{len(deleted)} deleted on the server")


def sync_asset(client: KoboClient, warehouse: Warehouse, asset_uid: str, progress: Progress | None = None,
               settings: SyncSettings = SyncSettings()) -> SyncSummary:
    """Pulls new submissions after the project's watermark, page by page, then reconciles
    when due. Each batch of pages is committed on its own, so a cut loses at most one
    batch of work (pulled again by the next sync)."""
    started = time.monotonic()
    asset = client.get_asset(asset_uid)
    read_stored_versions_again(client, warehouse, asset)  # before the stored dictionaries are used
    # A deployed version seen before has its dictionary in the warehouse (kpi versions never
    # change): no form to compile again on every sync.
    deployed = asset.get("deployed_version_id")
    dictionary = (deployed and warehouse.dictionary_for(asset_uid, deployed)) or dictionary_for_asset(asset)
    summary = SyncSummary(form_id=dictionary.form_id, asset_uid=asset_uid)
    loader = FormLoader(warehouse, dictionary, asset_uid, version_lookup=version_lookup(client, warehouse, asset),
                        deployed_version=asset.get("deployed_version_id"))
    run_id = warehouse.start_run(asset_uid, dictionary.form_id, _now())
    try:
        after = warehouse.overlap_start(asset_uid, settings.overlap)
        pages, in_order = _new_pages(client, asset_uid, after, settings)
        first = True
        highest: int | None = None
        for page, result in loader.load_stream(pages, settings.batch_size,
                                               last_id=(lambda page: page.last_id) if in_order else None,
                                               reopen_every=settings.reopen_every):
            if first and progress:
                progress.start(summary, page.remaining)
            first = False
            summary.add(result)
            if page.last_id is not None:
                highest = max(highest or page.last_id, page.last_id)
            if progress:
                progress.page(summary, page.remaining - page.size, started)
        if not in_order and highest is not None:
            warehouse.set_watermark(asset_uid, dictionary.form_id, highest, _now())
        total = int(asset.get("deployment__submission_count") or 0)
        if reconciliation_due(warehouse, asset_uid, total, settings):
            reconcile(client, warehouse, loader, asset_uid, summary, progress)
        if summary.restored and progress:
            progress.note(summary, f"{summary.restored} soumission(s) marquée(s) supprimée(s) renvoyée(s) telles "
                                   f"quelles par le serveur : de nouveau actuelles, et de retour dans les tables "
                                   f"propres / {summary.restored} submission(s) marked deleted were sent again by the "
                                   f"server, unchanged: they are current again, and back in the clean tables")
        loader.retype_settled_duplicates(_now())
        loader.run_warehouse_checks()
        if settings.write_back:
            summary.statuses_written = write_back_statuses(client, warehouse, asset_uid, loader.dictionary)
        if settings.download_attachments:
            folder = settings.attachments_dir or warehouse.path.resolve().parent / "attachments"
            counts = fetch_pending_attachments(client, warehouse, AttachmentStore(folder), asset_uid,
                                               note=(lambda message: progress.note(summary, message)) if progress else None)
            summary.attachments = counts.downloaded
            if counts.failed and progress:
                progress.note(summary, f"{counts.failed} pièce(s) jointe(s) non téléchargée(s) : la prochaine "
                                       f"synchronisation réessaie / {counts.failed} attachments could not be "
                                       f"downloaded; the next sync retries them")
    except BaseException as error:
        # Ctrl+C during a DuckDB query comes out of it as RuntimeError("Query interrupted"):
        # the whole run stops (a KeyboardInterrupt), the other projects are not synced.
        query_interrupted = isinstance(error, (RuntimeError, duckdb.InterruptException)) and \
            str(error) == DUCKDB_INTERRUPTED
        # What stopped it from outside: Ctrl+C, SIGTERM (Prefect's TerminationSignal within
        # a flow, flows.cli's Terminated outside one: both BaseExceptions), or the process
        # exiting. A signal handler's exception raised during a query becomes the context
        # of DuckDB's RuntimeError; Ctrl+C there leaves none (DuckDB handles SIGINT itself).
        stop = error if not isinstance(error, Exception) else None
        if query_interrupted:
            context = error.__context__
            stop = context if isinstance(context, BaseException) and not isinstance(context, Exception) \
                else KeyboardInterrupt()
        summary.status = "interrupted" if stop is not None else "failed"
        if isinstance(stop, KeyboardInterrupt) and not isinstance(stop, Terminated):
            summary.error = "interrompue (Ctrl+C) / interrupted (Ctrl+C)"
        elif stop is not None:
            summary.error = "arrêtée par un signal (SIGTERM) / stopped by a signal (SIGTERM)"
        else:
            summary.error = str(error)
        summary.seconds = round(time.monotonic() - started, 2)
        try:
            warehouse.finish_run(run_id, summary.status, summary.as_dict(), _now())
        except Exception:  # noqa: BLE001 - the warehouse itself failed (e.g. it could not be reopened):
            # the run stays 'running' (the next sync marks it interrupted); the error that matters is raised
            log.warning("impossible d'enregistrer l'échec dans %s / could not record the failed run in %s",
                        warehouse.path, warehouse.path)
        if query_interrupted:
            raise stop from error
        raise
    finally:
        if progress:
            progress.finish(summary)
    summary.seconds = round(time.monotonic() - started, 2)
    warehouse.finish_run(run_id, "ok", summary.as_dict(), _now())
    return summary


# Pages of parallel ranges fetched or waiting ahead of the writer (and as many queued).
# 1,000,000 households, 8 ranges, 200 ms a request: with 3, a peak of 405 MB (the target is
# 400); with 2, 386 and 388 MB, in the same time (316-336 s against 325 s).
RANGE_DEPTH = 2
DUCKDB_INTERRUPTED = "Query interrupted"  # DuckDB 1.5's RuntimeError when SIGINT stops a query


def _new_pages(client: KoboClient, asset_uid: str, after: int | None,
               settings: SyncSettings) -> tuple[Iterable[Page], bool]:
    """The pages of new submissions, and whether they arrive in ``_id`` order (then the
    watermark can move page by page; parallel ranges move it once, at the end)."""
    if settings.parallel <= 1:
        pages = client.iter_pages(asset_uid, after_id=after)
        return (prefetched(pages) if settings.prefetch else pages), True
    last = client.last_submission_id(asset_uid)
    if last is None or (after is not None and last <= after):
        return iter(()), True
    low = after if after is not None else 0
    step = max(1, -(-(last - low) // settings.parallel))
    ranges = [(start, min(start + step, last)) for start in range(low, last, step)]
    return merged_pages(client, asset_uid, ranges, depth=RANGE_DEPTH), False


def merged_pages(client: KoboClient, asset_uid: str, ranges: list[tuple[int, int]], depth: int) -> Iterator[Page]:
    """Fetches several ``_id`` ranges at once, each with its own session, and yields their
    pages as they come; loading stays on the caller's thread (one warehouse writer).
    At most ``depth`` pages are being fetched or wait to be handed over, and ``depth`` more
    wait in the queue, whatever the number of ranges: the writer takes some 0.4 s a page,
    and 8 ranges each holding pages ahead of it took 80 MB (470 MB at 100,000)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    ahead = threading.BoundedSemaphore(depth)
    done = object()
    stop = threading.Event()

    def fetch(low: int, high: int) -> None:
        worker_client = client.copy()
        try:
            pages = worker_client.iter_pages(asset_uid, after_id=low, until_id=high)
            while True:
                with ahead:
                    if stop.is_set():
                        return
                    page = next(pages, None)
                    if page is None:
                        break
                    if stop.is_set():
                        return
                    buffer.put((page, None))
            buffer.put((done, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            buffer.put((done, error))
        finally:
            worker_client.close()

    workers = [threading.Thread(target=fetch, args=r, name=f"range-{r[0]}", daemon=True) for r in ranges]
    for worker in workers:
        worker.start()
    finished = 0
    try:
        while finished < len(workers):
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                finished += 1
                continue
            yield item
    finally:
        stop.set()
        while any(w.is_alive() for w in workers):  # let blocked producers finish their put()
            try:
                buffer.get_nowait()
            except queue.Empty:
                time.sleep(0.05)


ON_HOLD, APPROVED = "validation_status_on_hold", "validation_status_approved"


STATUS_FIELDS = ["_id", "_validation_status"]
NO_STATUS = {"_validation_status.uid": {"$exists": False}}  # a Mongo query (kobo-api.md §3.3)
# Before a status is sent: the one Terrain set before (confirmed) becomes ``previous``.
RECORD_STATUS_TO_SEND = """
INSERT INTO meta.status_writes (asset_uid, submission_id, status, written_at, confirmed, previous)
SELECT $asset_uid, unnest(CAST($ids AS BIGINT[])), $status, $now, FALSE, NULL
ON CONFLICT (asset_uid, submission_id) DO UPDATE SET
    previous = CASE WHEN confirmed IS NOT FALSE THEN status ELSE previous END,
    status = excluded.status, written_at = excluded.written_at, confirmed = FALSE
"""
# Once the server took it (or was found holding it).
CONFIRM_STATUSES = ("UPDATE meta.status_writes SET confirmed = TRUE, previous = NULL, written_at = $now "
                    "WHERE asset_uid = $asset_uid AND list_contains(CAST($ids AS BIGINT[]), submission_id)")
# The request never arrived: the server holds the status Terrain had set before.
KEEP_PREVIOUS_STATUSES = ("UPDATE meta.status_writes SET status = previous, confirmed = TRUE, previous = NULL, "
                          "written_at = $now WHERE asset_uid = $asset_uid "
                          "AND list_contains(CAST($ids AS BIGINT[]), submission_id)")
# The server holds neither: the status there is not Terrain's (any more).
FORGET_STATUSES = ("DELETE FROM meta.status_writes WHERE asset_uid = $asset_uid "
                   "AND list_contains(CAST($ids AS BIGINT[]), submission_id)")


def record_status_to_send(warehouse: Warehouse, asset_uid: str, ids: list[int], status: str) -> None:
    """Records a status before it is sent (see meta.status_writes), in its own transaction."""
    with warehouse.transaction():
        warehouse.con.execute(RECORD_STATUS_TO_SEND, {"asset_uid": asset_uid, "ids": ids, "status": status,
                                                      "now": _now()})


def write_back_statuses(client: KoboClient, warehouse: Warehouse, asset_uid: str, dictionary: FieldDictionary) -> int:
    """Tells KoboToolbox what Terrain found: quarantined submissions go "on hold", clean
    ones "approved". Only a status nobody set, or one Terrain set and nobody changed
    since (meta.status_writes), is changed: a supervisor's "not approved", "approved" or
    "on hold" is left alone. Statuses change on the server without the submission
    changing (raw does not see them), so they are read there first, but only where the
    answer matters: the submissions with no status, and those whose wanted status is not
    the one Terrain set (a few requests a sync, not one per 1,000 submissions)."""
    wanted = {row[0]: ON_HOLD for row in warehouse.con.execute(
        "SELECT r.submission_id FROM raw.submissions r JOIN quality.quarantine q USING (asset_uid, root_uuid) "
        "WHERE r.asset_uid = ? AND r.is_current AND r.deleted_at IS NULL", [asset_uid]).fetchall()}
    wanted.update({row[0]: APPROVED for row in warehouse.con.execute(
        f"SELECT submission_id FROM main.{quote(dictionary.main_table.name)} WHERE root_uuid IN "
        f"(SELECT root_uuid FROM raw.submissions WHERE asset_uid = ?)", [asset_uid]).fetchall()})
    ours = {row[0]: (row[1], row[2] is not False, row[3]) for row in warehouse.con.execute(
        "SELECT submission_id, status, confirmed, previous FROM meta.status_writes WHERE asset_uid = ?",
        [asset_uid]).fetchall()}

    on_server: dict[int, str | None] = {}
    for page in client.iter_pages(asset_uid, fields=["_id"], where=NO_STATUS):
        on_server.update((int(row["_id"]), None) for row in page.results)
    # A status Terrain set (and the server took) as it is still wanted needs no reading:
    # on the server it is either that one, or a person's, left alone either way.
    unread = {i for i, status in wanted.items() if i not in on_server and ours.get(i, ())[:2] != (status, True)}
    # An unconfirmed record is read even when its submission is no longer wanted (edited
    # since, or deleted): else it would stay unsettled for good.
    unread = sorted(unread | {i for i, (_, confirmed, _) in ours.items() if not confirmed and i not in on_server})
    for start in range(0, len(unread), client.page_size):
        for page in client.iter_pages(asset_uid, fields=STATUS_FIELDS, ids=unread[start:start + client.page_size]):
            on_server.update((int(row["_id"]), (row.get("_validation_status") or {}).get("uid"))
                             for row in page.results)

    # Unconfirmed records (a run stopped around its request) are settled by what the server
    # holds: the status sent (the request went through), the one Terrain had set before (it
    # did not), or another (a person's since, or none: the record is no longer Terrain's).
    # One the server no longer has (deleted there) is forgotten too.
    sent, not_sent, not_ours = [], [], []
    for i, (status, confirmed, previous) in list(ours.items()):
        if confirmed:
            continue
        if i in on_server and on_server[i] == status:
            sent.append(i)
            ours[i] = (status, True, None)
        elif i in on_server and previous is not None and on_server[i] == previous:
            not_sent.append(i)
            ours[i] = (previous, True, None)
        else:
            not_ours.append(i)
            del ours[i]
    with warehouse.transaction():
        warehouse.con.execute(CONFIRM_STATUSES, {"asset_uid": asset_uid, "ids": sent, "now": _now()})
        warehouse.con.execute(KEEP_PREVIOUS_STATUSES, {"asset_uid": asset_uid, "ids": not_sent, "now": _now()})
        warehouse.con.execute(FORGET_STATUSES, {"asset_uid": asset_uid, "ids": not_ours})

    def terrains(submission_id: int, found: str | None) -> bool:
        """Whether the status found on the server is one Terrain may change: none, or the
        one Terrain set (and the server took)."""
        return found is None or (submission_id in ours and found == ours[submission_id][0])

    written = 0
    for status in (ON_HOLD, APPROVED):
        ids = sorted(i for i, want in wanted.items() if want == status and i in on_server
                     and on_server[i] != status and terrains(i, on_server[i]))
        for start in range(0, len(ids), client.page_size):
            chunk = ids[start:start + client.page_size]
            record_status_to_send(warehouse, asset_uid, chunk, status)
            written += client.set_validation_statuses(asset_uid, chunk, status)
            with warehouse.transaction():
                warehouse.con.execute(CONFIRM_STATUSES, {"asset_uid": asset_uid, "ids": chunk, "now": _now()})
    return written


def deployed_asset_uids(client: KoboClient) -> list[str]:
    return [a["uid"] for a in client.list_assets(deployed_only=True)]


__all__ = ["Page", "Progress", "SyncSettings", "SyncSummary", "dictionary_for_asset", "prefetched", "reconcile",
           "resolve_token", "sync_asset"]
