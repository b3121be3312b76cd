"""Attachments (photos, audit logs) in a content-addressed store.

A file is stored under its SHA-256 (``ab/abcdef...``), so the same photo is stored
once, a file name from the server never chooses a path on disk, and a download cut
halfway resumes from its partial file on the next sync.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from warehouse.store import Warehouse, named_queries

log = logging.getLogger(__name__)
DEFAULT_DIR = Path("attachments")
DOWNLOAD_WORKERS = 4  # downloads at once: each mostly waits for the server
PROGRESS_SECONDS = 10.0


class Downloader(Protocol):
    def download(self, url: str, destination: Path) -> int: ...


@dataclass
class AttachmentCounts:
    downloaded: int = 0
    failed: int = 0


class AttachmentStore:
    def __init__(self, folder: str | Path = DEFAULT_DIR):
        self.folder = Path(folder)
        self.partial = self.folder / ".partial"

    def path_for(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / sha256

    def partial_path(self, asset_uid: str, attachment_uid: str) -> Path:
        """Where a download in progress is kept; named by a hash, never by server text."""
        key = hashlib.sha256(f"{asset_uid}/{attachment_uid}".encode()).hexdigest()
        return self.partial / f"{key}.part"

    def fetch(self, client: Downloader, url: str, asset_uid: str, attachment_uid: str) -> tuple[str, int, Path]:
        """Downloads (or resumes) one file, then moves it to its content address."""
        self.partial.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(asset_uid, attachment_uid)
        client.download(url, partial)
        digest = hashlib.sha256()
        with partial.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
        final = self.path_for(sha256)
        size = partial.stat().st_size
        if final.exists():
            partial.unlink()
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, final)
        return sha256, size, final


# What a failed listing leaves undone: the data is landed already.
ATTACHMENTS_NOT_LISTED = ("les pièces jointes à télécharger n'ont pas pu être listées (les données, elles, sont "
                          "gardées) ; la prochaine synchronisation les téléchargera",
                          "the attachments to download could not be listed (the data itself is kept); the next "
                          "sync will download them")
PENDING_SLICE = 500  # submissions whose payloads one pending_attachments query parses


def pending_attachments(warehouse: Warehouse, asset_uid: str) -> list[tuple]:
    """The attachments the current submissions list and the warehouse lacks, found a
    slice of PENDING_SLICE submissions at a time (see land_raw.sql pending_attachments)."""
    slices = warehouse.con.execute(
        "SELECT min(submission_id), max(submission_id) FROM (SELECT submission_id, (row_number() OVER "
        "(ORDER BY submission_id) - 1) // ? AS slice FROM raw.submissions WHERE asset_uid = ? AND is_current "
        "AND deleted_at IS NULL) GROUP BY slice ORDER BY 1", [PENDING_SLICE, asset_uid]).fetchall()
    query = named_queries("land_raw.sql")["pending_attachments"]
    found: list[tuple] = []
    with warehouse.writing(ATTACHMENTS_NOT_LISTED):  # out of memory, a full disk: a clear message
        for low, high in slices:
            found += warehouse.con.execute(query, {"asset_uid": asset_uid, "low": low, "high": high}).fetchall()
    return found


def fetch_pending_attachments(client: Downloader, warehouse: Warehouse, store: AttachmentStore,
                              asset_uid: str, note: Callable[[str], None] | None = None,
                              workers: int = DOWNLOAD_WORKERS) -> AttachmentCounts:
    """Downloads every attachment the current submissions list and the warehouse lacks,
    ``workers`` at a time (one after the other, each waits a round trip: some minutes for
    a few thousand photos on a slow link), saying how far it is every PROGRESS_SECONDS.
    Each stored file is recorded at once, so a killed run loses at most the files in
    flight (and even those resume from their partial downloads)."""
    counts = AttachmentCounts()
    pending = list({row[2]: row for row in pending_attachments(warehouse, asset_uid)}.values())  # one per attachment
    counts.failed = sum(1 for row in pending if not row[3])
    wanted = [row for row in pending if row[3]]
    if not wanted:
        return counts
    if note:
        note(f"{len(wanted)} pièce(s) jointe(s) à télécharger / {len(wanted)} attachments to download")
    local = threading.local()

    def fetch(row: tuple) -> tuple[str, int, Path]:
        if not hasattr(local, "client"):  # a session of its own per thread
            local.client = client.copy() if hasattr(client, "copy") else client
        return store.fetch(local.client, row[3], asset_uid, row[2])

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="attachment") as pool:
        futures = {pool.submit(fetch, row): row for row in wanted}
        try:
            _record_downloads(warehouse, asset_uid, futures, counts, len(wanted), note)
        except BaseException:
            # Ctrl+C, SIGTERM, a failed write: the downloads not started are dropped (leaving
            # the pool would otherwise run them all first); those under way end on their own.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return counts


def _record_downloads(warehouse: Warehouse, asset_uid: str, futures: dict, counts: AttachmentCounts, total: int,
                      note: Callable[[str], None] | None) -> None:
    """Records each download as it ends, and says how far it is every PROGRESS_SECONDS."""
    said = time.monotonic()
    for future in as_completed(futures):
        root_uuid, submission_id, attachment_uid, url, xpath, file_name, mimetype = futures[future]
        try:
            sha256, size, path = future.result()
        except Exception as error:  # noqa: BLE001 - one missing file must not stop the sync
            log.warning("pièce jointe %s de la soumission %s non téléchargée / attachment %s of submission %s "
                        "could not be downloaded: %s", file_name, submission_id, file_name, submission_id, error)
            counts.failed += 1
            continue
        counts.downloaded += 1
        warehouse.con.execute(
            "INSERT INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [asset_uid, attachment_uid, root_uuid, submission_id, xpath, file_name, mimetype, sha256, size,
             str(path), dt.datetime.now(dt.timezone.utc)])
        if note and time.monotonic() - said >= PROGRESS_SECONDS:
            note(f"pièces jointes : {counts.downloaded + counts.failed} sur {total} / attachments: "
                 f"{counts.downloaded + counts.failed} of {total} done")
            said = time.monotonic()
