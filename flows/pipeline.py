"""Prefect flows: they only sequence small tasks over the plain functions in flows/sync.py."""

from __future__ import annotations

import os

# No internet in the field or here: Prefect's ephemeral server must not try to send telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.progress import make_progress
from flows.sync import SyncSettings, SyncSummary, deployed_asset_uids, resolve_token, sync_asset
from kobo.client import KoboClient
from warehouse.store import Warehouse


def _client(base_url: str, page_size: int) -> KoboClient:
    return KoboClient(base_url, resolve_token(), page_size=page_size)


@task(name="list-projects", cache_policy=NO_CACHE)
def list_projects(base_url: str, page_size: int) -> list[str]:
    with _client(base_url, page_size) as client:
        return deployed_asset_uids(client)


@task(name="sync-project", cache_policy=NO_CACHE)
def sync_project(base_url: str, asset_uid: str, warehouse_path: str, settings: SyncSettings) -> dict:
    logger = get_run_logger()
    with _client(base_url, settings.page_size) as client, Warehouse(warehouse_path) as warehouse:
        summary: SyncSummary = sync_asset(client, warehouse, asset_uid, make_progress(logger.info), settings)
    logger.info("%s: pulled %d (new %d, edited %d), quarantined %d, in %.1f s", summary.form_id, summary.pulled,
                summary.new, summary.edited, summary.quarantined, summary.seconds)
    return summary.as_dict()


@flow(name="sync", log_prints=False)
def sync_flow(base_url: str, asset_uids: list[str] | None = None, warehouse_path: str = "terrain.duckdb",
              page_size: int = 1000, parallel: int = 1, reconcile: str = "auto", download_attachments: bool = True,
              attachments_dir: str | None = None) -> list[dict]:
    """Syncs the given KoboToolbox projects (default: every deployed one) into the warehouse.
    The token is read from KOBO_TOKEN or the Secret block 'kobo-token', never a parameter."""
    settings = SyncSettings(page_size=page_size, parallel=parallel, reconcile=reconcile,
                            download_attachments=download_attachments, attachments_dir=attachments_dir)
    uids = asset_uids or list_projects(base_url, page_size)
    return [sync_project(base_url, uid, warehouse_path, settings) for uid in uids]
