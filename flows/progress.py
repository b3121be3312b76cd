"""Progress of a sync: a bar per form on a terminal (rich), plain log lines otherwise
(Prefect logs, cron, CI)."""

from __future__ import annotations

import sys
import time
from typing import Callable

from flows.sync import Progress, SyncSummary


class TerminalProgress(Progress):
    """One rich progress bar per form: pages, submissions, rate and time left."""

    def __init__(self, report: Callable[[str], None], console=None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeRemainingColumn)

        super().__init__(report=report)
        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}/s · page {task.fields[pages]}"), TimeRemainingColumn(),
                                transient=False, console=console)
        self.tasks: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def start(self, summary: SyncSummary, total: int | None) -> None:
        if not self.tasks:
            self.bar.start()
        self.started[summary.asset_uid] = time.monotonic()
        self.tasks[summary.asset_uid] = self.bar.add_task(summary.form_id, total=total, rate="0", pages=0)

    def page(self, summary: SyncSummary, remaining: int, started: float) -> None:
        task = self.tasks.get(summary.asset_uid)
        if task is None:
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        self.bar.update(task, completed=summary.pulled, total=summary.pulled + max(remaining, 0),
                        rate=f"{summary.pulled / elapsed:,.0f}", pages=summary.pages)

    def note(self, summary: SyncSummary, message: str) -> None:
        self.bar.console.print(f"{summary.form_id}: {message}")

    def finish(self, summary: SyncSummary) -> None:
        task = self.tasks.pop(summary.asset_uid, None)
        if task is not None:
            self.bar.update(task, total=summary.pulled, completed=summary.pulled)
        if not self.tasks:
            self.bar.stop()


def make_progress(report: Callable[[str], None], interactive: bool | None = None) -> Progress:
    """A bar when a person watches a terminal, log lines otherwise."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return TerminalProgress(report) if interactive else Progress(report=report)
