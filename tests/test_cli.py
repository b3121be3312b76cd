"""The `terrain` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb

TERRAIN = [sys.executable, "-m", "flows.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*TERRAIN, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(env or {})})


def test_bad_token_gives_one_message_and_never_prints_the_token(seeded) -> None:
    secret = "a1b2c3d4" * 5
    result = run("sync", "--url", seeded.server.url, "--asset", seeded.assets["household_survey"].uid,
                 "--warehouse", os.devnull, env={"KOBO_TOKEN": secret})
    assert result.returncode != 0
    french, english = result.stderr.strip().splitlines()  # one message, French first, no traceback
    assert french.startswith("terrain: KoboToolbox refuse le jeton"), result.stderr
    assert english.startswith("terrain: KoboToolbox rejected the token"), result.stderr
    assert secret not in result.stdout + result.stderr


def test_missing_token_is_explained(seeded) -> None:
    result = run("sync", "--url", seeded.server.url, env={"KOBO_TOKEN": ""})
    assert result.returncode != 0 and "KOBO_TOKEN" in result.stderr


def test_forms_build_writes_the_three_outputs(tmp_path: Path) -> None:
    result = run("forms", "build", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"household_survey.xlsx", "household_survey.xml",
                                                    "household_survey.dictionary.json"}


def test_demo_twice_then_sql(tmp_path: Path) -> None:
    """The issue's acceptance: households + quarantined = generated, and a second demo changes no count."""
    warehouse = tmp_path / "demo.duckdb"
    first = run("demo", "--submissions", "150", "--warehouse", str(warehouse))
    assert first.returncode == 0, first.stderr[-2000:]
    generated = int(re.search(r"household_survey: (\d+)", first.stdout).group(1))
    assert "Rows per table:" in first.stdout and "Seconds taken:" in first.stdout
    count = run("sql", "select count(*) as n from households", "--warehouse", str(warehouse))
    assert count.returncode == 0, count.stderr
    households = int(count.stdout.splitlines()[2].strip())
    with duckdb.connect(str(warehouse), read_only=True) as con:
        quarantined = con.execute("select count(*) from quality.quarantine where form_id = 'household_survey'").fetchone()[0]
        synced_forms = {r[0] for r in con.execute("select distinct form_id from raw.submissions").fetchall()}
        tables_before = con.execute("select (select count(*) from households), (select count(*) from household_members), "
                                    "(select count(*) from raw.submissions), (select count(*) from quality.issues)").fetchone()
    assert households + quarantined == generated == 150
    # The demo leaves one file (no log beside it) with its analyst tables made.
    assert not Path(f"{warehouse}.wal").exists()
    analyst = run("sql", "select count(*) from analyst.households", "--warehouse", str(warehouse))
    assert analyst.returncode == 0 and int(analyst.stdout.splitlines()[2].strip()) == households, analyst.stderr
    whole = run("sql", "select root_uuid, repeat('é', 100) as long from households limit 1", "--warehouse",
                str(warehouse))
    assert re.search(r"uuid:[0-9a-f-]{36} ", whole.stdout) and "é" * 100 not in whole.stdout  # copyable, long cut
    assert "é" * 100 in run("sql", "select repeat('é', 100)", "--full", "--warehouse", str(warehouse)).stdout
    for args, message in ((["sql", ""], "no query given"),
                          (["export", "--format", "csv", "--table", "menages"], "no table menages to export"),
                          (["export", "--format", "xlsx", "--language", "de"], "no labels in the language 'de'")):
        refused = run(*args, "--warehouse", str(warehouse), "--out", str(tmp_path / "exports")) if args[0] == "export" \
            else run(*args, "--warehouse", str(warehouse))
        assert refused.returncode == 1 and message in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert synced_forms == {"household_survey", "training_attendance", "water_point_inspection"}
    second = run("demo", "--submissions", "150", "--warehouse", str(warehouse))
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("new 0, edited 0, deleted 0") == 3
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tables_after = con.execute("select (select count(*) from households), (select count(*) from household_members), "
                                   "(select count(*) from raw.submissions), (select count(*) from quality.issues)").fetchone()
    assert tables_after == tables_before


def test_sql_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = run("sql", "select 1", "--warehouse", str(tmp_path / "none.duckdb"))
    assert missing.returncode != 0 and "no warehouse" in missing.stderr


def test_forms_publish_creates_then_redeploys_on_the_local_server() -> None:
    from kobo.server import LocalKoboServer

    token = "c0ffee" * 6 + "abcd"
    with LocalKoboServer({token: "data_manager"}) as server:
        first = run("forms", "publish", "--url", server.url, env={"KOBO_TOKEN": token})
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("created and deployed") == 3
        assets = {a.content["settings"]["form_id"]: a for a in server.assets.values()}
        assert set(assets) == {"household_survey", "training_attendance", "water_point_inspection"}
        assert all(a.deployed for a in assets.values())
        again = run("forms", "publish", "--url", server.url, "--form", "household_survey", env={"KOBO_TOKEN": token})
        assert again.returncode == 0, again.stderr
        assert "redeployed as project " + assets["household_survey"].uid in again.stdout
        assert len(server.assets) == 3
    assert token not in first.stdout + first.stderr + again.stdout + again.stderr


