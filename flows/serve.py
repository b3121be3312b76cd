"""``terrain serve``: the scheduled deployments of prefect.yaml, run on one machine by one
command, for the common case of one laptop.

It reads the deployments (flow, schedules with their time zone, parameters) from the
repository's ``prefect.yaml``, so a schedule is changed in one place, and serves them
with ``prefect.serve``: each run executes in a subprocess of this process; no work pool
and no worker are needed.

Prefect's temporary ("ephemeral") API, used when ``PREFECT_API_URL`` is not set, does not
run the scheduler, so served schedules would never fire. When ``PREFECT_API_URL`` is not
set, ``terrain serve`` therefore starts a Prefect API on 127.0.0.1 (``prefect_port`` in
terrain.toml, 4200 by default) as its own child process, with the scheduler and the
dashboard, and stops it when it stops; run history is kept in ``$PREFECT_HOME``
(``~/.prefect``). If a Prefect server already answers on that port, it is used as is.
With ``PREFECT_API_URL`` set, that server is used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows.settings import Settings, load_settings, settings_file  # noqa: E402
from forms.errors import TerrainError  # noqa: E402

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"
STARTUP_TIMEOUT = 90.0


class ServeError(TerrainError):
    """`terrain serve` cannot start."""


@dataclass(frozen=True)
class ScheduledDeployment:
    """One deployment of prefect.yaml, as `terrain serve` runs it."""

    name: str
    entrypoint: str  # path/to/file.py:flow_function
    schedules: tuple[dict[str, Any], ...]  # {"cron": ..., "timezone": ...}
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    tags: tuple[str, ...] = ()
    concurrency_limit: int | dict[str, Any] | None = None

    def flow(self) -> Any:
        path, _, function = self.entrypoint.partition(":")
        module = path.removesuffix(".py").replace("/", ".")
        return getattr(__import__(module, fromlist=[function]), function)


def read_deployments(path: Path = PREFECT_YAML) -> list[ScheduledDeployment]:
    """The deployments of prefect.yaml with their active schedules (those without one are
    served too: they run when started from the dashboard or `prefect deployment run`)."""
    import yaml

    if not path.is_file():
        raise ServeError(f"{path} manque : `terrain serve` lit ses horaires dans le prefect.yaml du dépôt",
                         f"{path} is missing: `terrain serve` reads its schedules from the repository's prefect.yaml")
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    found = []
    for entry in document.get("deployments") or []:
        schedules = tuple(s for s in (entry.get("schedules") or []) if s and s.get("active", True) is not False)
        found.append(ScheduledDeployment(name=entry["name"], entrypoint=entry["entrypoint"], schedules=schedules,
                                         parameters=dict(entry.get("parameters") or {}),
                                         description=entry.get("description"), tags=tuple(entry.get("tags") or ()),
                                         concurrency_limit=entry.get("concurrency_limit")))
    return found


def build_deployments(settings_path: str | None, path: Path = PREFECT_YAML) -> list[Any]:
    """``RunnerDeployment`` objects for ``prefect.serve``: prefect.yaml's schedules and
    parameters, with ``settings_path`` made absolute so runs find the same settings file."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.types.entrypoint import EntrypointType
    from prefect.schedules import Cron, Interval, RRule

    deployments = []
    for item in read_deployments(path):
        schedules = []
        for s in item.schedules:
            options = {"timezone": s.get("timezone"), "parameters": s.get("parameters") or None}
            if "cron" in s:
                schedules.append(Cron(s["cron"], **options))
            elif "interval" in s:
                schedules.append(Interval(s["interval"], **options))
            elif "rrule" in s:
                schedules.append(RRule(s["rrule"], **options))
        parameters = dict(item.parameters)
        if "settings_path" in parameters or settings_path:
            parameters["settings_path"] = str(Path(settings_path).resolve()) if settings_path else None
        # A module entrypoint (flows.pipeline.sync_all): runs find the flow whatever the working directory.
        limit = item.concurrency_limit
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(**{k: v for k, v in limit.items() if v is not None})
        deployments.append(item.flow().to_deployment(name=item.name, schedules=schedules or None,
                                                     parameters=parameters, description=item.description,
                                                     tags=list(item.tags), paused=False, concurrency_limit=limit,
                                                     entrypoint_type=EntrypointType.MODULE_PATH))
    return deployments


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the parent's finally still stops it
        pass


