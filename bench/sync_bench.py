"""Sync benchmark: how fast Terrain pulls and loads household submissions, beside the
ceiling (download and parse only) and a naive pandas loader, in one run.

    .venv/bin/python bench/sync_bench.py                 # 100,000 and 1,000,000 submissions
    .venv/bin/python bench/sync_bench.py --sizes 100000  # one size

Each method runs in its own process against a local KoboToolbox-compatible server
(another process), so its peak memory (maximum resident set) is its own. Throughput
is timed inside the process around the pull itself; interpreter and import start-up
are reported on their own line. Prints a table per size and the targets of issue 5.

Beside them, "raw-landing" is Terrain's floor: the same pages landed in raw, in the
same batches and transactions, with no typing and no checks. What it costs, every
design that keeps each submission as received in DuckDB pays.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clones import cloned_server, serve_until_stdin_closes  # noqa: E402


def process_age() -> float:
    """Seconds since this process started (interpreter start-up included), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the server process ---------------------------------------------------------------------
def serve(size: int) -> None:
    serve_until_stdin_closes(cloned_server(size))


# -- one method, in its own process -----------------------------------------------------------
def pages(url: str, token: str, asset: str):
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    last = None
    while True:
        params = {"limit": 1000, "sort": json.dumps({"_id": 1})}
        if last is not None:
            params["query"] = json.dumps({"_id": {"$gt": last}})
        body = session.get(f"{url}/api/v2/assets/{asset}/data/", params=params, timeout=120).json()
        if not body["results"]:
            return
        last = body["results"][-1]["_id"]
        yield body["results"]
        if not body["next"]:
            return


def run_ceiling(url: str, token: str, asset: str, warehouse: str) -> int:
    return sum(len(page) for page in pages(url, token, asset))


def run_naive(url: str, token: str, asset: str, warehouse: str) -> int:
    """What an analyst would write first: pandas json_normalize, explode the members,
    a pandera schema, a DuckDB insert (page by page, so it fits in memory)."""
    import duckdb
    import pandas as pd
    import pandera.pandas as pa

    households = pa.DataFrameSchema({
        "identification/household_size": pa.Column(float, pa.Check.in_range(1, 60), coerce=True, nullable=True),
        "identification/head_age": pa.Column(float, pa.Check.in_range(15, 110), coerce=True, nullable=True),
    })
    members = pa.DataFrameSchema({"members/member_age": pa.Column(float, pa.Check.in_range(0, 110), coerce=True)})
    con = duckdb.connect(warehouse)
    total = 0
    for page in pages(url, token, asset):
        frame = pd.json_normalize(page)
        member_rows = frame[["_id", "members"]].explode("members").dropna(subset=["members"])
        member_frame = pd.json_normalize(member_rows["members"].tolist())
        member_frame["_id"] = member_rows["_id"].to_numpy()
        for schema, table in ((households, frame.drop(columns=["members"])), (members, member_frame)):
            try:
                schema.validate(table, lazy=True)
            except pa.errors.SchemaErrors:
                pass  # the naive loader notes failures and loads everything anyway
        flat = frame.drop(columns=["members", "_attachments", "_geolocation", "_validation_status"], errors="ignore")
        for name, table in (("households", flat.astype(str)), ("members", member_frame.astype(str))):
            con.register("page", table)
            exists = con.execute("select count(*) from information_schema.tables where table_name = ?", [name]).fetchone()[0]
            con.execute(f"insert into {name} by name select * from page" if exists else
                        f"create table {name} as select * from page")
            con.unregister("page")
        total += len(page)
    return total


def run_terrain(url: str, token: str, asset: str, warehouse: str, parallel: int = 1, reconcile: str = "never") -> int:
    from flows.sync import SyncSettings, sync_asset
    from kobo.client import KoboClient
    from warehouse.store import Warehouse

    settings = SyncSettings(download_attachments=False, reconcile=reconcile, parallel=parallel)
    with KoboClient(url, token) as client, Warehouse(warehouse) as store:
        return sync_asset(client, store, asset, settings=settings).pulled


def run_raw_only(url: str, token: str, asset: str, warehouse: str) -> int:
    """Terrain's floor: the pages are fetched as the sync fetches them and landed in raw
    (parsed by DuckDB, hashed, inserted) in the sync's batches and transactions, and
    nothing else: no typing, no checks, no clean tables. No design that keeps every
    submission as received in DuckDB, a transaction a batch, can be faster than this."""
    import datetime as dt

    from flows.sync import SyncSettings, prefetched
    from kobo.client import KoboClient
    from warehouse.load import batch_is_full, page_json
    from warehouse.store import Warehouse

    batch_size, total = SyncSettings().batch_size, 0
    with KoboClient(url, token) as client, Warehouse(warehouse) as store:
        def land(batch: list) -> None:
            with store.writing(), store.transaction():
                store.land(asset, "raw_only", [page_json(page) for page in batch], dt.datetime.now(dt.timezone.utc))
                store.drop_landing()

        batch: list = []
        gathered = text = 0
        for page in prefetched(client.iter_pages(asset)):
            batch.append(page)
            gathered, text = gathered + page.size, text + len(page.body)
            if batch_is_full(batch_size, gathered, text):  # the sync's own batches
                land(batch)
                total += gathered
                batch, gathered, text = [], 0, 0
        if batch:
            land(batch)
            total += gathered
    return total