def test_forms_publish_refuses_what_forms_check_or_build_refuse(tmp_path: Path) -> None:
    """A form changed without a higher version, or with an error `forms check` reports,
    went to KoboToolbox as it was (redeployed under the old version, a warning at most)."""
    import shutil

    from kobo.server import LocalKoboServer

    copy = tmp_path / "terrain"  # the project as a data manager has it, one source edited
    for name in subprocess.run(["git", "ls-files", "flows", "forms", "kobo", "validation", "warehouse"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    source = copy / "forms" / "sources" / "household_survey.md"
    text = source.read_text(encoding="utf-8")
    source.unlink()
    source = source.with_name("enquete_menages.md")  # a file named otherwise than its form_id
    source.write_text(text.replace("| | image | photo | Photo de la concession | Photo of the compound |",
                                   "| | image | photo | Photo de la concession | |"), encoding="utf-8")
    token = "c0ffee" * 6 + "abcd"
    with LocalKoboServer({token: "data_manager"}) as server:
        refused = subprocess.run([sys.executable, "-m", "flows.cli", "forms", "publish", "--url", server.url,
                                  "--form", "household_survey"], cwd=copy, capture_output=True, text=True,
                                 timeout=300, env={**os.environ, "KOBO_TOKEN": token, "PYTHONPATH": str(copy)})
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert not server.assets  # nothing reached the server
    assert "[TF201]" in refused.stdout  # the English label left empty, said as `forms check` says it
    assert "nothing was published: 1 error(s) above (terrain forms check); household_survey: " in refused.stderr
    assert "raise" in refused.stderr.split("nothing was published")[1]  # and the version to raise


def test_every_command_explains_itself_in_french_then_english() -> None:
    """`terrain <command> --help` prints (argparse %-formats help texts: a stray % would
    fail only when someone asks for help), each option's help French first."""
    import argparse

    from flows.cli import build_parser

    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    seen = 0
    for parser in parsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if action.help and action.help != argparse.SUPPRESS and action.dest != "help":
                assert " / " in action.help, (parser.prog, action.dest)
        seen += bool(text)
    assert seen >= 14  # terrain, its 10 commands, forms' 4


def test_options_left_out_take_their_settings(tmp_path: Path) -> None:
    """terrain.toml (and $TERRAIN_*/$KOBO_URL) set the command line's defaults, as they do
    for `terrain serve` and the flows: a data manager who sets the EU server or the
    warehouse there does not sync against another server or query another file."""
    from warehouse.store import Warehouse

    (tmp_path / "terrain.toml").write_text('warehouse_path = "data/programme.duckdb"\n', encoding="utf-8")
    (tmp_path / "data").mkdir()
    with Warehouse(tmp_path / "data" / "programme.duckdb") as warehouse:
        warehouse.con.execute("CREATE TABLE main.marker AS SELECT 7 AS seven")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERRAIN_") and k not in ("KOBO_URL", "KOBO_TOKEN")}
    found = subprocess.run([*TERRAIN, "sql", "select seven from marker"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env={**env, "PYTHONPATH": str(ROOT)})
    assert found.returncode == 0 and " 7" in found.stdout, found.stderr[-2000:]
    elsewhere = subprocess.run([*TERRAIN, "sync", "--no-attachments"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, env={**env, "PYTHONPATH": str(ROOT), "TERRAIN_KOBO_URL": "http://127.0.0.1:9",
                                                 "KOBO_TOKEN": "x" * 40})
    assert elsewhere.returncode == 1 and "127.0.0.1:9" in elsewhere.stderr, elsewhere.stderr[-2000:]


def test_a_project_not_found_does_not_stop_the_others(seeded, tmp_path: Path) -> None:
    """One mistyped --asset stopped the whole sync before any project was pulled; the
    others are synced now, and the run ends saying which one was not found."""
    warehouse = tmp_path / "w.duckdb"
    result = run("sync", "--url", seeded.server.url, "--asset", "aDoesNotExist0000000000", "--asset",
                 seeded.assets["household_survey"].uid, "--warehouse", str(warehouse), "--no-attachments",
                 env={"KOBO_TOKEN": seeded.token})
    assert result.returncode == 1
    assert "1 formulaire(s) sur 2 en échec" in result.stderr and "projet introuvable" in result.stderr
    assert "aDoesNotExist0000000000" in result.stderr and "Traceback" not in result.stderr[-400:]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("select count(*) from raw.submissions").fetchone()[0] == len(
            seeded.assets["household_survey"].submissions)
