"""Reliability benchmark (issue #8): syncs killed at random points and fault storms,
each compared with a calm, uninterrupted sync. Run by hand:

    .venv/bin/python bench/reliability.py                        # the full run (sizes below)
    .venv/bin/python bench/reliability.py --killed-size 20000 --trials 3 --storm-size 5000

Killed runs: a local KoboToolbox-compatible server (its own process) holds 100,000
household submissions (2,000 generated ones cloned with new ids, household ids and GPS).
Two calm syncs run side by side: one is the reference warehouse, both must be equal, and
their duration is the expected duration of a sync under the trials' load. Then each trial
(10 by default, two at a time, seeded) starts the sync (pages of 1,000) in a subprocess,
SIGKILLs it at a random time within what is left of that duration (1 to 3 times, each
restart resuming), and lets a last run finish; its warehouse is compared with the
reference. A restart opens a warehouse whose process was killed: DuckDB replays its
write-ahead log. Kill times are reached by progress (the reference's pages and time
between them), so a kill never comes after a faster run has ended.

Fault storm: a server with 20,000 submissions fails 20% of the API requests in every
way it can (500, 502, 429, hung requests, truncated bodies, connection resets) while a
sync runs (pages of 250); meanwhile the driver adds, edits and deletes submissions
through the server's /__terrain__/ control endpoints, publishes a new version of the
form through the KoboToolbox API (import + redeploy, under the same faults) once 40% is
pulled, and sends submissions of that version. A second stormy sync picks up what
changed during the first; the warehouse is compared with a calm sync of the server's
final state.

Prints one line per scenario: trials, faults injected, submissions expected, lost and
duplicated (both must be 0), other differences, seconds. Exits 1 if anything was lost,
duplicated or different, or if a run failed.

Sub-commands used by the driver (and the tests): ``serve SIZE SEED`` (the server;
prints url/token/asset as JSON, stays up until stdin closes) and ``sync CONFIG_JSON``
(one sync, printing progress events as JSON lines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clones import FIRST_ID, ID_STEP, POOL, cloned_server, serve_until_stdin_closes  # noqa: E402

ALL_FAULTS = ("500", "502", "429", "timeout", "truncated", "reset")
# Two warnings compare a submission with what the warehouse held when it was checked (the
# village's other GPS points, the enumerator's count that day), so they depend on the order
# and batching of loads (as in tests/test_sync_kobo.py): compared apart, reported, not failed.
KILLED_SIZE, KILLED_TRIALS, STORM_SIZE = 100_000, 10, 20_000


# -- the server process -------------------------------------------------------------------------
def serve(size: int, seed: int = 2026) -> None:
    """A local server holding ``size`` household submissions (bench/clones.py); prints how to
    reach it as JSON and stays up until its stdin closes."""
    serve_until_stdin_closes(cloned_server(size, seed=seed, pool=min(size, POOL), uuid_offset=seed), size=size)


class Server:
    """The server subprocess, and its /__terrain__/ control endpoints (never faulted)."""

    def __init__(self, size: int, seed: int = 2026, log: Path | None = None):
        # Its stderr goes to ``log``: a killed sync leaves connections reset mid-request,
        # which the stdlib HTTP server reports there.
        with (log.open("ab") if log else open(os.devnull, "wb")) as stderr:
            self.process = subprocess.Popen([sys.executable, __file__, "serve", str(size), str(seed)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            cwd=ROOT)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the server process did not start")
        info = json.loads(line)
        self.url, self.token, self.asset, self.size = info["url"], info["token"], info["asset"], info["size"]
        import requests

        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {self.token}"

    def close(self) -> None:
        self.session.close()
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = self.session.request(method, f"{self.url}/__terrain__/{path}", json=body, timeout=120)
        response.raise_for_status()
        return response.json() if response.content else None

    def set_faults(self, **plan: Any) -> dict[str, Any]:
        return self.control("POST", "faults", plan)

    def faults_injected(self) -> dict[str, int]:
        return self.control("GET", "faults")["injected"]

    def client(self, **options: Any):
        from kobo.client import KoboClient

        return KoboClient(self.url, self.token, **options)

    def index(self) -> dict[str, str]:
        """Every submission on the server now: rootUuid -> _uuid (read with retries)."""
        from flows.sync import INDEX_FIELDS

        with self.client(retries=10, backoff=0.01, max_backoff=0.1) as client:
            return {str(r.get("meta/rootUuid") or f"uuid:{r['_uuid']}"): str(r["_uuid"])
                    for page in client.iter_pages(self.asset, fields=INDEX_FIELDS) for r in page.results}


# -- one sync, in its own process, reporting as it goes ---------------------------------------------
_print_lock = threading.Lock()


def emit(event: dict[str, Any]) -> None:
    with _print_lock:
        print(json.dumps(event), flush=True)


def sync_command(config: dict[str, Any]) -> int:
    """Runs sync_asset once on a warehouse, printing events: ``opened`` (the warehouse opened,
    a write-ahead log replayed), ``fetched`` (a page arrived: kind new/index/changed),
    ``loaded`` (a page of new submissions committed: they come a batch at a time), ``done``
    (with the summary)."""
    from flows.sync import Progress, SyncSettings, sync_asset
    from kobo.client import KoboClient
    from warehouse.store import Warehouse

    class ReportingClient(KoboClient):
        def iter_pages(self, uid, after_id=None, fields=None, until_id=None, ids=None):
            kind = "index" if fields is not None else "changed" if ids is not None else "new"
            for page in super().iter_pages(uid, after_id=after_id, fields=fields, until_id=until_id, ids=ids):
                emit({"event": "fetched", "kind": kind, "n": page.size})
                yield page

    class ReportingProgress(Progress):
        def start(self, summary, total):
            emit({"event": "start", "remaining": total})

        def page(self, summary, remaining, started):
            emit({"event": "loaded", "pulled": summary.pulled, "pages": summary.pages})

        def note(self, summary, message):
            emit({"event": "note", "message": message})

    settings = SyncSettings(page_size=config.get("page_size", 1000), reconcile=config.get("reconcile", "auto"),
                            download_attachments=False, prefetch=config.get("prefetch", True),
                            batch_size=config.get("batch_size", SyncSettings.batch_size),
                            reopen_every=config.get("reopen_every", SyncSettings.reopen_every))
    options = {"page_size": settings.page_size, "timeout": tuple(config.get("timeout", (10.0, 130.0))),
               "retries": config.get("retries", 5), "backoff": config.get("backoff", 0.5),
               "max_backoff": config.get("max_backoff", 30.0)}
    emit({"event": "ready"})
    try:
        with ReportingClient(config["url"], config["token"], **options) as client, \
                Warehouse(config["warehouse"]) as warehouse:
            emit({"event": "opened"})
            summary = sync_asset(client, warehouse, config["asset"], progress=ReportingProgress(), settings=settings)
    except Exception as error:  # noqa: BLE001 - reported to the driver
        traceback.print_exc()
        emit({"event": "failed", "error": f"{type(error).__name__}: {error}"})
        return 1
    emit({"event": "done", "summary": summary.as_dict()})
    return 0


class SyncRun:
    """A sync subprocess and the events it printed (read by a thread as they come)."""

    def __init__(self, config: dict[str, Any], log: Path):
        self.started = time.monotonic()
        self.log = log
        with log.open("ab") as stderr:
            self.process = subprocess.Popen([sys.executable, __file__, "sync", json.dumps(config)], cwd=ROOT,
                                            stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.events: list[dict[str, Any]] = []
        self.queue: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.killed = False
        self.killed_at = 0.0
        self.ended = 0.0

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event["at"] = time.monotonic() - self.started
            self.events.append(event)
            self.queue.put(event)
        self.queue.put(None)

    def count(self, event: str, kind: str | None = None) -> int:
        return sum(1 for e in list(self.events) if e["event"] == event and (kind is None or e.get("kind") == kind))

    @property
    def pulled(self) -> int:
        loaded = [e for e in list(self.events) if e["event"] == "loaded"]
        return loaded[-1]["pulled"] if loaded else 0

    def wait_until(self, condition: Callable[["SyncRun"], bool], timeout: float) -> bool:
        """Waits until ``condition`` holds (checked at each event); False if the process ended
        or the time ran out first."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                if self.queue.get(timeout=left) is None:
                    return condition(self)
            except queue.Empty:
                return False
        return True

    def phase(self) -> str:
        """Where the run was, from its last event."""
        events = [e for e in list(self.events) if e["event"] != "note"]
        if not events or events[-1]["event"] in ("ready", "opened"):
            return "starting"
        last = events[-1]
        if last["event"] == "done":
            return "finished"
        if last["event"] == "failed":
            return "failed"
        kind = last.get("kind", "new")
        if kind == "index":
            return "reconciling: listing ids"
        if kind == "changed":
            return "reconciling: fetching changes"
        return "pulling new submissions"

    def kill(self) -> str:
        """SIGKILL; the phase it interrupted ("finished" if it had already ended)."""
        if self.process.poll() is not None:
            self.reader.join(timeout=10)
            return "finished" if self.process.returncode == 0 else "failed"
        phase = self.phase()
        self.killed_at = time.monotonic() - self.started
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.ended = time.monotonic()
        self.reader.join(timeout=10)
        self.killed = True
        return phase

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            code = -9
        self.ended = time.monotonic()
        self.reader.join(timeout=10)
        return code

    @property
    def seconds(self) -> float:
        return self.events[-1]["at"] if self.events else 0.0

    def error(self) -> str:
        failed = [e for e in self.events if e["event"] == "failed"]
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return (failed[-1]["error"] if failed else f"exit code {self.process.returncode}") + "\n" + tail


