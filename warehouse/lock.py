"""One writer at a time: an inter-process lock beside the warehouse file.

DuckDB lets one process open a database file for writing; a second writer fails at
once. Terrain's runs (a scheduled sync, a sync started by hand, a rebuild) take this
lock first, so the second one waits its turn for a set time and then stops with a
message that says who holds the warehouse and since when, instead of failing halfway.

The lock is ``fcntl.flock`` on ``<warehouse>.lock`` (``terrain.duckdb.lock``): the
kernel releases it when the holder's process ends, even on a crash, so it is never
left stale. The file holds the holder's pid, purpose and start time, for the message
only. Readers (``terrain sql``, the report) do not take it: DuckDB opens a file a
writer holds for no one else, so they wait for the writer (``read_when_free``).

Within one process the lock is re-entrant: a flow that holds it can call tasks or
subflows that take it again. Writes inside one process are sequenced by the flow.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from warehouse.store import WarehouseError, WarehouseInUse

T = TypeVar("T")

DEFAULT_TIMEOUT = 600.0
POLL_SECONDS = 0.25


class WarehouseBusy(WarehouseError):
    """Another run holds the warehouse for writing, and did not let go in time."""


@dataclass
class _Held:
    fd: int
    count: int


_held: dict[str, _Held] = {}
_registry = threading.Lock()


def lock_path_for(warehouse_path: str | os.PathLike[str]) -> Path:
    path = Path(warehouse_path)
    return path.with_name(path.name + ".lock")


def lock_holder(warehouse_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds the writer lock now (pid, purpose, since, host), or None when nobody does."""
    path = lock_path_for(warehouse_path)
    try:  # read-only: an analyst may read a warehouse whose lock file the service user owns
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # none yet, or not readable: no holder known
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any] | None, name: str) -> tuple[str, str]:
    """Who holds the warehouse, in French and in English."""
    if not holder:
        return f"un autre processus écrit dans {name}", f"another run is writing to {name}"
    since = ""
    try:
        started = dt.datetime.fromisoformat(holder["since"]).astimezone()
        since = f"{started:%H:%M}" if started.date() == dt.date.today() else f"{started:%Y-%m-%d %H:%M}"
    except (KeyError, TypeError, ValueError):
        pass
    where = f"pid {holder.get('pid', '?')}"
    host = holder.get("host") if holder.get("host") != socket.gethostname() else None
    purpose = holder.get("purpose") or "run"
    return (f"un autre processus ({purpose}) écrit dans {name}" + (f" depuis {since}" if since else "")
            + f" ({where}" + (f" sur {host}" if host else "") + ")",
            f"another {purpose} is writing to {name}" + (f" since {since}" if since else "")
            + f" ({where}" + (f" on {host}" if host else "") + ")")


def _busy(holder: dict[str, Any] | None, name: str, timeout: float) -> WarehouseBusy:
    holder_fr, holder_en = _describe(holder, name)
    return WarehouseBusy(f"{holder_fr} ; attendu {timeout:.0f} s ; réessayez plus tard (ou augmentez "
                         f"lock_timeout_seconds)",
                         f"{holder_en}; waited {timeout:.0f} s; try again later (or raise lock_timeout_seconds)")


def read_when_free(warehouse_path: str | os.PathLike[str], read: Callable[[], T], timeout: float = DEFAULT_TIMEOUT,
                   on_wait: Callable[[str, str], None] | None = None, poll: float = POLL_SECONDS) -> T:
    """``read()`` (which opens the warehouse read-only) once no Terrain run writes it:
    DuckDB lets no other process open a file a writer holds, so a query during a sync
    waits for its end (up to ``timeout`` seconds) instead of failing. ``on_wait`` is told
    once, in French and English, who it waits for. A writer outside Terrain (a DuckDB
    session) holds no lock: its WarehouseInUse is waited out the same way."""
    name = Path(warehouse_path).name
    with _registry:
        writing_here = str(lock_path_for(warehouse_path).resolve()) in _held
    if writing_here:  # this process holds the writer lock: no one to wait for (its probe would see itself)
        return read()
    started, told = time.monotonic(), False
    while True:
        holder = lock_holder(warehouse_path)
        refused: WarehouseInUse | None = None
        if holder is None:
            try:
                return read()
            except WarehouseInUse as error:
                refused = error
        if time.monotonic() - started >= timeout:
            raise refused if refused is not None else _busy(holder, name, timeout)
        if on_wait and not told:
            on_wait(*_describe(holder, name))
            told = True
        time.sleep(poll)


class WriterLock:
    """``with WriterLock("terrain.duckdb", timeout=600, purpose="sync"):`` waits up to
    ``timeout`` seconds for the warehouse, polling, then raises WarehouseBusy. ``on_wait``
    is told once, in French and English, who it waits for."""

    def __init__(self, warehouse_path: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT,
                 purpose: str = "sync", poll: float = POLL_SECONDS,
                 on_wait: Callable[[str, str], None] | None = None):
        self.warehouse_path = Path(warehouse_path)
        self.path = lock_path_for(warehouse_path)
        self.timeout = max(0.0, float(timeout))
        self.purpose = purpose
        self.poll = poll
        self.on_wait = on_wait
        self.waited = 0.0
        self._key = str(self.path.resolve())
        self._acquired = False

    def acquire(self) -> "WriterLock":
        with _registry:
            held = _held.get(self._key)
            if held is not None:  # this process holds it already
                held.count += 1
                self._acquired = True
                return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        started, told = time.monotonic(), False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    self.waited = time.monotonic() - started
                    left = self.timeout - self.waited
                    if left <= 0:
                        raise _busy(_read_holder(fd), self.warehouse_path.name, self.timeout) from None
                    if self.on_wait and not told:
                        self.on_wait(*_describe(_read_holder(fd), self.warehouse_path.name))
                        told = True
                    time.sleep(min(self.poll, left))
        except BaseException:
            os.close(fd)
            raise
        self.waited = time.monotonic() - started
        record = {"pid": os.getpid(), "purpose": self.purpose, "host": socket.gethostname(),
                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        with _registry:
            _held[self._key] = _Held(fd=fd, count=1)
        self._acquired = True
        return self

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        with _registry:
            held = _held[self._key]
            held.count -= 1
            if held.count:
                return
            del _held[self._key]
        try:
            os.ftruncate(held.fd, 0)
            fcntl.flock(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["WarehouseBusy", "WriterLock", "lock_holder", "lock_path_for", "read_when_free"]
