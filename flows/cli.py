"""The `terrain` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from forms.errors import Terminated, TerrainError

DEFAULT_WAREHOUSE = "terrain.duckdb"
DEMO_SUBMISSIONS = 1000


CELL_WIDTH = 60  # terrain sql cuts cells there (a root_uuid, 41 characters, fits); --full does not


def _say(fr: str, en: str) -> None:
    """A line for the data manager: French first, the English beside it (indented below)."""
    print(f"{fr}\n    {en}")


T = TypeVar("T")


def _say_waiting(holder_fr: str, holder_en: str) -> None:
    print(f"terrain: {holder_fr} ; attente de sa fin...\nterrain: {holder_en}; waiting for it to finish...",
          file=sys.stderr, flush=True)


@lru_cache(maxsize=1)
def _settings() -> Any:
    """terrain.toml and the environment (flows.settings), read once per command."""
    from flows.settings import load_settings

    return load_settings()


def _lock_timeout() -> float:
    return _settings().lock_timeout_seconds


# The options whose default is a setting (terrain.toml, then the environment).
SETTING_OF_OPTION = {"warehouse": "warehouse_path", "url": "kobo_url", "page_size": "page_size",
                     "parallel": "parallel", "reconcile": "reconcile", "attachments": "attachments_dir",
                     "write_back": "write_back"}


def _fill_from_settings(args: argparse.Namespace) -> None:
    """Options left out take their setting, as `terrain serve` and the flows do: one
    terrain.toml (or $TERRAIN_*, $KOBO_URL) for every way of running Terrain."""
    missing = [option for option in SETTING_OF_OPTION if getattr(args, option, "absent") is None]
    if getattr(args, "no_attachments", "absent") is None:
        args.no_attachments = not _settings().download_attachments
    for option in missing:
        setattr(args, option, getattr(_settings(), SETTING_OF_OPTION[option]))


def _when_free(warehouse_path: str, read: Callable[[], T]) -> T:
    """``read()`` once no sync or other run writes the warehouse (it waits, and says so)."""
    from warehouse.lock import read_when_free

    return read_when_free(warehouse_path, read, _lock_timeout(), on_wait=_say_waiting)


@contextmanager
def _writing(warehouse_path: str, purpose: str) -> Iterator[Any]:
    """The warehouse for writing, in turn with the syncs and other runs (warehouse.lock)."""
    from warehouse.lock import WriterLock
    from warehouse.store import Warehouse

    timeout = _lock_timeout()
    # Readers take no lock (a report, an analyst's DuckDB): the open waits for them too.
    with WriterLock(warehouse_path, timeout, purpose=purpose, on_wait=_say_waiting), \
            Warehouse(warehouse_path, wait_seconds=timeout) as warehouse:
        yield warehouse


def _format_table(columns: list[str], rows: list[tuple], max_width: int | None = CELL_WIDTH) -> str:
    """A text table; cells cut at ``max_width`` characters, or not (None)."""
    def text(value: Any) -> str:
        shown = "NULL" if value is None else str(value)
        return shown if max_width is None or len(shown) <= max_width else shown[: max_width - 1] + "…"

    cells = [[text(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [" " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)), line]
    out += [" " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def cmd_forms_build(args: argparse.Namespace) -> int:
    from forms.build import BUILD_DIR, build_form, record_versions, version_problems, write_build
    from forms.errors import FormError
    from forms.source import source_paths

    out = Path(args.out) if args.out else BUILD_DIR
    forms = [build_form(path) for path in source_paths()]
    problems = version_problems(forms)
    if problems:
        raise FormError("; ".join(p.fr for p in problems), "; ".join(p.en for p in problems))
    for built in forms:
        written = write_build(built, out)
        print(f"{built.form_id} (version {built.version}): " + ", ".join(str(p) for p in written))
        for warning in built.warnings:
            print(f"  warning: {warning}")
    record_versions(forms)
    return 0


def cmd_forms_check(args: argparse.Namespace) -> int:
    from forms.check import run_check

    return run_check(args.paths or None)


def cmd_forms_publish(args: argparse.Namespace) -> int:
    from flows.sync import resolve_token
    from forms.build import project_form, project_forms
    from kobo.client import KoboClient
    from kobo.publish import publish_form

    form_ids = args.form or sorted(project_forms())
    if args.asset and len(form_ids) != 1:
        raise TerrainError("--asset demande exactement un --form : un projet contient un seul formulaire",
                           "--asset needs exactly one --form: a project holds one form")
    _refuse_unchecked(form_ids)
    with KoboClient(args.url, resolve_token()) as client:
        for form_id in form_ids:
            result = publish_form(client, project_form(form_id), existing_uid=args.asset)
            action_fr, action_en = ("créé et déployé", "created and deployed") if result.created \
                else ("redéployé", "redeployed")
            _say(f"{form_id} : {action_fr} dans le projet {result.asset_uid}, version {result.version_id}",
                 f"{form_id}: {action_en} as project {result.asset_uid}, version {result.version_id}")
    return 0


def _refuse_unchecked(form_ids: list[str]) -> None:
    """Publishes only what `forms check` and `forms build` accept: a form with an error,
    or changed without a higher version, would otherwise reach the phones as it is."""
    from forms.build import project_form, version_problems
    from forms.check import check_all
    from forms.errors import FormError
    from forms.source import load_source, source_paths

    sources = []
    for path in source_paths():
        try:
            if load_source(path).form_id in form_ids:  # by its settings, whatever the file's name
                sources.append(path)
        except FormError:
            sources.append(path)  # unreadable: check_all says why
    errors = [p for found in check_all(sources).values() for p in found if p.severity == "error"]
    for problem in errors:
        print(problem)
    versions = version_problems([project_form(form_id) for form_id in form_ids])
    if errors or versions:
        said_fr = [f"{len(errors)} erreur(s) ci-dessus (terrain forms check)"] if errors else []
        said_en = [f"{len(errors)} error(s) above (terrain forms check)"] if errors else []
        raise FormError("rien n'est publié : " + " ; ".join(said_fr + [p.fr for p in versions]),
                        "nothing was published: " + "; ".join(said_en + [p.en for p in versions]))


def cmd_forms_diff(args: argparse.Namespace) -> int:
    from forms.build import project_form
    from forms.diff import diff_dictionaries
    from forms.dictionary import distinct_tables, keep_columns
    from warehouse.store import Warehouse

    def read() -> tuple[dict[str, Any], set[str]]:
        with Warehouse(args.warehouse, read_only=True) as warehouse:
            return ({d.version: d for d in warehouse.all_dictionaries(args.form_id)},
                    warehouse.tables_of_other_forms(args.form_id))

    versions, taken = _when_free(args.warehouse, read)
    if args.new is None:  # with the tables and columns the warehouse will give it (as FormLoader does)
        source = distinct_tables(project_form(args.form_id).dictionary, taken)
        versions["source"] = keep_columns(source, list(versions.values()))
    missing = [v for v in (args.old, args.new or "source") if v not in versions]
    if missing:
        known = ", ".join(sorted(versions)) or "none"
        raise TerrainError(f"{args.form_id} : pas de version {', '.join(missing)} dans l'entrepôt (connues : {known})",
                           f"{args.form_id}: no version {', '.join(missing)} in the warehouse (known: {known})")
    lines = diff_dictionaries(versions[args.old], versions[args.new or "source"])
    print("\n".join(lines) if lines else "Aucune différence. / No difference.")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from flows.pipeline import sync_flow
    from flows.serve import temporary_api_apart_from_ctrl_c
    from flows.sync import resolve_token
    from kobo.client import KoboClient
    from kobo.errors import ProjectNotFound

    # Check the server and token before starting the flow, so that a wrong token or
    # address gives one clear message instead of a failed flow run. A project not found
    # does not stop the others: the flow syncs them and reports it (as sync_all does).
    with KoboClient(args.url, resolve_token()) as client:
        for uid in args.asset or []:
            try:
                client.get_asset(uid)
            except ProjectNotFound:
                continue
        if not args.asset:
            client.list_assets()

    temporary_api_apart_from_ctrl_c()
    summaries = sync_flow(base_url=args.url, asset_uids=args.asset or None, warehouse_path=args.warehouse,
                          page_size=args.page_size, parallel=args.parallel, reconcile=args.reconcile,
                          download_attachments=not args.no_attachments, attachments_dir=args.attachments,
                          write_back=args.write_back)
    for s in summaries:
        _say(f"{s['form_id']} ({s['asset_uid']}) : {s['pulled']} reçues : {s['new']} nouvelles, {s['edited']} "
             f"modifiées, {s['unchanged']} inchangées ; {s['deleted']} supprimées sur le serveur ; "
             f"{s['quarantined']} mises en quarantaine par cette synchronisation ; {s['seconds']} s",
             f"pulled {s['pulled']}: new {s['new']}, edited {s['edited']}, unchanged {s['unchanged']}; deleted on "
             f"the server {s['deleted']}; quarantined by this sync {s['quarantined']}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from warehouse.store import Warehouse

    def read() -> tuple[list[str], list[tuple]]:
        with Warehouse(args.warehouse, read_only=True) as warehouse:
            return warehouse.query(args.query)

    columns, rows = _when_free(args.warehouse, read)
    print(_format_table(columns, rows, max_width=None if args.full else CELL_WIDTH))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from warehouse.exports import export_tables, exportable

    with _writing(args.warehouse, "export") as warehouse:
        warehouse.refresh_analyst_tables()
        result = export_tables(warehouse.con, args.table or exportable(warehouse.con), Path(args.out), args.format,
                               args.language)
    for path in result.files:
        print(path)
    print(", ".join(f"{table} {rows} lignes / rows" for table, rows in result.rows.items()))
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from warehouse.rebuild import rebuild_all

    with _writing(args.warehouse, "rebuild") as warehouse:
        for result in rebuild_all(warehouse):
            _say(f"{result.form_id} ({result.asset_uid}) : {result.submissions} soumissions retypées, "
                 f"{result.quarantined} en quarantaine",
                 f"{result.submissions} submissions retyped, {result.quarantined} in quarantine")
    return 0


SHOWN_STILL_QUARANTINED = 10


def cmd_corrections(args: argparse.Namespace) -> int:
    from warehouse.rebuild import apply_corrections_file

    with _writing(args.warehouse, "corrections") as warehouse:
        done = apply_corrections_file(warehouse, Path(args.file))
        applied = warehouse.con.execute("SELECT count(*) FROM meta.corrections WHERE status = 'applied'").fetchone()[0]
    checked, still = sum(r.submissions for r in done.rebuilt), done.still_quarantined
    # Counts over every correction recorded (files add up), not this file's lines only.
    _say(f"{applied} correction(s) appliquée(s) en tout (ce fichier et les précédents) ; {checked} soumission(s) "
         f"vérifiée(s) de nouveau, dont {len(still)} encore en quarantaine",
         f"{applied} correction(s) applied in all (this file and earlier ones); {checked} submission(s) checked "
         f"again, {len(still)} of them still in quarantine")
    # The corrected submissions still kept out, and why (another error than the one fixed?).
    for root, submission_id, reasons in still[:SHOWN_STILL_QUARANTINED]:
        print(f"  corrigée mais toujours en quarantaine / corrected but still in quarantine : {root} "
              f"(_id {submission_id}) : {reasons}")
    if len(still) > SHOWN_STILL_QUARANTINED:
        more = len(still) - SHOWN_STILL_QUARANTINED
        print(f"  ... et {more} de plus (terrain report les liste toutes) / and {more} more (terrain report lists "
              f"them all)")
    for problem in done.problems:
        print(f"  non appliquée / not applied : {problem}")
    for problem in done.earlier_problems:
        print(f"  toujours non appliquée, d'un fichier précédent (à réécrire ou à annuler) / still not applied, from "
              f"an earlier file (write it again or cancel it) : {problem}")
    return 1 if done.problems else 0  # this file's lines: an earlier file's were said when it was applied


def cmd_report(args: argparse.Namespace) -> int:
    from validation.report import write_corrections_template, write_report

    print(_when_free(args.warehouse, lambda: write_report(args.warehouse, args.out)))
    if args.corrections_template:
        print(_when_free(args.warehouse, lambda: write_corrections_template(args.warehouse, args.corrections_template)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve_main

    return serve_main(args.settings)


def cmd_demo(args: argparse.Namespace) -> int:
    """Local server with generated submissions -> the real Prefect flow -> a real DuckDB file."""
    from flows.pipeline import sync_flow
    from flows.serve import temporary_api_apart_from_ctrl_c
    from forms.build import BUILD_DIR, project_forms, write_build
    from kobo.seed import seeded_server
    from warehouse.store import Warehouse

    started = time.monotonic()
    forms = list(project_forms().values())
    for built in forms:
        write_build(built, BUILD_DIR)
    seeded = seeded_server(forms, args.submissions, seed=args.seed)
    generated = {form_id: len(asset.submissions) for form_id, asset in seeded.assets.items()}
    each = ", ".join(f"{k}: {v}" for k, v in generated.items())
    _say(f"Serveur local compatible KoboToolbox : {sum(generated.values())} soumissions générées ({each})",
         f"Local KoboToolbox-compatible server: {sum(generated.values())} generated submissions ({each})")
    previous_token = os.environ.get("KOBO_TOKEN")
    os.environ["KOBO_TOKEN"] = seeded.token
    try:
        with seeded.server as server:
            _say(f"Serveur sur {server.url} ; synchronisation dans {args.warehouse} par le flow Prefect...",
                 f"Serving on {server.url}; syncing into {args.warehouse} with the Prefect flow...")
            temporary_api_apart_from_ctrl_c()
            summaries = sync_flow(base_url=server.url, warehouse_path=args.warehouse)
    finally:
        if previous_token is None:
            os.environ.pop("KOBO_TOKEN", None)
        else:
            os.environ["KOBO_TOKEN"] = previous_token
    with Warehouse(args.warehouse) as warehouse:
        warehouse.refresh_analyst_tables()  # as the daily report does: the analyst views to look at
        # Written out of the log into the file itself: the demo's warehouse is one file to copy.
        warehouse.con.execute("CHECKPOINT")
        counts = warehouse.table_counts()
        quarantined = {s["asset_uid"]: warehouse.quarantined_count(s["asset_uid"]) for s in summaries}
    print("\nRésumé de la démo Terrain / Terrain demo summary")
    print("------------------------------------------------")
    for s in summaries:
        restored = s.get("restored")
        _say(f"{s['form_id']} : {s['pulled']} reçues cette fois : {s['new']} nouvelles, {s['edited']} modifiées, "
             f"{s['deleted']} supprimées, {s['unchanged']} inchangées"
             + (f", {restored} rétablies" if restored else "")
             + f" ; en quarantaine au total {quarantined[s['asset_uid']]}",
             f"pulled {s['pulled']} this run: new {s['new']}, edited {s['edited']}, deleted {s['deleted']}, "
             f"unchanged {s['unchanged']}" + (f", restored {restored}" if restored else "")
             + f"; quarantined in total {quarantined[s['asset_uid']]}")
    rows = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"Lignes par table / Rows per table: {rows}")
    print(f"Durée en secondes / Seconds taken: {time.monotonic() - started:.1f}")
    where = "" if args.warehouse == DEFAULT_WAREHOUSE else f" --warehouse {args.warehouse}"
    print(f'Essayez / Try: .venv/bin/terrain sql "select region, count(*) from households group by region"{where}')
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port (1 to 65535)")
    return int(text)


def cmd_kobo_server(args: argparse.Namespace) -> int:
    from forms.build import project_forms
    from kobo.seed import seeded_server

    try:
        seeded = seeded_server(list(project_forms().values()), args.submissions, seed=args.seed, port=args.port)
    except OSError as error:
        raise TerrainError(f"impossible d'écouter sur 127.0.0.1:{args.port} ({error.strerror}) : un autre "
                           f"programme l'utilise ? Choisissez un autre --port",
                           f"cannot listen on 127.0.0.1:{args.port} ({error.strerror}): another program uses "
                           f"it? Choose another --port") from None
    server = seeded.server
    print(f"Serveur local compatible KoboToolbox / Local KoboToolbox-compatible server: {server.url}")
    print("Jeton (affiché une fois ci-dessous) / Token (shown once below): export KOBO_TOKEN=<...>")
    print(seeded.token)
    for form_id, asset in seeded.assets.items():
        print(f"  {form_id}: asset {asset.uid}, {len(asset.submissions)} soumissions / submissions")
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terrain", description="Données de terrain de KoboToolbox vers un entrepôt DuckDB. / Field data from KoboToolbox into a DuckDB warehouse.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synchronise des soumissions générées depuis un serveur local dans ./terrain.duckdb / sync generated submissions from a local server into ./terrain.duckdb")
    demo.add_argument("--submissions", type=int, default=DEMO_SUBMISSIONS, help="soumissions par formulaire / submissions per form")
    demo.add_argument("--seed", type=int, default=2026)
    demo.add_argument("--warehouse", default=DEFAULT_WAREHOUSE,  # never the settings' one: demo data
                      help="l'entrepôt de la démo (défaut : ./terrain.duckdb) / the demo's warehouse (default: ./terrain.duckdb)")
    demo.set_defaults(func=cmd_demo)

    forms = sub.add_parser("forms", help="les XLSForms de forms/sources / the XLSForms in forms/sources")
    forms_sub = forms.add_subparsers(dest="forms_command", required=True)
    build = forms_sub.add_parser("build", help="écrit le .xlsx, le XForm et le dictionnaire de chaque formulaire / write .xlsx, XForm and field dictionary of every form")
    build.add_argument("--out", help="dossier de sortie (défaut forms/build) / output folder (default forms/build)")
    build.set_defaults(func=cmd_forms_build)
    check = forms_sub.add_parser("check", help="vérifie les sources XLSForm : erreurs avec feuille, ligne et colonne, et règles maison / check XLSForm sources: errors with sheet, row and column, and house rules")
    check.add_argument("paths", nargs="*", type=Path, help="sources markdown, .xlsx ou dossiers (défaut : forms/sources) / markdown sources, .xlsx or folders (default: forms/sources)")
    check.set_defaults(func=cmd_forms_check)
    diff = forms_sub.add_parser("diff", help="ce qui a changé entre deux versions d'un formulaire dans l'entrepôt / what changed between two versions of a form in the warehouse")
    diff.add_argument("form_id")
    diff.add_argument("old", help="l'ancienne version (comme dans settings) / the older version (as in the form's settings)")
    diff.add_argument("new", nargs="?", help="la nouvelle version (défaut : la source actuelle) / the newer version (default: the form's current source)")
    diff.add_argument("--warehouse", help="l'entrepôt (défaut : warehouse_path de terrain.toml ou $TERRAIN_WAREHOUSE, sinon terrain.duckdb) / the warehouse (default: terrain.toml's warehouse_path or $TERRAIN_WAREHOUSE, else terrain.duckdb)")
    diff.set_defaults(func=cmd_forms_diff)
    publish = forms_sub.add_parser("publish", help="importe les .xlsx dans KoboToolbox et les déploie (jeton dans KOBO_TOKEN) / import the forms' .xlsx into KoboToolbox and deploy them (token in KOBO_TOKEN)")
    publish.add_argument("--url", help="adresse du serveur (défaut : kobo_url de terrain.toml, $KOBO_URL ou https://kf.kobotoolbox.org) / server base URL (default: terrain.toml's kobo_url, $KOBO_URL or https://kf.kobotoolbox.org)")
    publish.add_argument("--form", action="append", help="form_id à publier ; à répéter ; défaut : tous / form_id to publish; repeat for several; default: all")
    publish.add_argument("--asset", help="le projet existant (uid) à redéployer, s'il n'est pas trouvé par form_id / the existing project (asset uid) to redeploy, if it cannot be found by form_id")
    publish.set_defaults(func=cmd_forms_publish)

    sync = sub.add_parser("sync", help="reçoit les soumissions de KoboToolbox (jeton dans KOBO_TOKEN) / pull submissions from KoboToolbox (token in KOBO_TOKEN)")
    sync.add_argument("--url", help="adresse du serveur (défaut : kobo_url de terrain.toml, $KOBO_URL ou https://kf.kobotoolbox.org) / server base URL (default: terrain.toml's kobo_url, $KOBO_URL or https://kf.kobotoolbox.org)")
    sync.add_argument("--asset", action="append", help="uid du projet ; à répéter ; défaut : tous les projets déployés / project (asset) uid; repeat for several; default: all deployed")
    sync.add_argument("--warehouse", help="l'entrepôt (défaut : warehouse_path de terrain.toml ou $TERRAIN_WAREHOUSE, sinon terrain.duckdb) / the warehouse (default: terrain.toml's warehouse_path or $TERRAIN_WAREHOUSE, else terrain.duckdb)")
    sync.add_argument("--page-size", type=int, help="soumissions par requête (défaut : page_size de terrain.toml, 1000) / submissions per request (default: terrain.toml's page_size, 1000)")
    sync.add_argument("--parallel", type=int, help="reçoit autant de plages d'_id à la fois (liaisons lentes) / fetch this many _id ranges at once (slow links)")
    sync.add_argument("--reconcile", choices=["auto", "always", "never"],
                      help="liste chaque soumission pour trouver modifications et suppressions (auto : à chaque "
                           "synchronisation sous 50 000 soumissions, sinon chaque jour) / list every submission to find "
                           "edits and deletions (auto: every sync under 50,000 submissions, else daily)")
    sync.add_argument("--attachments", help="dossier des pièces jointes (défaut : 'attachments' à côté de l'entrepôt) / folder for attachments (default: 'attachments' beside the warehouse)")
    sync.add_argument("--no-attachments", action="store_true", default=None, help="ne pas télécharger les pièces jointes / do not download attachments")
    sync.add_argument("--write-back", action="store_true", default=None,
                      help="met les statuts de validation KoboToolbox : 'en attente' si en quarantaine, 'approuvé' "
                           "une fois propre / set KoboToolbox validation statuses: 'on hold' if quarantined, "
                           "'approved' once clean")
    sync.set_defaults(func=cmd_sync)

    sql = sub.add_parser("sql", help="exécute une requête SQL sur l'entrepôt et affiche un tableau / run one SQL query on the warehouse and print a table")
    sql.add_argument("query", help="la requête SQL (DuckDB) / the SQL query (DuckDB)")
    sql.add_argument("--full", action="store_true", help=f"valeurs entières (sinon coupées à {CELL_WIDTH} caractères) / show whole values (cells are cut at {CELL_WIDTH} characters)")
    sql.add_argument("--warehouse", help="l'entrepôt (défaut : warehouse_path de terrain.toml ou $TERRAIN_WAREHOUSE, sinon terrain.duckdb) / the warehouse (default: terrain.toml's warehouse_path or $TERRAIN_WAREHOUSE, else terrain.duckdb)")
    sql.set_defaults(func=cmd_sql)

    export = sub.add_parser("export", help="écrit les tables sans données personnelles et les indicateurs en Parquet, CSV ou XLSX / write the tables without personal data and the indicators as Parquet, CSV or XLSX")
    export.add_argument("--format", choices=["parquet", "csv", "xlsx"], default="parquet",
                        help="format des fichiers (défaut : parquet) / file format (default: parquet)")
    export.add_argument("--out", default="exports", help="dossier de sortie (défaut : exports) / output folder (default: exports)")
    export.add_argument("--table", action="append", help="table (ou indicateur : marts.<nom>) à exporter ; à répéter ; défaut : tous / table (or indicator: marts.<name>) to export; repeat for several; default: all")
    export.add_argument("--language", default="fr", help="langue des libellés de colonnes XLSX (fr ou en) / language of the XLSX column labels (fr or en)")
    export.add_argument("--warehouse", help="l'entrepôt (défaut : warehouse_path de terrain.toml ou $TERRAIN_WAREHOUSE, sinon terrain.duckdb) / the warehouse (default: terrain.toml's warehouse_path or $TERRAIN_WAREHOUSE, else terrain.duckdb)")
    export.set_defaults(func=cmd_export)

    corrections = sub.add_parser("corrections", help="applique un fichier de corrections (XLSX ou CSV) et vérifie de nouveau / apply a corrections file (XLSX or CSV) and check again")
    corrections.add_argument("file", help="colonnes / columns: root_uuid, field, row_key, new_value, reason, author")
    corrections.add_argument("--warehouse", help="l'entrepôt (défaut : warehouse_path de terrain.toml ou $TERRAIN_WAREHOUSE, sinon terrain.duckdb) / the warehouse (default: terrain.toml's warehouse_path or $TERRAIN_WAREHOUSE, else terrain.duckdb)")
    corrections.set_defaults(func=cmd_corrections)

    report = sub.add_parser("report", help="écrit le rapport de qualité (XLSX) et un modèle de corrections / write the data-quality report (XLSX) and a corrections template")
    report.add_argument("--out", default="rapport_qualite.xlsx", help="fichier du rapport (défaut : rapport_qualite.xlsx) / report file (default: rapport_qualite.xlsx)")
    report.add_argument("--corrections-template", default="corrections.xlsx",
                        help="modèle de corrections prérempli des erreurs ouvertes (défaut : corrections.xlsx) / "
                             "corrections template prefilled with the open errors (default: corrections.xlsx)")
    report.add_argument("--warehouse", help="l'entrepôt (défaut : warehouse_path de terrain.toml ou $TERRAIN_WAREHOUSE, sinon terrain.duckdb) / the warehouse (default: terrain.toml's warehouse_path or $TERRAIN_WAREHOUSE, else terrain.duckdb)")
    report.set_defaults(func=cmd_report)

    rebuild = sub.add_parser("rebuild", help="reconstruit les tables propres depuis les soumissions brutes (sans réseau) / rebuild the clean tables from the raw submissions (no network)")
    rebuild.add_argument("--warehouse", help="l'entrepôt (défaut : warehouse_path de terrain.toml ou $TERRAIN_WAREHOUSE, sinon terrain.duckdb) / the warehouse (default: terrain.toml's warehouse_path or $TERRAIN_WAREHOUSE, else terrain.duckdb)")
    rebuild.set_defaults(func=cmd_rebuild)

    serve = sub.add_parser("serve", help="lance les synchronisations et le rapport planifiés sur cette machine (Ctrl+C arrête) / run the scheduled syncs and quality report on this machine (Ctrl+C stops)")
    serve.add_argument("--settings", help="fichier de réglages (défaut : $TERRAIN_SETTINGS ou ./terrain.toml) / settings file (default: $TERRAIN_SETTINGS or ./terrain.toml)")
    serve.set_defaults(func=cmd_serve)

    server = sub.add_parser("kobo-server", help="lance le serveur local compatible KoboToolbox au premier plan / run the local KoboToolbox-compatible server in the foreground")
    server.add_argument("--port", type=_port, default=8000, help="port sur 127.0.0.1 (défaut : 8000) / port on 127.0.0.1 "
                        "(default: 8000)")
    server.add_argument("--submissions", type=int, default=DEMO_SUBMISSIONS,
                        help="soumissions générées par formulaire / generated submissions per form")
    server.add_argument("--seed", type=int, default=2026, help="graine des données générées / seed of the generated data")
    server.set_defaults(func=cmd_kobo_server)
    return parser


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM stops Terrain as Ctrl+C does, instead of at once without a word. Within a
    # flow run Prefect's own handler takes it first (TerminationSignal), marks the run
    # crashed, and sends the signal again to this one.
    signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for room in ("flows", "forms", "kobo", "validation", "warehouse"):
        logging.getLogger(room).setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    _settings.cache_clear()
    try:
        _fill_from_settings(args)
        return args.func(args)
    except TerrainError as error:
        print(f"terrain: {error.fr}\nterrain: {error.en}", file=sys.stderr)  # French first, English beside
        return 1
    except KeyboardInterrupt as stop:
        how_fr, how_en = ("arrêté (SIGTERM)", "stopped (SIGTERM)") if isinstance(stop, Terminated) \
            else ("interrompu", "interrupted")
        print(f"terrain: {how_fr} ; ce qui a été enregistré avant est gardé (une synchronisation reprend à son "
              f"dernier lot)\nterrain: {how_en}; what was committed before is kept (a sync resumes from its last "
              f"batch)", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