def sync_config(server: Server, warehouse: Path, **options: Any) -> dict[str, Any]:
    return {"url": server.url, "token": server.token, "asset": server.asset, "warehouse": str(warehouse),
            "page_size": 1000, **options}


def run_sync(server: Server, warehouse: Path, log: Path, timeout: float = 3600, **options: Any) -> SyncRun:
    """One sync to its end; raises if it fails."""
    run = SyncRun(sync_config(server, warehouse, **options), log)
    if run.finish(timeout) != 0:
        raise RuntimeError(f"the sync into {warehouse.name} failed: {run.error()}")
    return run


def remove_warehouse(path: Path) -> None:
    for suffix in ("", ".wal", ".lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)


# -- comparing a warehouse with a reference ------------------------------------------------------------
@dataclass
class Comparison:
    expected: int = 0  # submissions on the server
    lost: int = 0  # submissions on the server (or in the reference) missing from the warehouse
    duplicated: int = 0  # submissions with several current versions, or clean rows twice
    differences: dict[str, int] = field(default_factory=dict)  # everything else that differs (0 = equal)

    @property
    def different(self) -> int:
        return sum(self.differences.values())

    def problems(self) -> list[str]:
        found = [f"{name}: {count}" for name, count in self.differences.items() if count]
        if self.lost:
            found.insert(0, f"lost: {self.lost}")
        if self.duplicated:
            found.insert(0, f"duplicated: {self.duplicated}")
        return found


def _scalar(con, sql: str) -> int:
    return int(con.execute(sql).fetchone()[0] or 0)


def _symmetric(con, left: str, right: str) -> int:
    """How many rows of ``left`` are not in ``right`` and the other way round (as multisets)."""
    return _scalar(con, f"select count(*) from (({left}) except all ({right}))") + \
        _scalar(con, f"select count(*) from (({right}) except all ({left}))")


def compare_warehouses(candidate: Path, reference: Path, server_index: dict[str, str] | None = None,
                       exact_raw: bool = True) -> Comparison:
    """Compares ``candidate`` with ``reference`` (a calm sync of the same server state).

    Checked: the current raw versions (root uuid and content hash) and, against the
    server's index, that every submission is there in its current version and none the
    server deleted is still current; no submission with two current versions; every
    clean table row for row (columns matched by name); the quarantine; the open issues;
    every raw row of the reference present in the candidate (``exact_raw``: and no other,
    none marked deleted, for runs over an unchanging server); the watermark. ``lost`` counts
    submissions (root uuids) missing, ``duplicated`` submissions with several current
    versions or twin raw rows, plus clean rows beyond their key."""
    import duckdb

    result = Comparison()
    with duckdb.connect() as con:
        con.execute(f"attach '{reference}' as r (read_only)")
        con.execute(f"attach '{candidate}' as c (read_only)")
        if server_index is None:
            server_index = dict(con.execute("select root_uuid, uuid from r.raw.submissions "
                                            "where is_current and deleted_at is null").fetchall())
        import pandas as pd

        frame = pd.DataFrame({"root_uuid": list(server_index), "uuid": list(server_index.values())})
        con.register("server_frame", frame)
        con.execute("create temp table server_index as select * from server_frame")
        con.unregister("server_frame")
        result.expected = len(server_index)

        def current(db: str) -> str:
            return (f"select root_uuid, uuid, content_hash from {db}.raw.submissions "
                    f"where is_current and deleted_at is null")

        tables = [r[0] for r in con.execute(
            "select table_name from information_schema.tables where table_catalog = 'r' and table_schema = 'main' "
            "and table_type = 'BASE TABLE' and table_name <> 'attachments' order by 1").fetchall()]

        def columns(db: str, table: str) -> list[str]:
            return [r[0] for r in con.execute(
                "select column_name from information_schema.columns where table_catalog = ? and table_schema = 'main' "
                "and table_name = ? order by column_name", [db, table]).fetchall()]

        mains = [t for t in tables if "row_key" not in columns("r", t)]
        held = lambda db: " union ".join([f"select root_uuid from {db}.main.\"{t}\"" for t in mains] +  # noqa: E731
                                         [f"select root_uuid from {db}.quality.quarantine"])
        # Lost: on the server but not current in the candidate, or in the reference's clean
        # tables or quarantine but in neither of the candidate's.
        result.lost = _scalar(con, f"""select count(*) from (
            (select root_uuid from server_index except select root_uuid from ({current('c')}))
            union (({held('r')}) except ({held('c')})))""")
        several = _scalar(con, "select count(*) from (select root_uuid from c.raw.submissions where is_current "
                               "group by asset_uid, root_uuid having count(*) > 1)")
        several += _scalar(con, "select count(*) from (select root_uuid from c.raw.submissions "  # no key, no index
                                "group by asset_uid, root_uuid, content_hash having count(*) > 1)")
        clean_twice = 0
        d = result.differences
        d["stale (deleted on the server, current here)"] = _scalar(
            con, f"select count(*) from (select root_uuid from ({current('c')}) "
                 f"except select root_uuid from server_index)")
        d["outdated (an older version is current)"] = _scalar(
            con, f"select count(*) from ({current('c')}) c join server_index s using (root_uuid) "
                 f"where c.uuid <> s.uuid")
        d["current raw versions"] = _symmetric(con, f"select root_uuid, content_hash from ({current('r')})",
                                               f"select root_uuid, content_hash from ({current('c')})")
        raw = ("select asset_uid, root_uuid, uuid, content_hash, submission_id, form_version, md5(payload::varchar) "
               "from {}.raw.submissions")
        d["reference raw rows missing"] = _scalar(
            con, f"select count(*) from (({raw.format('r')}) except ({raw.format('c')}))")
        if exact_raw:  # the server did not change: raw (every version, so the history) is the reference's
            d["raw rows not in the reference"] = _scalar(
                con, f"select count(*) from (({raw.format('c')}) except ({raw.format('r')}))")
            d["raw rows marked deleted"] = _scalar(
                con, "select count(*) from c.raw.submissions where deleted_at is not null")
        for table in tables:
            wanted, have = columns("r", table), columns("c", table)
            if set(wanted) != set(have):
                d[f"{table}: columns"] = len(set(wanted) ^ set(have))
                continue
            listed = ", ".join(f'"{c}"' for c in wanted)
            d[f"{table}: rows"] = _symmetric(con, f'select {listed} from r.main."{table}"',
                                             f'select {listed} from c.main."{table}"')
            key = "root_uuid, row_key" if "row_key" in wanted else "root_uuid"
            clean_twice += _scalar(con, f'select count(*) - count(distinct ({key})) from c.main."{table}"')
        missing = [t for t in tables if not _scalar(
            con, f"select count(*) from information_schema.tables where table_catalog = 'c' and table_name = '{t}'")]
        if missing:
            d["clean tables missing"] = len(missing)
        d["in both a clean table and the quarantine"] = _scalar(
            con, " + ".join(f'(select count(*) from c.main."{t}" where root_uuid in '
                            f"(select root_uuid from c.quality.quarantine))" for t in mains) or "select 0")
        quarantine = "select asset_uid, form_id, root_uuid, errors, reasons from {}.quality.quarantine"
        d["quarantine"] = _symmetric(con, quarantine.format("r"), quarantine.format("c"))
        issue = ("select asset_uid, root_uuid, table_name, column_name, row_key, check_code, value, severity "
                 "from {}.quality.issues where resolved_at is null")
        d["open issues"] = _symmetric(con, issue.format("r"), issue.format("c"))
        d["watermark"] = _symmetric(con, "select asset_uid, watermark from r.meta.sync_state",
                                    "select asset_uid, watermark from c.meta.sync_state")
        result.duplicated = several + clean_twice
    return result


# -- scenario 1: killed runs ------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a scenario found, against its calm reference: ``ok`` when nothing was lost,
    duplicated or different and no run failed."""

    lost: int = 0
    duplicated: int = 0
    differences: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # runs that failed (e.g. a warehouse that did not open)

    @property
    def different(self) -> int:
        return sum(self.differences.values())

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.different or self.failures)


@dataclass
class KilledRuns(Outcome):
    trials: int = 0
    expected: int = 0
    kills: int = 0
    phases: dict[str, int] = field(default_factory=dict)  # what the kills interrupted
    wal_left: int = 0  # kills that left a DuckDB write-ahead log for the next run to replay
    runs_left_running: int = 0  # meta.sync_runs rows still 'running' after the last run (a killed run is
    # marked 'interrupted' by the next one)
    reference_seconds: float = 0.0
    seconds: float = 0.0


def sync_runs_left_running(path: Path) -> int:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("select count(*) from meta.sync_runs where status = 'running'").fetchone()[0]


def progress_timeline(run: SyncRun) -> list[tuple[float, int, int, int]]:
    """(seconds since start, warehouse opened (0/1), submissions committed, pages of ids
    listed) at each step of a calm sync, from its events, ending with its end."""
    timeline, opened, pulled, listed = [(0.0, 0, 0, 0)], 0, 0, 0
    for event in run.events:
        if event["event"] == "opened":
            opened = 1
        elif event["event"] == "loaded":
            pulled = event["pulled"]
        elif event["event"] == "fetched" and event.get("kind") == "index":
            listed += 1
        else:
            continue
        timeline.append((event["at"], opened, pulled, listed))
    timeline.append((run.ended - run.started, opened, pulled, listed))
    return timeline


def kill_point(timeline: list[tuple[float, int, int, int]], committed: int,
               share: float) -> tuple[tuple[int, int, int], float]:
    """A random time within what is left of a calm sync's duration (``share`` of it, from
    where it had committed ``committed`` submissions), as the step a run must reach (warehouse
    opened, submissions committed, pages of ids listed) and the seconds to wait after it.
    Progress, not a clock, so that a run faster than the calm one is still killed at that
    point of its work, never after its end."""
    start = next((step[0] for step in timeline if step[2] >= committed), timeline[-1][0])
    moment = start + share * (timeline[-1][0] - start)
    at, opened, pulled, listed = max((step for step in timeline if step[0] <= moment), key=lambda step: step[0])
    return (opened, pulled, listed), moment - at


def reached(run: SyncRun, committed: int, step: tuple[int, int, int]) -> bool:
    opened, pulled, listed = step
    return run.count("opened") >= opened and committed + run.pulled >= pulled and \
        run.count("fetched", "index") >= listed


def killed_runs(size: int = KILLED_SIZE, trials: int = KILLED_TRIALS, seed: int = 8, page_size: int = 1000,
                plans: list[list[Any]] | None = None, workers: int = 2, folder: Path | None = None,
                report: Callable[[str], None] = print, batch_size: int | None = None,
                reopen_every: int | None = None) -> KilledRuns:
    """Kills syncs of ``size`` submissions and compares each trial's warehouse, after a last
    run that finishes, with a calm sync's.

    Trials run ``workers`` at a time against the one server (a sync uses one core). The
    reference is a calm sync run beside ``workers - 1`` other calm syncs, so its duration is
    what a trial's sync takes under the same load, and the calm syncs must be equal to each
    other. A trial kills 1 to 3 times (seeded per trial), each at a random time within what is
    left of that duration, reached by progress (see ``kill_point``). ``plans`` (one list per
    trial) gives set kill points instead:
    ``("loaded", n)`` kills as soon as the run has committed n pages of new submissions,
    ``("index", n)`` once it has listed n pages of ids in the reconciliation, ``("opened", 1)``
    once the warehouse is open; a number kills after that many seconds. ``batch_size``: the
    syncs' (default SyncSettings'), i.e. how many submissions each commit holds;
    ``reopen_every``: how often the syncs reopen their warehouse (default SyncSettings')."""
    from concurrent.futures import ThreadPoolExecutor

    options: dict[str, Any] = {"page_size": page_size, **({"batch_size": batch_size} if batch_size else {}),
                               **({"reopen_every": reopen_every} if reopen_every else {})}

    started = time.monotonic()
    result = KilledRuns(trials=len(plans) if plans is not None else trials, expected=size)
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="terrain-killed-")) if own else folder
    lock = threading.Lock()
    try:
        with Server(size, log=folder / "server.log") as server:
            server_index = server.index()
            reference = folder / "reference.duckdb"
            calm = [SyncRun(sync_config(server, folder / f"calm{k}.duckdb" if k else reference, **options),
                            folder / f"calm{k}.log") for k in range(max(1, workers))]
            for k, run in enumerate(calm):
                if run.finish(timeout=7200) != 0:
                    raise RuntimeError(f"a calm sync failed: {run.error()}")
            result.reference_seconds = max(run.ended - run.started for run in calm)
            report(f"  calm sync of {size:,} ({len(calm)} side by side): {result.reference_seconds:.1f} s")
            for k in range(len(calm)):
                check = compare_warehouses(folder / f"calm{k}.duckdb" if k else reference, reference, server_index)
                if check.lost or check.duplicated or check.different:
                    result.failures.append(f"calm sync {k} differs from the server or the reference: "
                                           f"{check.problems()}")
                if k:
                    remove_warehouse(folder / f"calm{k}.duckdb")

            timeline = progress_timeline(calm[0])

            def trial(number: int) -> None:
                rng = random.Random(f"{seed}:{number}")
                plan = list(plans[number]) if plans is not None else \
                    [("share", rng.random()) for _ in range(rng.randint(1, 3))]
                path, log = folder / f"trial{number}.duckdb", folder / f"trial{number}.log"
                remove_warehouse(path)
                interrupted, phases, kills, wal_left, failures = [], [], 0, 0, []
                committed = 0  # submissions the killed runs had committed (from their page events)
                run = None
                try:
                    for point in plan:
                        run = SyncRun(sync_config(server, path, **options), log)
                        if isinstance(point, tuple) and point[0] == "share":
                            step, delay = kill_point(timeline, committed, point[1])
                            run.wait_until(lambda r: reached(r, committed, step), timeout=3600)
                            run.wait_until(lambda r: False, timeout=delay)
                        elif isinstance(point, tuple):
                            event, count = point
                            kind = "index" if event == "index" else None
                            name = "fetched" if event == "index" else event
                            run.wait_until(lambda r: r.count(name, kind) >= count, timeout=3600)
                        else:
                            run.wait_until(lambda r: False, timeout=point)
                        phase = run.kill()
                        committed = min(size, committed + run.pulled)
                        if phase == "failed":
                            failures.append(f"trial {number + 1}: a run failed before its kill: {run.error()}")
                        wal = run.killed and Path(str(path) + ".wal").exists()
                        kills, wal_left = kills + int(run.killed), wal_left + int(wal)
                        phases.append(phase)
                        interrupted.append(f"{phase} at {run.killed_at:.1f} s{' (WAL left)' if wal else ''}")
                finally:
                    if run is not None and run.process.poll() is None:
                        run.kill()
                last = SyncRun(sync_config(server, path, **options), log)
                comparison = None
                if last.finish(timeout=max(1800, 5 * result.reference_seconds)) != 0:
                    failures.append(f"trial {number + 1}: the run after the kills failed: {last.error()}")
                else:
                    comparison = compare_warehouses(path, reference, server_index)
                    running = sync_runs_left_running(path)
                with lock:
                    result.kills += kills
                    result.wal_left += wal_left
                    result.failures.extend(failures)
                    for phase in phases:
                        result.phases[phase] = result.phases.get(phase, 0) + 1
                    if comparison is None:
                        report(f"  trial {number + 1}: FAILED after kills ({'; '.join(interrupted)})")
                        return
                    result.lost += comparison.lost
                    result.duplicated += comparison.duplicated
                    result.runs_left_running += running
                    for name, count in comparison.differences.items():
                        result.differences[name] = result.differences.get(name, 0) + count
                    verdict = "; ".join(comparison.problems()) or "same as the reference"
                    report(f"  trial {number + 1}: killed {'; '.join(interrupted)}; last run {last.seconds:.1f} s: "
                           f"{verdict}")
                if not comparison.problems():
                    remove_warehouse(path)

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for future in [pool.submit(trial, n) for n in range(result.trials)]:
                    future.result()
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


