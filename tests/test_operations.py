"""Operations with Prefect: the repository's prefect.yaml deployed to a real `prefect
server` on 127.0.0.1 and run by a process worker against the local KoboToolbox-compatible
server; one writer at a time; `terrain serve`; settings; run summaries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import duckdb
import pytest

from flows.settings import Settings, SettingsError, load_settings
from kobo.seed import seeded_server
from kobo.server import FaultPlan
from warehouse.lock import WarehouseBusy, WriterLock, lock_holder, lock_path_for

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "TERRAIN_")) and k not in ("KOBO_TOKEN", "KOBO_URL")}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_CLI_PROMPT="false",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A real `prefect server start` on 127.0.0.1 with its own PREFECT_HOME."""
    from flows.serve import local_prefect_server

    home = tmp_path_factory.mktemp("prefect-home")
    with local_prefect_server(free_port(), env=base_env(home)) as api_url:
        yield api_url, home


def run(args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def wait_in_log(process: subprocess.Popen, log: Path, text: str, seconds: float) -> None:
    """Until ``text`` shows in the running process's log (it must not end first)."""
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def stop_when_logged(process: subprocess.Popen, log: Path, text: str, signum: int, *, group: bool = False,
                     after: float = 0.0, seconds: float = 90, wait: float = 30) -> None:
    """Sends ``signum`` (to the process group with ``group``) ``after`` seconds once ``text``
    shows in the log, then waits ``wait`` seconds for the end; kills the group if it lasts."""
    try:
        wait_in_log(process, log, text, seconds)
        time.sleep(after)
        (os.killpg if group else os.kill)(process.pid, signum)
        process.wait(timeout=wait)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def duckdb_session(path: Path, read_only: bool = False) -> Iterator[Callable[[float], None]]:
    """A DuckDB session in another process holding the file (an analyst's), until it
    ends; yields ``release_after(seconds)``, which ends it that much later."""
    session = subprocess.Popen([sys.executable, "-c", f"import duckdb, sys\ncon = duckdb.connect({str(path)!r}, "
                                f"read_only={read_only})\nprint('open', flush=True); sys.stdin.readline()"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def release_after(seconds: float) -> None:
        threading.Timer(seconds, lambda: (session.stdin.write("\n"), session.stdin.flush())).start()

    try:
        assert session.stdout.readline().strip() == "open"
        yield release_after
    finally:
        session.communicate("\n", timeout=10)


def counts(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {name: con.execute(sql).fetchone()[0] for name, sql in {
            "households": "select count(*) from households",
            "quarantine": "select count(*) from quality.quarantine",
            "raw": "select count(*) from raw.submissions",
            "runs": "select count(*) from meta.sync_runs",
        }.items()}


# -- deploy from prefect.yaml to a real server, run with a process worker ---------------------
def test_prefect_yaml_deploys_and_a_worker_runs_sync_all(prefect_server, seeded, tmp_path) -> None:
    api_url, home = prefect_server
    env = base_env(home, PREFECT_API_URL=api_url, PWD=str(REPO))
    created = run([str(BIN / "prefect"), "work-pool", "create", "terrain-local", "--type", "process"], env)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    for name in ("sync-all/sync-all-hourly", "quality-report/quality-report-daily", "rebuild/rebuild"):
        assert f"Deployment '{name}' successfully created" in " ".join(deployed.stdout.split()), deployed.stdout

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    warehouse = tmp_path / "terrain.duckdb"
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("sync-all/sync-all-hourly")
            assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == \
                [("0 * * * *", "Africa/Bamako")]
            assert deployment.work_pool_name == "terrain-local" and deployment.parameters == {
                "settings_path": "terrain.toml"}
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
            report = client.read_deployment_by_name("quality-report/quality-report-daily")
            assert [(s.schedule.cron, s.schedule.timezone) for s in report.schedules] == \
                [("0 18 * * *", "Africa/Bamako")]
        flow_run = run_deployment("sync-all/sync-all-hourly", timeout=0, parameters={
            "kobo_url": seeded.server.url, "warehouse_path": str(warehouse), "page_size": 100,
            "download_attachments": False})

    # The token reaches the run through the worker's environment, never as a parameter.
    worker = run([str(BIN / "prefect"), "worker", "start", "--pool", "terrain-local", "--run-once"],
                 base_env(home, PREFECT_API_URL=api_url, KOBO_TOKEN=seeded.token), timeout=150)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            state = client.read_flow_run(flow_run.id).state
            while not state.is_final() and time.monotonic() < deadline:
                time.sleep(1)
                state = client.read_flow_run(flow_run.id).state
            assert state.is_completed(), (state, worker.stdout[-4000:], worker.stderr[-4000:])
            artifacts = client.read_artifacts()
            summary = next(a for a in artifacts if a.key == "sync-summary" and a.flow_run_id == flow_run.id)
            quality = next(a for a in artifacts if a.key == "data-quality" and a.flow_run_id == flow_run.id)
    assert "| household_survey |" in summary.data and "| reçues / pulled | nouvelles / new | modifiées / edited |" in summary.data
    assert "household_survey" in quality.data
    # The token appears in no parameter and no artifact of the run.
    assert seeded.token not in json.dumps(flow_run.parameters)
    assert all(seeded.token not in str(a.data) for a in artifacts)

    generated = len(seeded.assets["household_survey"].submissions)
    got = counts(warehouse)
    assert got["households"] + got["quarantine"] == generated == got["raw"] and got["quarantine"] > 0

    # quality_report and rebuild on the same warehouse, as flow runs on the same server.
    script = ("import json; from flows.pipeline import quality_report, rebuild; "
              f"q = quality_report(warehouse_path={str(warehouse)!r}, report_dir={str(tmp_path / 'reports')!r}); "
              f"r = rebuild(warehouse_path={str(warehouse)!r}); "
              "print(json.dumps({'by_form': q['by_form'], 'report': q['report'], 'rebuilt': r}, default=str))")
    done = run([sys.executable, "-c", script], base_env(home, PREFECT_API_URL=api_url))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["by_form"] == [{"form_id": "household_survey", "submissions": generated,
                                  "quarantined": got["quarantine"]}]
    assert [(r["form_id"], r["submissions"]) for r in result["rebuilt"]] == [("household_survey", generated)]
    report = Path(result["report"])  # validation.report.write_report: the data manager's XLSX
    assert report.parent == tmp_path / "reports" and report.suffix == ".xlsx" and report.stat().st_size > 0
    assert counts(warehouse)["households"] == got["households"]


# -- one writer at a time ------------------------------------------------------------------
def test_two_syncs_at_once_only_one_writes(prefect_server, household, tmp_path) -> None:
    api_url, home = prefect_server
    # Every request waits 1 s until the second sync has given up, so the first one is
    # still writing then, whatever the machine's speed.
    slow = seeded_server([household], 200, seed=11, faults=FaultPlan(latency_seconds=1.0))
    warehouse = tmp_path / "terrain.duckdb"
    command = [str(BIN / "terrain"), "sync", "--url", slow.server.url, "--warehouse", str(warehouse),
               "--page-size", "20", "--no-attachments"]
    env = base_env(home, PREFECT_API_URL=api_url, KOBO_TOKEN=slow.token)
    with slow.server:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        try:
            deadline = time.monotonic() + 60
            # The lock is taken, then its holder written: a look in between finds it held by
            # someone unknown yet ({}), so this waits for the holder's record.
            while not (lock_holder(warehouse) or {}).get("pid"):
                assert first.poll() is None and time.monotonic() < deadline, first.communicate()
                time.sleep(0.1)
            holder = lock_holder(warehouse)
            assert holder["pid"] == first.pid and holder["purpose"] == "sync"

            # A reader is never held up by the writer lock; DuckDB itself refuses a read-only
            # open while another process has the file open for writing, at once and clearly.
            time.sleep(0.5)
            started = time.monotonic()
            reader = run([sys.executable, "-c", "from warehouse.store import Warehouse\n"
                          f"w = Warehouse({str(warehouse)!r}, read_only=True); print('read')"], env, timeout=30)
            assert time.monotonic() - started < 15
            assert reader.returncode == 0 or "is in use by another run" in reader.stderr, reader.stderr[-2000:]

            second = run(command, {**env, "TERRAIN_LOCK_TIMEOUT": "2"}, timeout=120, cwd=tmp_path)
            assert first.poll() is None, "the first sync should still be writing"
            assert lock_holder(warehouse)["pid"] == first.pid
            slow.server.faults = FaultPlan()
        finally:
            out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode == 1
    message = second.stderr.strip().splitlines()[-1]
    assert message.startswith("terrain: another sync is writing to terrain.duckdb since "), second.stderr[-3000:]
    assert f"(pid {first.pid}); waited 2 s; try again later" in message
    got = counts(warehouse)
    assert got["runs"] == 1  # the second sync never started writing
    assert got["households"] + got["quarantine"] == 200 == got["raw"]
    assert lock_holder(warehouse) is None


@pytest.mark.parametrize("stop", ["ctrl_c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_a_sync_at_once_and_the_next_one_resumes(prefect_server, household, tmp_path,
                                                                         stop: str) -> None:
    """Ctrl+C in a terminal signals the whole process group, Prefect's temporary server
    included: the sync used to go on, then retry the dead server for minutes. SIGTERM (a
    service manager, `kill`) stopped it without a word. Either stops it now, says so,
    records the run as interrupted, and the next sync ends the work with nothing lost or
    twice."""
    api_url, home = prefect_server
    slow = seeded_server([household], 400, seed=12, faults=FaultPlan(latency_seconds=0.1))
    warehouse = tmp_path / "terrain.duckdb"
    command = [str(BIN / "terrain"), "sync", "--url", slow.server.url, "--warehouse", str(warehouse),
               "--page-size", "20", "--no-attachments"]
    log = tmp_path / "sync.log"
    with slow.server:
        with log.open("w") as handle:  # no PREFECT_API_URL: the temporary server of a terminal user
            sync = subprocess.Popen(command, cwd=tmp_path, env=base_env(home, KOBO_TOKEN=slow.token),
                                    stdout=handle, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        if stop == "ctrl_c":  # a terminal signals the whole group; a service manager the process
            stop_when_logged(sync, log, "page 3,", signal.SIGINT, group=True)
        else:
            stop_when_logged(sync, log, "page 3,", signal.SIGTERM)
        output = log.read_text()
        assert sync.returncode == (130 if stop == "ctrl_c" else 143), output[-3000:]
        said = "interrupted" if stop == "ctrl_c" else "stopped (SIGTERM)"
        assert f"terrain: {said}; what was committed before is kept" in output
        assert "Traceback" not in output
        assert "Crash detected" not in output and "run stopped by Ctrl+C or a stop signal" in output
        with duckdb.connect(str(warehouse), read_only=True) as con:
            assert con.execute("select status from meta.sync_runs").fetchall() == [("interrupted",)]
        slow.server.faults = FaultPlan()
        again = run(command, base_env(home, PREFECT_API_URL=api_url, KOBO_TOKEN=slow.token), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    got = counts(warehouse)
    assert got["households"] + got["quarantine"] == 400 == got["raw"]


def test_stopping_a_sync_drops_the_attachment_downloads_not_started(household, tmp_path) -> None:
    """Leaving the download pool used to run every queued download first: a SIGTERM
    during the attachments waited for all of them (minutes on a slow link). Only those
    under way end now."""
    slow = seeded_server([household], 120, seed=8, faults=FaultPlan(latency_seconds=0.2))
    warehouse = tmp_path / "terrain.duckdb"
    log = tmp_path / "sync.log"
    with slow.server:
        with log.open("w") as handle:
            sync = subprocess.Popen([str(BIN / "terrain"), "sync", "--url", slow.server.url, "--warehouse",
                                     str(warehouse)], cwd=tmp_path, env=base_env(tmp_path, KOBO_TOKEN=slow.token),
                                    stdout=handle, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        stop_when_logged(sync, log, "attachments to download", signal.SIGTERM, after=1.0, seconds=120, wait=60)
    output = log.read_text()
    wanted = int(output.split(" attachments to download")[0].rsplit("/ ", 1)[-1])
    stored = [p for p in (tmp_path / "attachments").rglob("*") if p.is_file() and not p.name.endswith(".part")]
    assert sync.returncode == 143, output[-3000:]
    assert wanted > 100 and len(stored) < wanted / 2, (len(stored), wanted)


def test_sigterm_during_a_duckdb_query_is_still_a_sigterm(household, tmp_path, monkeypatch) -> None:
    """DuckDB turns the handler's exception, raised while a query runs, into
    RuntimeError('Query interrupted') with that exception as its context: the sync
    records and raises the SIGTERM (Terminated: exit 143), not a Ctrl+C."""
    from flows.cli import _terminate
    from flows.sync import SyncSettings, sync_asset
    from forms.errors import Terminated
    from kobo.client import KoboClient
    from warehouse.load import FormLoader
    from warehouse.store import Warehouse

    def long_checks(loader: FormLoader, everything: bool = False) -> None:  # a query that runs until stopped
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        loader.con.execute("select count(*) from range(100000000000) t(a) where a % 7 = 3").fetchall()

    monkeypatch.setattr(FormLoader, "run_warehouse_checks", long_checks)
    previous = signal.signal(signal.SIGTERM, _terminate)
    seeded = seeded_server([household], 30, seed=1)
    try:
        with seeded.server as server, KoboClient(server.url, seeded.token) as client, \
                Warehouse(tmp_path / "w.duckdb") as warehouse:
            with pytest.raises(Terminated):
                sync_asset(client, warehouse, seeded.assets["household_survey"].uid,
                           settings=SyncSettings(download_attachments=False))
            recorded = warehouse.con.execute("select status from meta.sync_runs").fetchall()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert recorded == [("interrupted",)]


@pytest.mark.parametrize("command", [["sql", "select 41 + 1 as answer"], ["rebuild"]], ids=["sql", "rebuild"])
def test_commands_wait_for_a_sync_instead_of_failing(tmp_path, command: list[str]) -> None:
    """DuckDB opens a file a writer holds for no other process: terrain sql (a reader)
    and terrain rebuild (a writer) run during a sync used to fail at once. They wait for
    it now, saying so, and run when it ends."""
    warehouse = tmp_path / "terrain.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom warehouse.lock import WriterLock\n"
                               "from warehouse.store import Warehouse\n"
                               f"with WriterLock({str(warehouse)!r}, purpose='sync'), Warehouse({str(warehouse)!r}):\n"
                               "    print('held', flush=True); sys.stdin.readline()"],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting = subprocess.Popen([str(BIN / "terrain"), *command, "--warehouse", str(warehouse)], cwd=tmp_path,
                                   env=base_env(tmp_path, TERRAIN_LOCK_TIMEOUT="60"), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert waiting.poll() is None, waiting.communicate()  # still waiting for the sync
    finally:
        holder.communicate("\n", timeout=10)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err[-3000:]
    assert "terrain: un autre processus (sync) écrit dans terrain.duckdb" in err and "attente de sa fin" in err
    assert "terrain: another sync is writing to terrain.duckdb" in err and "waiting for it to finish" in err
    if command[0] == "sql":
        assert "42" in out


def test_a_sync_waits_for_another_program_to_close_the_warehouse(tmp_path) -> None:
    """An analyst's DuckDB session holds the file (DuckDB lets no other process open it):
    a sync's warehouse waits for it to close, up to its wait, rather than failing."""
    from warehouse.store import Warehouse, WarehouseInUse

    path = tmp_path / "terrain.duckdb"
    Warehouse(path).close()
    with duckdb_session(path) as release_after:
        with pytest.raises(WarehouseInUse, match="in use by another run"):
            Warehouse(path)  # no wait: at once, as before
        release_after(2.0)
        started = time.monotonic()
        with Warehouse(path, wait_seconds=60) as warehouse:
            assert warehouse.con.execute("select 1").fetchone() == (1,)
        assert 1.5 < time.monotonic() - started < 30


def test_a_writing_command_waits_for_a_reader_and_a_reader_inside_a_writer_does_not(tmp_path) -> None:
    """Readers take no lock (a report, an analyst's DuckDB): terrain rebuild failed at once
    while one held the file; it waits for it now. And a process that holds the writer lock
    reads at once (its own lock is no one to wait for)."""
    from warehouse.lock import read_when_free
    from warehouse.store import Warehouse

    warehouse = tmp_path / "terrain.duckdb"
    Warehouse(warehouse).close()
    with duckdb_session(warehouse, read_only=True) as release_after:
        release_after(2.0)
        done = run([str(BIN / "terrain"), "rebuild", "--warehouse", str(warehouse)],
                   base_env(tmp_path, TERRAIN_LOCK_TIMEOUT="60"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    started = time.monotonic()
    with WriterLock(warehouse, timeout=0):
        assert read_when_free(warehouse, lambda: 42, timeout=5) == 42
    assert time.monotonic() - started < 2


def test_writer_lock_waits_then_fails_clearly_and_is_reentrant(tmp_path) -> None:
    warehouse = tmp_path / "terrain.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom warehouse.lock import WriterLock\n"
                               f"with WriterLock({str(warehouse)!r}, purpose='rebuild'):\n"
                               "    print('held', flush=True); sys.stdin.readline()"],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(WarehouseBusy) as busy:
            WriterLock(warehouse, timeout=0.6).acquire()
        assert 0.5 <= time.monotonic() - started < 3
        assert f"another rebuild is writing to terrain.duckdb since " in str(busy.value)
        assert f"(pid {holder.pid}); waited 1 s" in str(busy.value)
        # The lock never blocks readers: without a writer connection, a read-only open works.
        duckdb.connect(str(warehouse)).close()
        with duckdb.connect(str(warehouse), read_only=True) as con:
            assert con.execute("select 1").fetchone() == (1,)
    finally:
        holder.communicate("\n", timeout=10)
    # Free again: taken at once, re-entrant within the process, released by the outermost exit.
    with WriterLock(warehouse, timeout=0) as outer:
        assert outer.waited < 0.5 and lock_holder(warehouse)["pid"] == os.getpid()
        with WriterLock(warehouse, timeout=0):
            pass
        assert lock_holder(warehouse)["pid"] == os.getpid()
    assert lock_holder(warehouse) is None and lock_path_for(warehouse).exists()


# -- terrain serve -------------------------------------------------------------------------
def test_terrain_serve_runs_the_schedules_with_its_own_prefect_server(tmp_path) -> None:
    port = free_port()
    home = tmp_path / "prefect-home"
    env = base_env(home, TERRAIN_PREFECT_PORT=str(port), TERRAIN_WAREHOUSE=str(tmp_path / "w.duckdb"),
                   PREFECT_RUNNER_POLL_FREQUENCY="2")
    serve = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        deadline = time.monotonic() + 90
        found: dict = {}
        runs: list = []
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            while time.monotonic() < deadline and not (len(found) >= 2 and runs):
                assert serve.poll() is None, serve.communicate()[0][-4000:]
                time.sleep(1)
                try:
                    with get_client(sync_client=True) as client:
                        found = {d.name: d for d in client.read_deployments()}
                        if "sync-all-hourly" in found:
                            runs = client.read_flow_runs(limit=5)
                except Exception:  # noqa: BLE001 - the server is still starting
                    continue
        assert {"sync-all-hourly", "quality-report-daily", "rebuild", "publish-forms"} <= set(found), found
        sync = found["sync-all-hourly"]
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in sync.schedules] == \
            [("0 * * * *", "Africa/Bamako", True)]
        assert [(s.schedule.cron, s.schedule.timezone) for s in found["quality-report-daily"].schedules] == \
            [("0 18 * * *", "Africa/Bamako")]
        assert sync.parameters == {"settings_path": str(REPO / "terrain.toml")}
        assert sync.entrypoint == "flows.pipeline.sync_all" and sync.work_pool_name is None
        assert (sync.global_concurrency_limit.limit, sync.concurrency_options.collision_strategy.value) == \
            (1, "CANCEL_NEW")
        # The scheduler runs (Prefect's ephemeral API would not schedule anything).
        assert runs and all(r.state.is_scheduled() for r in runs), runs
        assert any(r.deployment_id == sync.id and r.expected_start_time.minute == 0 for r in runs)

        # And it runs them: a rebuild started by hand runs in a subprocess of `terrain serve`.
        from prefect.deployments import run_deployment

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            rebuilt = run_deployment("rebuild/rebuild", timeout=90, poll_interval=1)
        assert rebuilt.state.is_completed(), rebuilt.state
        assert (tmp_path / "w.duckdb").exists()
    finally:
        serve.send_signal(signal.SIGTERM)
        output = serve.communicate(timeout=60)[0]
    assert serve.returncode == 0, output[-4000:]
    assert "sync-all/sync-all-hourly: 0 * * * * (Africa/Bamako)" in output
    from flows.serve import _healthy

    time.sleep(1)
    assert not _healthy(api_url), "terrain serve must stop the Prefect server it started"


# -- settings ------------------------------------------------------------------------------
def test_settings_file_environment_and_parameters(tmp_path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    path = folder / "terrain.toml"
    path.write_text('kobo_url = "https://eu.kobotoolbox.org"\nforms = ["aOne", "aTwo"]\n'
                    'warehouse_path = "data/terrain.duckdb"\npage_size = 500\nlock_timeout_seconds = 30\n')
    settings = load_settings(path, environ={})
    assert settings == Settings(kobo_url="https://eu.kobotoolbox.org", forms=("aOne", "aTwo"),
                                warehouse_path=str(folder / "data" / "terrain.duckdb"), page_size=500,
                                lock_timeout_seconds=30.0)
    assert settings.sync_settings().page_size == 500
    environ = {"TERRAIN_WAREHOUSE": "w.duckdb", "KOBO_URL": "http://127.0.0.1:8000", "TERRAIN_FORMS": "aX, aY",
               "TERRAIN_DOWNLOAD_ATTACHMENTS": "false", "TERRAIN_SETTINGS": str(path)}
    from_env = load_settings(environ=environ)
    assert (from_env.warehouse_path, from_env.kobo_url, from_env.forms, from_env.download_attachments,
            from_env.page_size, from_env.source) == ("w.duckdb", "http://127.0.0.1:8000", ("aX", "aY"), False, 500,
                                                     str(path))
    assert load_settings(path, environ=environ, page_size=100, forms=None).page_size == 100

    path.write_text('token = "abc"\n')
    with pytest.raises(SettingsError, match="never put the KoboToolbox token in a file"):
        load_settings(path, environ={})
    path.write_text('warehouse = "x.duckdb"\n')
    with pytest.raises(SettingsError, match="unknown setting 'warehouse'"):
        load_settings(path, environ={})
    with pytest.raises(SettingsError, match=r"page_size = 'many' \(\$TERRAIN_PAGE_SIZE\)"):
        load_settings(None, environ={"TERRAIN_PAGE_SIZE": "many"})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_repository_settings_file_documents_every_key() -> None:
    from flows.settings import ENVIRONMENT, KEYS, read_settings_file

    text = (REPO / "terrain.toml").read_text()
    for key in KEYS:
        assert f"{key} =" in text, key
        assert all(name in text for name in ENVIRONMENT[key]), key
    assert set(read_settings_file(REPO / "terrain.toml")) <= set(KEYS)


def test_retries_only_for_transient_errors() -> None:
    from prefect.states import Failed

    from flows.pipeline import sync_form_task, transient_only
    from kobo.errors import ServerUnavailable, TokenRejected

    assert sync_form_task.retries == 2 and sync_form_task.retry_condition_fn is transient_only
    assert transient_only(None, None, Failed(data=ServerUnavailable("502 du serveur", "502 from the server")))
    assert not transient_only(None, None, Failed(data=TokenRejected("401", "401")))
    assert not transient_only(None, None, Failed(data=WarehouseBusy("occupé", "busy")))


def test_a_sync_waits_once_for_a_program_holding_the_warehouse_not_once_per_form(prefect_server, household,
                                                                                tmp_path) -> None:
    """An analyst's DuckDB session holds the warehouse through a whole sync_all run: the
    first form waits lock_timeout_seconds for it, and the next ones fail at once rather
    than each waiting as long again."""
    from forms.build import project_form

    api_url, home = prefect_server
    seeded = seeded_server([household, project_form("training_attendance"), project_form("water_point_inspection")],
                           20, seed=5)
    warehouse = tmp_path / "terrain.duckdb"
    script = ("from flows.pipeline import sync_all\n"
              f"state = sync_all(kobo_url={seeded.server.url!r}, warehouse_path={str(warehouse)!r}, "
              "download_attachments=False, return_state=True)\nprint('failed' if state.is_failed() else 'ok')")
    with duckdb_session(warehouse), seeded.server:
        done = run([sys.executable, "-c", script], base_env(home, PREFECT_API_URL=api_url, KOBO_TOKEN=seeded.token,
                                                           TERRAIN_LOCK_TIMEOUT="2"))
    output = done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "failed", output[-3000:]
    assert output.count("waiting up to 2 s for it to close") == 1, output[-3000:]  # the first form only
    assert "has kept the warehouse" in output and "is in use by another run" in output  # then the others, at once


def test_one_failing_form_does_not_stop_the_others(prefect_server, seeded, tmp_path) -> None:
    """A flow run of sync_all on the module's Prefect server: an unknown project fails, the
    other one is synced, the summary lists both, and the run fails at the end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url, home = prefect_server
    warehouse = tmp_path / "terrain.duckdb"
    uid = seeded.assets["household_survey"].uid
    script = ("import json\nfrom flows.pipeline import sync_all, sync_form\n"
              f"state = sync_all(kobo_url={seeded.server.url!r}, forms=['aNoSuchProjectXXXXXXXXX', {uid!r}], "
              f"warehouse_path={str(warehouse)!r}, page_size=100, download_attachments=False, return_state=True)\n"
              f"again = sync_form({uid!r}, kobo_url={seeded.server.url!r}, warehouse_path={str(warehouse)!r}, "
              "page_size=100, download_attachments=False)\n"
              "print(json.dumps({'failed': state.is_failed(), 'error': str(state.result(raise_on_failure=False)), "
              "'flow_run_id': str(state.state_details.flow_run_id), 'again': again}))")
    done = run([sys.executable, "-c", script], base_env(home, PREFECT_API_URL=api_url, KOBO_TOKEN=seeded.token))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] and result["error"].startswith("1 formulaire(s) sur 2 en échec : ? (aNoSuchProjectXXXXXXXXX) : ")
    assert " / 1 of 2 form(s) failed: ? (aNoSuchProjectXXXXXXXXX): project not found" in result["error"]
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            summary = next(a for a in client.read_artifacts()
                           if a.key == "sync-summary" and str(a.flow_run_id) == result["flow_run_id"])
    assert "1 of 2 form(s) synced" in summary.data and "| failed: " in summary.data
    assert f"| household_survey | {uid} | 250 | 250 |" in summary.data
    assert counts(warehouse)["raw"] == 250
    # sync_form: the same project again, alone: nothing new.
    again = result["again"]
    assert (again["asset_uid"], again["status"], again["new"], again["edited"], again["deleted"]) == (uid, "ok", 0, 0, 0)
    # An error Terrain explains (in both languages) is logged without a Python traceback.
    assert "Traceback" not in done.stdout + done.stderr
    assert "aNoSuchProjectXXXXXXXXX" in done.stdout + done.stderr
    # A project synced before and failing before its sync starts (here: gone from the
    # server) is named by its form, not "?".
    gone = seeded.server.assets.pop(uid)
    try:
        script = ("from flows.pipeline import sync_form\n"
                  f"state = sync_form({uid!r}, kobo_url={seeded.server.url!r}, warehouse_path={str(warehouse)!r}, "
                  "download_attachments=False, return_state=True)\n"
                  "print(state.result(raise_on_failure=False))")
        failed = run([sys.executable, "-c", script], base_env(home, PREFECT_API_URL=api_url, KOBO_TOKEN=seeded.token))
    finally:
        seeded.server.assets[uid] = gone
    assert f"1 of 1 form(s) failed: household_survey ({uid}): " in failed.stdout, failed.stdout[-2000:]


def test_publish_forms_publishes_each_form_and_reports(prefect_server, tmp_path) -> None:
    from kobo.server import LocalKoboServer

    api_url, home = prefect_server
    server = LocalKoboServer({"publish-token": "terrain_demo"}, [], import_polls=0)
    script = ("import json\nfrom flows.pipeline import publish_forms\n"
              f"state = publish_forms(kobo_url={server.url!r}, form_ids=['household_survey', 'no_such_form'], "
              "return_state=True)\n"
              "print(json.dumps({'failed': state.is_failed(), 'error': str(state.result(raise_on_failure=False))}))")
    with server:
        done = run([sys.executable, "-c", script], base_env(home, PREFECT_API_URL=api_url, KOBO_TOKEN="publish-token"))
        assert done.returncode == 0, done.stderr[-3000:]
        deployed = [a for a in server.assets.values() if a.deployed]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] and result["error"].startswith("1 formulaire(s) sur 2 non publié(s) : no_such_form : pas de")
    assert " / 1 of 2 form(s) could not be published: no_such_form: no form 'no_such_form'" in result["error"]
    assert len(deployed) == 1
    assert "1 of 2 form(s) published" in done.stderr + done.stdout