def run_reconcile(url: str, token: str, asset: str, warehouse: str) -> int:
    from flows.sync import SyncSummary, reconcile
    from kobo.client import KoboClient
    from warehouse.load import FormLoader
    from warehouse.store import Warehouse

    with KoboClient(url, token) as client, Warehouse(warehouse) as store:
        dictionary = store.latest_dictionaries()[0]
        summary = SyncSummary(form_id=dictionary.form_id, asset_uid=asset)
        reconcile(client, store, FormLoader(store, dictionary, asset), asset, summary, None)
        return summary.pulled


METHODS = {"ceiling": run_ceiling, "naive": run_naive, "terrain": run_terrain, "reconcile": run_reconcile,
           "raw-landing": run_raw_only,
           "terrain-parallel": lambda *a: run_terrain(*a, parallel=8)}


# What each method imports, loaded before its clock starts: start-up is reported apart.
IMPORTS = {"ceiling": ["requests"], "naive": ["requests", "duckdb", "pandas", "pandera.pandas"]}
TERRAIN_IMPORTS = ["requests", "duckdb", "pandas", "pandera.pandas", "flows.sync", "kobo.client", "warehouse.store",
                   "warehouse.load"]


def run(method: str, url: str, token: str, asset: str, warehouse: str) -> None:
    import importlib

    for module in IMPORTS.get(method, TERRAIN_IMPORTS):
        importlib.import_module(module)
    startup = process_age()
    started = time.monotonic()
    count = METHODS[method](url, token, asset, warehouse)
    seconds = time.monotonic() - started
    print(json.dumps({"method": method, "submissions": count, "seconds": seconds, "startup": startup,
                      "peak_mb": peak_mb()}))


# -- the benchmark ------------------------------------------------------------------------------
def measure(method: str, server: dict, warehouse: Path) -> dict:
    # The previous method's writes are flushed first: else the first commit of this one
    # waits for them (an incremental sync's first write took over a second at 1,000,000
    # right after the full sync had closed its file).
    os.sync()
    out = subprocess.run([sys.executable, __file__, "run", method, server["url"], server["token"], server["asset"],
                          str(warehouse)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "KOBO_TOKEN": server["token"]})
    if out.returncode:
        raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def control(server: dict, path: str, body: dict) -> None:
    import requests

    requests.post(f"{server['url']}{path}", json=body, headers={"Authorization": f"Token {server['token']}"},
                  timeout=600).raise_for_status()


def bench(size: int) -> None:
    process = subprocess.Popen([sys.executable, __file__, "serve", str(size)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    server = json.loads(process.stdout.readline())
    results: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            for method in ("ceiling", "naive", "raw-landing", "terrain"):
                results[method] = measure(method, server, folder / f"{method}.duckdb")
                print(f"  {method}: {results[method]['submissions']:,} in {results[method]['seconds']:.1f} s", flush=True)
            new = max(1, size // 100)
            control(server, f"/__terrain__/assets/{server['asset']}/submissions", {"generate": new, "seed": 99})
            results["incremental 1%"] = measure("terrain", server, folder / "terrain.duckdb")
            results["reconciliation pass"] = measure("reconcile", server, folder / "terrain.duckdb")
            control(server, "/__terrain__/faults", {"rate": 0, "latency_seconds": 0.2})
            results["terrain, 200 ms latency, 8 ranges"] = measure("terrain-parallel", server, folder / "latency.duckdb")
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    ceiling = results["ceiling"]["submissions"] / results["ceiling"]["seconds"]
    print(f"\n{size:,} household submissions (about 6-7 members each)")
    print(f"{'method':38} {'submissions':>12} {'seconds':>8} {'per second':>11} {'peak MB':>8} {'vs ceiling':>10}")
    for name, r in results.items():
        rate = r["submissions"] / r["seconds"] if r["seconds"] else 0
        print(f"{name:38} {r['submissions']:>12,} {r['seconds']:>8.1f} {rate:>11,.0f} {r['peak_mb']:>8.0f} "
              f"{rate / ceiling:>10.2f}")
    print(f"start-up (interpreter and imports), per process: {results['terrain']['startup']:.1f} s")
    terrain = results["terrain"]["submissions"] / results["terrain"]["seconds"]
    naive = results["naive"]["submissions"] / results["naive"]["seconds"]
    incremental = results["incremental 1%"]["seconds"] / results["terrain"]["seconds"]
    latency = results["terrain, 200 ms latency, 8 ranges"]
    checks = [
        ("full sync >= 0.6 of the ceiling", terrain / ceiling >= 0.6, f"{terrain / ceiling:.2f}"),
        ("full sync >= 3x the naive loader", terrain / naive >= 3, f"{terrain / naive:.2f}x"),
        ("peak memory <= 400 MB", results["terrain"]["peak_mb"] <= 400, f"{results['terrain']['peak_mb']:.0f} MB"),
        ("incremental 1% <= 3% of a full sync", incremental <= 0.03, f"{incremental:.1%}"),
        (">= 5,000/s with 200 ms latency", latency["submissions"] / latency["seconds"] >= 5000,
         f"{latency['submissions'] / latency['seconds']:,.0f}/s"),
    ]
    for name, ok, value in checks:
        print(f"  [{'met' if ok else 'NOT met'}] {name}: {value}")
    floor = results["raw-landing"]["submissions"] / results["raw-landing"]["seconds"]
    print(f"  raw landing alone (no typing, no checks): {floor / ceiling:.2f} of the ceiling, "
          f"{floor / naive:.2f}x the naive loader; terrain runs at {terrain / floor:.2f} of it")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(int(sys.argv[2]))
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        return run(*sys.argv[2:7])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    for size in parser.parse_args().sizes:
        print(f"Benchmark at {size:,} submissions...", flush=True)
        bench(size)


if __name__ == "__main__":
    main()
