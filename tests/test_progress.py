"""Progress: plain log lines when nobody watches a terminal, a bar when someone does."""

from __future__ import annotations

import io

from flows.progress import TerminalProgress, make_progress
from flows.sync import Progress, SyncSettings, sync_asset
from kobo.client import KoboClient
from warehouse.store import Warehouse


def test_log_lines_without_a_terminal(seeded, warehouse_path) -> None:
    lines: list[str] = []
    progress = make_progress(lines.append, interactive=False)
    assert type(progress) is Progress
    with KoboClient(seeded.server.url, seeded.token, page_size=100) as client, Warehouse(warehouse_path) as w:
        sync_asset(client, w, seeded.assets["household_survey"].uid, progress, SyncSettings(download_attachments=False))
    pages = [line for line in lines if ": page " in line]
    assert len(pages) == 3 and "250 submissions to pull" in lines[0]
    assert "page 3, 250 soumissions" in pages[-1] and "/s" in pages[-1] and "s restantes / 250 submissions" in pages[-1]
    assert "s left" in pages[-1]


def test_a_bar_on_a_terminal(seeded, warehouse_path) -> None:
    from rich.console import Console

    assert isinstance(make_progress(lambda line: None, interactive=True), TerminalProgress)
    screen = io.StringIO()
    progress = TerminalProgress(lambda line: None, console=Console(file=screen, force_terminal=True, width=120))
    with KoboClient(seeded.server.url, seeded.token, page_size=100) as client, Warehouse(warehouse_path) as w:
        sync_asset(client, w, seeded.assets["household_survey"].uid, progress, SyncSettings(download_attachments=False))
    shown = screen.getvalue()
    assert "household_survey" in shown and "250/250" in shown and "page 3" in shown