# -- scenario 2: fault storm ----------------------------------------------------------------------------
@dataclass
class Storm(Outcome):
    expected: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def second_version(folder: Path):
    """Version 2 of the household survey: 'water_treated' removed, 'latrine' added (as a
    data manager would change it), built in ``folder``."""
    from forms.build import build_form, project_form

    household = project_form("household_survey")
    text = household.source.path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "| water_treated |" not in line]
    text = "\n".join(lines).replace(f"| household_survey | {household.version} |",
                                    f"| household_survey | {int(household.version) + 1} |")
    anchor = next(line for line in text.splitlines() if "| water_point_id |" in line)
    cells = anchor.split("|")
    cells[2:6] = [" select_one yes_no ", " latrine ", " Le ménage a-t-il une latrine ? ",
                  " Does the household have a latrine? "]
    cells[6:-1] = [" "] * (len(cells) - 7)
    text = text.replace(anchor, anchor + "\n" + "|".join(cells))
    path = folder / "v2" / "household_survey.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return build_form(path)


CHANGE_KINDS = ["add", "edit", "delete"]


class Changer:
    """Adds, edits and deletes submissions while a sync runs, through the control endpoints,
    and publishes the form's second version through the KoboToolbox API once the sync has
    pulled ``deploy_at`` of the submissions."""

    def __init__(self, server: Server, folder: Path, seed: int, deploy_at: float = 0.4, pace: float = 0.25):
        from kobo.generate import Deployment, SubmissionGenerator  # noqa: F401

        self.server, self.rng, self.deploy_at, self.pace = server, random.Random(seed), deploy_at, pace
        self.ids = [FIRST_ID + i * ID_STEP for i in range(server.size)]
        self.counts = {"added": 0, "edited": 0, "deleted": 0, "new versions deployed mid-sync": 0}
        self.v2 = second_version(folder)
        self.generator = None
        self.version_uid: str | None = None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.generated = 0
        self.steps = 0

    def start(self, run: SyncRun, expected: int) -> None:
        def work() -> None:
            try:
                while not self.stop.wait(self.rng.uniform(0.2, 1.8) * self.pace):
                    if self.version_uid is None and run.pulled >= self.deploy_at * expected:
                        self.deploy()
                        key = "new versions deployed mid-sync" if run.process.poll() is None else \
                            "new versions deployed after the sync"
                        self.counts[key] = self.counts.get(key, 0) + 1
                    self.step()
            except BaseException as error:  # noqa: BLE001 - reported by the driver
                self.error = error

        self.thread = threading.Thread(target=work, name="changer", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=120)
        if self.error:
            raise RuntimeError(f"changing the server during the sync failed: {self.error!r}")

    def deploy(self) -> None:
        """Publishes version 2 (import into the project, then redeploy) over the faulty API,
        as `terrain forms publish` does; a failed attempt is tried again."""
        from kobo.errors import KoboError
        from kobo.generate import Deployment, SubmissionGenerator
        from kobo.publish import publish_form

        quiet = logging.getLogger("kobo")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the driver's retries are not news
        try:
            for attempt in range(20):
                try:
                    with self.server.client(retries=8, backoff=0.01, max_backoff=0.1, timeout=(1.0, 2.0)) as client:
                        published = publish_form(client, self.v2, poll_interval=0.05, timeout=60,
                                                 existing_uid=self.server.asset)
                    break
                except KoboError:
                    if attempt == 19:
                        raise
        finally:
            quiet.setLevel(level)
        self.version_uid = published.version_id
        self.generator = SubmissionGenerator(self.v2.dictionary, Deployment(self.server.asset, self.version_uid, "x"),
                                             seed=self.rng.randrange(10 ** 6), mistake_rate=0.02)

    def step(self) -> None:
        """One change: the first three are one of each kind, so that even a short sync sees an
        add, an edit and a delete; then random, weighted towards adds and edits."""
        if self.steps < len(CHANGE_KINDS):
            action = CHANGE_KINDS[self.steps]
        else:
            action = self.rng.choices(CHANGE_KINDS, weights=[4, 4, 2])[0]
        self.steps += 1
        uid = self.server.asset
        if action == "add":
            count = self.rng.randint(1, 15)
            if self.generator is None:
                added = self.server.control("POST", f"assets/{uid}/submissions",
                                            {"generate": count, "seed": self.rng.randrange(10 ** 6)})
            else:
                answers = []
                for _ in range(count):
                    self.generated += 1
                    doc = self.generator.submission(self.generated, 0)
                    answers.append({k: v for k, v in doc.items()
                                    if not k.startswith(("_", "meta/", "formhub/"))})
                added = self.server.control("POST", f"assets/{uid}/submissions", answers)
            self.ids.extend(doc["_id"] for doc in added)
            self.counts["added"] += len(added)
        elif action == "edit":
            target = self.rng.choice(self.ids)
            changes = {"identification/head_age": str(self.rng.randint(18, 90))}
            if self.rng.random() < 0.3:
                changes["water/water_trip_minutes"] = str(self.rng.randint(0, 120))
            self.server.control("PATCH", f"assets/{uid}/submissions/{target}", changes)
            self.counts["edited"] += 1
        else:
            target = self.ids.pop(self.rng.randrange(len(self.ids)))
            self.server.control("DELETE", f"assets/{uid}/submissions/{target}")
            self.counts["deleted"] += 1