# A Prefect server child runs in a session of its own: Ctrl+C in a terminal signals the
# whole foreground process group, and the server stopped at once while the runs still
# reporting to it retried for over a minute. It is stopped by its parent, or by the
# kernel when the parent dies (PR_SET_PDEATHSIG).
APART_FROM_CTRL_C: dict[str, Any] = ({"start_new_session": True, "preexec_fn": _die_with_parent}
                                     if sys.platform.startswith("linux") else {"start_new_session": True})


@contextlib.contextmanager
def local_prefect_server(port: int, host: str = "127.0.0.1", env: dict[str, str] | None = None,
                         log_path: Path | None = None, timeout: float = STARTUP_TIMEOUT) -> Iterator[str]:
    """A real Prefect server (API, scheduler and dashboard) on ``host:port`` as a child
    process, stopped on exit; yields its API URL. A server already answering there is
    reused and left running."""
    url = f"http://{host}:{port}/api"
    if _healthy(url):
        yield url
        return
    environment = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})}
    environment.pop("PREFECT_API_URL", None)
    home = Path(environment.get("PREFECT_HOME") or Path.home() / ".prefect")
    home.mkdir(parents=True, exist_ok=True)
    log_path = log_path or home / f"terrain-prefect-server-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host,
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=environment,
                                   **APART_FROM_CTRL_C)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url, timeout=1.0):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise ServeError(f"le serveur Prefect local sur {host}:{port} n'a pas démarré (voir {log_path})",
                                 f"the local Prefect server on {host}:{port} did not start (see {log_path}):\n{tail}")
            time.sleep(0.3)
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def temporary_api_apart_from_ctrl_c() -> None:
    """Starts Prefect's temporary API server (which a flow run starts when no
    PREFECT_API_URL is set) apart from Ctrl+C, as ``terrain serve`` starts its own: Ctrl+C
    then stops the run alone, which reports its end to the server still up, and stops
    the server as it exits."""
    from prefect.server.api import server as prefect_server
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    popen = prefect_server.subprocess.Popen

    def apart(*args: Any, **kwargs: Any) -> subprocess.Popen:
        return popen(*args, **{**APART_FROM_CTRL_C, **kwargs})

    prefect_server.subprocess.Popen = apart  # only while it starts the server: Prefect has no option for it
    try:
        prefect_server.SubprocessASGIServer().start()  # the one instance Prefect's client then uses
    finally:
        prefect_server.subprocess.Popen = popen


def serve(settings: Settings, deployments: list[Any] | None = None) -> None:
    """Serves the scheduled deployments until Ctrl+C or SIGTERM."""
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deployments = deployments if deployments is not None else build_deployments(settings.source)
    api = PREFECT_API_URL.value()
    if api:
        print(f"terrain serve: API Prefect utilisée / using the Prefect API at {api}", flush=True)
        prefect.serve(*deployments, print_starting_message=True)
        return
    with local_prefect_server(settings.prefect_port) as url:
        dashboard = url.removesuffix("/api")
        print(f"terrain serve: API et tableau de bord Prefect / Prefect API and dashboard on {dashboard}", flush=True)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            prefect.serve(*deployments, print_starting_message=True)


def describe(deployments: list[Any]) -> list[str]:
    lines = []
    for d in deployments:
        whens = [f"{s.schedule.cron} ({s.schedule.timezone})" if hasattr(s.schedule, "cron") else str(s.schedule)
                 for s in d.schedules or []]
        lines.append(f"  {d.flow_name}/{d.name}: {', '.join(whens) or 'à la demande / on demand (dashboard or prefect deployment run)'}")
    return lines


def serve_main(settings_path: str | None = None) -> int:
    """``terrain serve [--settings FILE]``."""
    chosen = settings_file(settings_path)
    settings = load_settings(chosen)
    deployments = build_deployments(str(chosen) if chosen else None)
    print("terrain serve: ces horaires tournent jusqu'à Ctrl+C / running these schedules until Ctrl+C:", flush=True)
    print("\n".join(describe(deployments)), flush=True)
    print(f"  entrepôt / warehouse {settings.warehouse_path}, KoboToolbox {settings.kobo_url}, réglages / settings "
          f"{settings.source or '(défauts et environnement / defaults and environment)'}", flush=True)
    serve(settings, deployments)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1] if len(sys.argv) > 1 else None))
