"""The KoboToolbox token never reaches what analysts take away: `terrain export` writes
Parquet, CSV and XLSX after a real sync, and none of them holds the token's bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import duckdb

from flows.sync import SyncSettings, sync_asset
from kobo.client import KoboClient
from kobo.seed import seeded_server
from warehouse.store import Warehouse

ROOT = Path(__file__).resolve().parents[1]


def export(fmt: str, warehouse: Path, out: Path, token: str) -> subprocess.CompletedProcess:
    """`terrain export` as a data manager runs it, with the token in the environment as it
    would be in their shell."""
    return subprocess.run([sys.executable, "-m", "flows.cli", "export", "--format", fmt, "--out", str(out),
                           "--warehouse", str(warehouse)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "KOBO_TOKEN": token})


def file_texts(path: Path) -> dict[str, bytes]:
    """The bytes to search in one exported file: an XLSX is a zip, so each member unpacked;
    a Parquet or CSV file as it is on disk."""
    if path.suffix == ".xlsx":
        with zipfile.ZipFile(path) as workbook:
            return {f"{path.name}:{name}": workbook.read(name) for name in workbook.namelist()}
    return {path.name: path.read_bytes()}


def parquet_text(path: Path) -> str:
    """A Parquet file decoded (its pages are compressed, so its bytes alone prove little):
    every value as text, and the file's key-value metadata."""
    with duckdb.connect() as con:
        target = str(path).replace("'", "''")
        rows = con.execute(f"SELECT * FROM read_parquet('{target}')").fetchall()
        metadata = con.execute(f"SELECT key, value FROM parquet_kv_metadata('{target}')").fetchall()
    return "\n".join(" ".join(str(v) for v in row) for row in rows + metadata)


def test_the_token_is_in_no_export(household, tmp_path: Path) -> None:
    seeded = seeded_server([household], 80, seed=36)
    token = seeded.token
    path = tmp_path / "w.duckdb"
    uid = seeded.assets["household_survey"].uid
    with seeded.server as server:
        # Attachments too: their server URLs are kept in the warehouse beside the data.
        with KoboClient(server.url, token) as client, Warehouse(path) as warehouse:
            summary = sync_asset(client, warehouse, uid, settings=SyncSettings(attachments_dir=str(tmp_path / "files")))
    assert summary.pulled == 80
    with duckdb.connect(str(path), read_only=True) as con:
        roots = [r[0] for r in con.execute("SELECT root_uuid FROM households ORDER BY root_uuid").fetchall()]
        villages = {r[0] for r in con.execute("SELECT village FROM households WHERE village IS NOT NULL").fetchall()}
    assert len(roots) > 40 and villages

    exported: dict[str, bytes] = {}
    decoded: dict[str, str] = {}
    for fmt in ("parquet", "csv", "xlsx"):
        out = tmp_path / "exports" / fmt
        result = export(fmt, path, out, token)
        assert result.returncode == 0, result.stderr[-2000:]
        assert token not in result.stdout + result.stderr
        files = sorted(out.iterdir())
        assert {p.suffix for p in files} == {f".{fmt}"}
        for file in files:
            exported.update(file_texts(file))
            if fmt == "parquet":
                decoded[file.name] = parquet_text(file)
    assert any(name.startswith("households.") for name in exported)
    assert any(":xl/worksheets/" in name for name in exported)

    # Not a vacuous grep: the submissions are there, in each format, as searched.
    xlsx_sheets = b"".join(data for name, data in exported.items() if name.startswith("terrain.xlsx:xl/worksheets/"))
    for root in (roots[0], roots[-1]):
        assert root.encode() in exported["households.csv"]
        assert root.encode() in xlsx_sheets
        assert root in decoded["households.parquet"]
    assert any(village.encode() in exported["households.csv"] for village in villages)

    secret = token.encode()
    leaks = [name for name, data in exported.items() if secret in data or secret.upper() in data]
    leaks += [name for name, text in decoded.items() if token in text]
    assert leaks == []