def fault_storm(size: int = STORM_SIZE, seed: int = 20, page_size: int = 250, rate: float = 0.2,
                pace: float = 0.25, deploy_at: float = 0.4, folder: Path | None = None,
                report: Callable[[str], None] = print) -> Storm:
    """A sync through 20% faults of every kind while submissions arrive, are edited and
    deleted and a new form version is deployed; then a second stormy sync; compared with a
    calm sync of the final state."""
    started = time.monotonic()
    result = Storm()
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="terrain-storm-")) if own else folder
    stormy_client = {"timeout": (0.5, 1.0), "retries": 10, "backoff": 0.02, "max_backoff": 0.2}
    try:
        with Server(size, seed=seed, log=folder / "server.log") as server:
            server.set_faults(rate=rate, kinds=list(ALL_FAULTS), timeout_seconds=0.4, retry_after=0, seed=seed,
                              max_in_a_row=3)
            stormy = folder / "storm.duckdb"
            changer = Changer(server, folder, seed, deploy_at=deploy_at, pace=pace)
            first = SyncRun(sync_config(server, stormy, page_size=page_size, **stormy_client), folder / "storm.log")
            changer.start(first, size)
            code = first.finish(timeout=1800)
            changer.finish()
            result.changes = dict(changer.counts)
            result.runs.append({"run": "stormy, with changes", "seconds": first.seconds, "code": code})
            if code != 0:
                result.failures.append(f"the first stormy sync failed: {first.error()}")
            if not result.changes.get("new versions deployed mid-sync"):
                result.failures.append("the new form version was not deployed during the sync (it ended too soon)")
            second = SyncRun(sync_config(server, stormy, page_size=page_size, **stormy_client), folder / "storm.log")
            code = second.finish(timeout=1800)
            result.runs.append({"run": "stormy, after the changes", "seconds": second.seconds, "code": code})
            if code != 0:
                result.failures.append(f"the second stormy sync failed: {second.error()}")
            result.faults = server.faults_injected()
            server.set_faults(rate=0)
            server_index = server.index()
            result.expected = len(server_index)
            calm = folder / "calm.duckdb"
            run_sync(server, calm, folder / "calm.log", page_size=page_size)
            comparison = compare_warehouses(stormy, calm, server_index, exact_raw=False)
            result.lost, result.duplicated = comparison.lost, comparison.duplicated
            result.differences = comparison.differences
            result.differences["submissions of the new version missing"] = new_version_missing(
                stormy, changer.version_uid, server_index)
            report(f"  storm: {result.changes}, faults {result.faults}; "
                   f"{'; '.join(comparison.problems()) or 'same as the calm sync'}")
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def new_version_missing(path: Path, version_uid: str | None, server_index: dict[str, str]) -> int:
    """Submissions of the new form version on the server that are not typed with it (clean
    or quarantined) in the warehouse; also checks that its new column exists."""
    import duckdb

    if not version_uid:
        return 0
    with duckdb.connect(str(path), read_only=True) as con:
        columns = {r[0] for r in con.execute("select column_name from information_schema.columns "
                                             "where table_name = 'households'").fetchall()}
        on_server = {r[0] for r in con.execute(
            "select root_uuid from raw.submissions where is_current and deleted_at is null and form_version = ?",
            [version_uid]).fetchall()} & set(server_index)
        typed = {r[0] for r in con.execute("select root_uuid from households where form_version = ? union "
                                           "select root_uuid from quality.quarantine", [version_uid]).fetchall()}
    return len(on_server - typed) + (0 if "latrine" in columns else 1)


