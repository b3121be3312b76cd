"""Syncing KoboToolbox projects into the warehouse: plain functions, testable without
Prefect. The Prefect flows in flows/pipeline.py only call these."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from forms.build import dictionary_from_sheets, project_forms
from forms.dictionary import FieldDictionary
from kobo.client import KoboClient
from kobo.content import xlsform_from_content
from warehouse.load import FormLoader
from warehouse.store import Warehouse

log = logging.getLogger(__name__)
TOKEN_ENV = "KOBO_TOKEN"
SECRET_BLOCK = "kobo-token"


@dataclass
class SyncSummary:
    """What one sync of one project did; printed, logged and kept in meta.sync_runs."""

    form_id: str
    asset_uid: str
    pulled: int = 0
    new: int = 0
    edited: int = 0
    unchanged: int = 0
    quarantined: int = 0
    pages: int = 0
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    """Reports pages as they land; a terminal bar or log lines are layered on this."""

    report: Callable[[str], None] = field(default=lambda message: log.info(message))

    def page(self, summary: SyncSummary, remaining: int, started: float) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = summary.pulled / elapsed
        left = (remaining / rate) if rate else 0.0
        self.report(f"{summary.form_id}: page {summary.pages}, {summary.pulled} submissions, "
                    f"{rate:,.0f}/s, about {left:,.0f} s left")


def resolve_token() -> str:
    """The KoboToolbox token from KOBO_TOKEN, else from the Prefect Secret block 'kobo-token'."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    try:
        from prefect.blocks.system import Secret

        return Secret.load(SECRET_BLOCK).get()
    except Exception:  # noqa: BLE001 - no block, no API: fall through to the clear message
        return ""


def dictionary_for_asset(asset: dict[str, Any]) -> FieldDictionary:
    """Our own compiled form when the project is one of ours, else one compiled from the
    project's content as served by KoboToolbox."""
    content = asset.get("content") or {}
    settings = content.get("settings") or {}
    form_id = settings.get("id_string") or settings.get("form_id")
    ours = project_forms().get(form_id or "")
    if ours is not None and str(settings.get("version") or ours.version) == ours.version:
        return ours.dictionary
    sheets = xlsform_from_content(content)
    if not any(s.get("form_id") for s in sheets["settings"]):
        sheets["settings"] = [{**(sheets["settings"][0] if sheets["settings"] else {}), "form_id": asset["uid"]}]
    return dictionary_from_sheets(sheets, origin=f"KoboToolbox project {asset['uid']}",
                                  form_name=form_id or asset["uid"])


def sync_asset(client: KoboClient, warehouse: Warehouse, asset_uid: str, progress: Progress | None = None) -> SyncSummary:
    """Pulls every submission after the project's watermark and loads it, page by page."""
    started = time.monotonic()
    asset = client.get_asset(asset_uid)
    dictionary = dictionary_for_asset(asset)
    summary = SyncSummary(form_id=dictionary.form_id, asset_uid=asset_uid)
    loader = FormLoader(warehouse, dictionary, asset_uid)
    run_id = warehouse.start_run(asset_uid, dictionary.form_id, _now())
    try:
        for page in client.iter_pages(asset_uid, after_id=warehouse.watermark(asset_uid)):
            result = loader.load_page(page.results, page.last_id)
            summary.pages += 1
            for name in ("pulled", "new", "edited", "unchanged", "quarantined"):
                setattr(summary, name, getattr(summary, name) + getattr(result, name))
            if progress:
                progress.page(summary, page.remaining - len(page.results), started)
    except Exception as error:
        summary.status, summary.error = "failed", str(error)
        warehouse.finish_run(run_id, "failed", summary.as_dict(), _now())
        raise
    summary.seconds = round(time.monotonic() - started, 2)
    warehouse.finish_run(run_id, "ok", summary.as_dict(), _now())
    return summary


def deployed_asset_uids(client: KoboClient) -> list[str]:
    return [a["uid"] for a in client.list_assets(deployed_only=True)]


def _now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def open_warehouse(path: str | Path) -> Warehouse:
    return Warehouse(path)
