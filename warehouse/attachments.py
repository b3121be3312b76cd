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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from warehouse.store import Warehouse, named_queries

log = logging.getLogger(__name__)
DEFAULT_DIR = Path("attachments")


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


def fetch_pending_attachments(client: Downloader, warehouse: Warehouse, store: AttachmentStore,
                              asset_uid: str) -> AttachmentCounts:
    """Downloads every attachment the current submissions list and the warehouse lacks.
    Each stored file is recorded at once, so a killed run loses at most the file in flight
    (and even that one resumes from its partial download)."""
    counts = AttachmentCounts()
    pending = warehouse.con.execute(named_queries("land_raw.sql")["pending_attachments"],
                                    {"asset_uid": asset_uid}).fetchall()
    for root_uuid, submission_id, attachment_uid, url, xpath, file_name, mimetype in pending:
        if not url:
            counts.failed += 1
            continue
        try:
            sha256, size, path = store.fetch(client, url, asset_uid, attachment_uid)
        except Exception as error:  # noqa: BLE001 - one missing file must not stop the sync
            log.warning("attachment %s of submission %s could not be downloaded: %s", file_name, submission_id, error)
            counts.failed += 1
            continue
        counts.downloaded += 1
        warehouse.con.execute(
            "INSERT INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [asset_uid, attachment_uid, root_uuid, submission_id, xpath, file_name, mimetype, sha256, size,
             str(path), dt.datetime.now(dt.timezone.utc)])
    return counts