# -- the benchmark --------------------------------------------------------------------------------------
def print_table(killed: KilledRuns | None, storm: Storm | None) -> None:
    rows = [("scenario", "trials", "faults injected", "expected", "lost", "duplicated", "different", "seconds")]
    if killed:
        rows.append(("killed runs", str(killed.trials), f"SIGKILL x{killed.kills}",
                     f"{killed.expected:,} x {killed.trials}", str(killed.lost), str(killed.duplicated),
                     str(killed.different), f"{killed.seconds:.0f}"))
    if storm:
        faults = " ".join(f"{k}:{v}" for k, v in storm.faults.items()) + f" (total {sum(storm.faults.values())})"
        rows.append(("fault storm", "1", faults, f"{storm.expected:,}", str(storm.lost), str(storm.duplicated),
                     str(storm.different), f"{storm.seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) if i in (0, 2) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
    print()
    if killed:
        phases = ", ".join(f"{v} {k}" for k, v in sorted(killed.phases.items()))
        print(f"killed runs: {killed.expected:,} submissions, pages of 1,000; calm sync "
              f"{killed.reference_seconds:.0f} s; the kills interrupted: {phases}; {killed.wal_left} left a "
              f"DuckDB WAL, replayed by the next run; "
              f"{killed.runs_left_running} runs still 'running' in meta.sync_runs after the last runs (killed runs "
              f"are marked 'interrupted' by the next)")
    if storm:
        print("fault storm: 20% of API requests failed; during the first sync: "
              + ", ".join(f"{v} {k}" for k, v in storm.changes.items()) + "; runs: "
              + ", ".join(f"{r['run']} {r['seconds']:.0f} s" for r in storm.runs))
    for failure in (killed.failures if killed else []) + (storm.failures if storm else []):
        print(f"FAILED: {failure}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2026)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "sync":
        return sync_command(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--killed-size", type=int, default=KILLED_SIZE)
    parser.add_argument("--trials", type=int, default=KILLED_TRIALS)
    parser.add_argument("--storm-size", type=int, default=STORM_SIZE)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="killed-run trials at once (a sync uses one core)")
    parser.add_argument("--skip", choices=["killed", "storm"], action="append", default=[])
    parser.add_argument("--reopen-every", type=int, default=None,
                        help="submissions between two reopenings of the warehouse in the killed runs' syncs "
                             "(default SyncSettings'); lower it so kills also land around a reopening")
    args = parser.parse_args()
    started = time.monotonic()
    killed = storm = None
    if "killed" not in args.skip:
        print(f"Killed runs: {args.killed_size:,} submissions, {args.trials} trials (seed {args.seed})...", flush=True)
        killed = killed_runs(args.killed_size, args.trials, seed=args.seed, workers=args.workers,
                             report=lambda m: print(m, flush=True), reopen_every=args.reopen_every)
    if "storm" not in args.skip:
        print(f"Fault storm: {args.storm_size:,} submissions, 20% faults, changes and a new form version "
              f"mid-sync...", flush=True)
        storm = fault_storm(args.storm_size, seed=args.seed, report=lambda m: print(m, flush=True))
    print_table(killed, storm)
    print(f"total {time.monotonic() - started:.0f} s")
    ok = (killed is None or killed.ok) and (storm is None or storm.ok)
    print("RESULT: " + ("nothing lost, nothing duplicated, warehouses equal" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
