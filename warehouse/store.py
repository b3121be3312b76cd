"""The DuckDB warehouse: raw landing, clean tables built from the field dictionary,
the quarantine, and sync state. One class, so that moving to DuckLake later is a
change of connection, not of callers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import hashlib
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pandas as pd

from forms.dictionary import DICTIONARY_READING, FieldDictionary, Table, merge_versions
from forms.errors import TerrainError
from warehouse.labels import create_labelled_views, newest_version_key, store_labels
from warehouse.typing import Issue, root_uuid_of
from warehouse.xpath_sql import sql_literal

log = logging.getLogger(__name__)
SQL_DIR = Path(__file__).resolve().parent / "sql"
DEFAULT_PATH = Path("terrain.duckdb")
# DuckDB's own cache otherwise grows with the warehouse; a sync should fit a small laptop
# (issue 5: 400 MB in all; measured 370 MB at 100,000 households). Larger work spills to
# disk. Below ~100 MB, the data of the last batches (kept in memory until a checkpoint)
# and a batch's statements no longer fit together: a sync slows down as they spill.
MEMORY_LIMIT_ENV, DEFAULT_MEMORY_LIMIT_MB = "TERRAIN_DUCKDB_MEMORY", 104
# Each column of a clean table holds blocks of its own until a checkpoint writes them out,
# and the checkpoint more while it does: a sync of a form of 150 questions did not fit
# 104 MB, one of 300 questions (320 columns) not 288 MB. Unless TERRAIN_DUCKDB_MEMORY is
# set, the limit grows with the form's width (Warehouse.fit_memory_to).
MEMORY_BASE_MB, MEMORY_PER_COLUMN_MB = 48, 1.0
REPLAY_MEMORY_MAX_MB = 4096
CONNECTION_SETTINGS = [
    # The raw payloads are JSON of a few KB each. At a checkpoint DuckDB tries each string
    # compression on a whole row group of them, holding hundreds of MB outside its memory
    # limit; zstd is taken without that trial (and suits JSON). Other types keep theirs.
    "SET force_compression = 'zstd'",
    # DuckDB's default (16 MB of write-ahead log) checkpoints every few batches, each
    # rewriting the table's last row group; the log is checkpointed when the warehouse is
    # closed (see close), or replayed and checkpointed when it is opened after a crash.
    # Until a checkpoint the new rows stay in memory too, within the limit above: hence
    # well below it, leaving a batch its room.
    "SET checkpoint_threshold = '64MB'",
]
WRITER_SETTINGS = [
    # A sync is one writer fed by a thread fetching pages, on a 2-core machine: DuckDB's
    # second thread only competed with them (measured: faster and 40 MB less with one).
    "SET threads = 1",
]
# A writer attaches the warehouse with row groups of this many rows (DuckDB's default is
# 122,880). A checkpoint rewrites the row groups that grew since the last one, raw's JSON
# included: with the default, each of a sync's checkpoints (every 64 MB of log) rewrote
# up to 122,880 submissions, 1 to 2.5 s each at 1,000,000, some 30% of the sync. With
# 16,384: the same sync took 256 s instead of 292 s, at the same peak memory.
ROW_GROUP_ROWS = 16_384
WAREHOUSE_ALIAS = "warehouse"  # the writer's name for the attached file (readers keep DuckDB's own)
CLOSE_CHECKPOINT_BYTES = 16 * 2**20
# What a failed write of a sync's batch leaves undone (Warehouse.writing).
BATCH_LOST = ("rien de ce lot n'a été gardé, la prochaine synchronisation reprend à ce lot",
              "nothing of this batch was kept, the next sync starts again from it")
TABLE_COLUMNS = ("SELECT c.schema_name, c.table_name, c.column_name, c.data_type FROM duckdb_columns() AS c "
                 "JOIN duckdb_tables() AS t USING (database_name, schema_name, table_name) "
                 "WHERE c.database_name = current_database() AND NOT t.temporary")
STORED_COLUMNS = ("SELECT sum(column_count) FROM duckdb_tables() WHERE database_name = current_database() "
                  "AND schema_name = 'main'")
REOPEN_WAIT_SECONDS, REOPEN_POLL_SECONDS = 600.0, 0.5
COMMIT_OUT_OF_MEMORY = re.compile(r"(failed to pin|could not allocate) block")
# DuckDB's words for a file another process holds (not "block", which a corrupt file's
# checksum error names: that file must not be waited for as if in use).
FILE_LOCKED = re.compile(r"Could not set lock on file|Conflicting lock is held")
NEWEST_VERSION_ORDER = f"({newest_version_key()})"  # the newest version of a form last
_TYPE_NAMES: dict[str, str] = {}  # a dictionary's type -> DuckDB's name of it (Warehouse._type_name)
DATABASE_INVALIDATED = "has been invalidated"  # DuckDB stopped the database (a failed checkpoint)
# glibc serves a freed large block's size from its heap from then on (its mmap threshold
# rises up to 32 MB), where DuckDB's 256 KB blocks and pandas' arrays then fragment it:
# a sync's resident memory grew some 30 MB over its first batches. A fixed threshold
# keeps large blocks in mappings of their own, returned when freed.
# glibc also gives each thread that allocates an arena of its own (up to 16 on 2 cores),
# each keeping what it freed: a sync with 8 ranges fetched at once peaked at 386-395 MB
# with them, 380 MB with 2 arenas (MALLOC_ARENA_MAX=2, one run at 1,000,000, 200 ms
# latency; the fetching threads mostly wait for the server).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_THRESHOLDS = {M_MMAP_THRESHOLD: 256 * 2**10, M_TRIM_THRESHOLD: 2**20, M_ARENA_MAX: 2}


@lru_cache(maxsize=None)
def _glibc() -> Any:
    """The C library if it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@lru_cache(maxsize=None)
def fix_malloc_thresholds() -> bool:
    """Sets glibc's malloc thresholds for this process (once); False where there is no glibc."""
    libc = _glibc()
    return libc is not None and all(libc.mallopt(option, value) == 1 for option, value in MALLOC_THRESHOLDS.items())


def release_freed_memory() -> None:
    """Hands the free pages inside glibc's heap back to the system (malloc_trim): what a
    batch or a closed connection freed amid blocks still in use stays resident otherwise.
    Called after each batch and at each reopening (a few ms): over a 1,000,000-submission
    sync, the memory left after each reopening grew from 205 to 212 MB without it and
    stays near 200 MB with it; the peak was 388 MB, against 398 and 403 in two runs
    without."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def megabytes(limit: str) -> float:
    """'104MB', '1GB', '512 MiB' (DuckDB's memory limits) in MB; 0 when unreadable."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])(I?)B\s*", limit.upper())
    if not found:
        return 0.0
    number, unit, binary = found.groups()
    return float(number) * (1024 if binary else 1000) ** ("KMGT".index(unit) - 1)


def _memory_set_by_user() -> str:
    return os.environ.get(MEMORY_LIMIT_ENV, "").strip()


class WarehouseError(TerrainError):
    """The warehouse file cannot be opened or written."""


@lru_cache(maxsize=None)
def named_queries(file_name: str, folder: Path = SQL_DIR) -> dict[str, str]:
    """Reads ``-- name: x`` sections of a .sql file."""
    text = (folder / file_name).read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


def create_macros(con: duckdb.DuckDBPyConnection) -> None:
    """The macros of macros.sql, which landing and typing use, on this connection."""
    for macro in named_queries("macros.sql").values():
        con.execute(macro)


# Text of the submissions parsed and hashed (or compared) together when landing
# (land_raw.sql, page_documents and same_content_of_rows): DuckDB takes some 20 times
# their text while it does, beside the batch.
PARSE_BYTES = 2**20
# The temp tables land_raw.sql makes for each batch (Warehouse.drop_landing).
LANDING_TEMP_TABLES = tuple(re.findall(r"CREATE OR REPLACE TEMP TABLE (\w+)",
                                      "\n".join(named_queries("land_raw.sql").values())))


def quote(identifier: str) -> str:
    """Identifiers come only from the field dictionary; they are still always quoted."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass
class LandingResult:
    """What landing a batch of pages found, per page (its position in the batch)."""

    landed: dict[int, tuple[int, int, int, int]]  # page: (new, edited, unchanged, restored)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (page, why, what arrived): not submissions
    # the new and edited submissions stay in the temp table landing_new for the caller, and
    # the unchanged ones that were marked deleted in landing_restored


class WarehouseInUse(WarehouseError):
    """Another process has the warehouse file open (DuckDB lets one writer, or readers only)."""


class Warehouse:
    def __init__(self, path: str | Path = DEFAULT_PATH, read_only: bool = False, wait_seconds: float = 0.0):
        """``wait_seconds``: how long to wait for another program holding the file (an
        analyst's DuckDB session) to let go, rather than failing at once."""
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise WarehouseError(f"pas d'entrepôt à {self.path} : lancez d'abord `terrain sync` (ou `make demo`)",
                                 f"no warehouse at {self.path}: run `terrain sync` (or `make demo`) first")
        if not read_only:
            fix_malloc_thresholds()
        self.memory_limit = _memory_set_by_user() or f"{DEFAULT_MEMORY_LIMIT_MB}MB"
        self.con = self._connect_waiting(wait_seconds, gave_up=(
            f"un autre programme (une session DuckDB ?) garde l'entrepôt {self.path} depuis plus de "
            f"{wait_seconds:.0f} s : fermez-le, puis réessayez",
            f"another program (a DuckDB session?) has kept the warehouse {self.path} for over "
            f"{wait_seconds:.0f} s: close it, then try again") if wait_seconds else None)
        if not read_only:
            self._create_schema()
            self._fill_lookup_keys()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        replaying = not self.read_only and self._wal_bytes() > CLOSE_CHECKPOINT_BYTES
        limit = self.memory_limit
        while True:
            try:
                con = self._open(limit)
                break
            except duckdb.Error as error:
                # Opening replays the log of an interrupted run into memory: a wide form's log may
                # need more than a sync's limit (and the checkpoint below more still).
                if replaying and COMMIT_OUT_OF_MEMORY.search(str(error)) and not _memory_set_by_user() \
                        and megabytes(limit) < REPLAY_MEMORY_MAX_MB:
                    limit = f"{2 * megabytes(limit):.0f}MB"
                    log.warning("relecture du journal d'une exécution interrompue de %s avec %s de mémoire / "
                                "replaying the log of an interrupted run of %s with %s of memory", self.path, limit,
                                self.path, limit)
                    continue
                raise self._open_error(error, replaying) from None
        if replaying:
            # The log of a killed run is replayed into memory; written out at once, it does
            # not fill the memory the first batch needs (DuckDB 1.5 then spilled to disk,
            # and its temporary-file accounting could fail the commit).
            try:
                # Written out with the memory the warehouse's tables need (all of them: the
                # forms of the log are not known here), then back to the sync's own limit.
                fitted = self._memory_for(con.execute(STORED_COLUMNS).fetchone()[0] or 0)
                if fitted and megabytes(fitted) > megabytes(limit):
                    con.execute(f"SET memory_limit = '{fitted}'")
                con.execute("CHECKPOINT")
                con.execute(f"SET memory_limit = '{self.memory_limit}'")
            except duckdb.Error as error:
                con.close()
                said = str(error).splitlines()[0]
                raise WarehouseError(f"impossible d'écrire dans {self.path} le journal d'une exécution interrompue : "
                                     f"{said}",
                                     f"could not write out the log of an interrupted run to {self.path}: "
                                     f"{said}") from None
        return con

    def _open(self, memory_limit: str) -> duckdb.DuckDBPyConnection:
        if self.read_only:
            con = duckdb.connect(str(self.path), read_only=True, config={"memory_limit": memory_limit})
        else:
            # Attached rather than opened: only ATTACH sets the row group size (ROW_GROUP_ROWS).
            con = duckdb.connect(config={"memory_limit": memory_limit})
            try:
                con.execute(f"ATTACH {sql_literal(str(self.path))} AS {WAREHOUSE_ALIAS} "
                            f"(ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
                con.execute(f"USE {WAREHOUSE_ALIAS}")
            except duckdb.Error:
                con.close()
                raise
        con.execute("SET TimeZone = 'UTC'")  # KoboToolbox times are read and shown in UTC
        for setting in CONNECTION_SETTINGS + ([] if self.read_only else WRITER_SETTINGS):
            con.execute(setting)
        if not self.read_only:  # close() decides (see there)
            con.execute("PRAGMA disable_checkpoint_on_shutdown")
            create_macros(con)
        return con

    def _open_error(self, error: duckdb.Error, replaying: bool) -> WarehouseError:
        text = str(error)
        if isinstance(error, duckdb.IOException) and "not a valid DuckDB database" in text:
            return WarehouseError(f"{self.path} n'est pas un entrepôt DuckDB utilisable (fichier abîmé, ou d'un "
                                  f"autre type) : restaurez-le depuis une sauvegarde, ou déplacez-le et relancez une "
                                  f"synchronisation complète",
                                  f"{self.path} is not a usable DuckDB warehouse (a corrupted file, or another kind "
                                  f"of file): restore it from a backup, or move it away and run a full sync again")
        if isinstance(error, duckdb.IOException) and FILE_LOCKED.search(text):
            return WarehouseInUse(f"l'entrepôt {self.path} est utilisé par un autre processus ; réessayez quand "
                                  f"il aura fini",
                                  f"the warehouse {self.path} is in use by another run; try again when it has "
                                  f"finished")
        # A reader replays the log too (in memory, without writing it out): "replaying WAL".
        if (replaying or "replaying WAL" in text) and (
                COMMIT_OUT_OF_MEMORY.search(text) or isinstance(error, duckdb.OutOfMemoryException)):
            advice_fr, advice_en = self._more_memory_advice()
            return WarehouseError(f"le journal d'une exécution interrompue de {self.path} ({self.path}.wal, gardé "
                                  f"tel quel) n'a pas pu être relu en mémoire. {advice_fr} "
                                  f"(DuckDB : {text.splitlines()[0]})",
                                  f"the log of an interrupted run of {self.path} ({self.path}.wal, kept as it is) "
                                  f"could not be replayed in memory. {advice_en} "
                                  f"(DuckDB: {text.splitlines()[0]})")
        if isinstance(error, duckdb.IOException):
            return WarehouseError(f"impossible d'ouvrir l'entrepôt {self.path} : {error}",
                                  f"cannot open the warehouse {self.path}: {error}")
        return WarehouseError(f"{self.path} n'est pas un entrepôt DuckDB utilisable : {error}",
                              f"{self.path} is not a usable DuckDB warehouse: {error}")

    def fit_memory_to(self, columns: int) -> None:
        """Raises DuckDB's memory limit for tables of ``columns`` columns in all (see
        MEMORY_PER_COLUMN_MB), unless the data manager set TERRAIN_DUCKDB_MEMORY; kept on reopen."""
        fitted = self._memory_for(columns)
        if fitted:
            log.info("l'entrepôt peut utiliser %s de mémoire (au lieu de %s) pour des formulaires de %d colonnes / "
                     "the warehouse may use %s of memory (not %s) for forms of %d columns", fitted,
                     self.memory_limit, columns, fitted, self.memory_limit, columns)
            self.memory_limit = fitted
            self.con.execute(f"SET memory_limit = '{fitted}'")

    def _memory_for(self, columns: int) -> str | None:
        """The memory limit tables of ``columns`` columns need, when above the present one and
        TERRAIN_DUCKDB_MEMORY is not set."""
        needed = math.ceil(MEMORY_BASE_MB + MEMORY_PER_COLUMN_MB * columns)
        if _memory_set_by_user() or needed <= megabytes(self.memory_limit):
            return None
        return f"{needed}MB"

    def reopen(self, wait_seconds: float = REOPEN_WAIT_SECONDS) -> None:
        """Closes the connection and opens it again, between two transactions: DuckDB 1.5
        keeps some 60 bytes of every in-memory block it ever made until the database is
        closed (about 750 blocks per 1,000 submissions synced: 45 MB over 1,000,000), so a
        long sync reopens its warehouse now and then (FormLoader.reopen_every).
        Another program may open the file in the moment it is closed (an analyst's DuckDB
        reading it): this waits up to ``wait_seconds`` for it to let go."""
        self.close()
        release_freed_memory()
        self.con = self._connect_waiting(wait_seconds, gave_up=(
            f"la synchronisation s'est arrêtée un instant pour rouvrir l'entrepôt {self.path}, et un "
            f"autre programme l'a ouvert entre-temps (une session DuckDB qui le lit ?) et l'a gardé "
            f"{wait_seconds:.0f} s : fermez-le et relancez la synchronisation ; tout ce qui a été "
            f"synchronisé est gardé",
            f"the sync paused to reopen the warehouse {self.path}, and another program opened it "
            f"meanwhile (a DuckDB session reading it?) and kept it for {wait_seconds:.0f} s: close it "
            f"and sync again; everything synced so far is kept"))

    def _connect_waiting(self, wait_seconds: float,
                         gave_up: tuple[str, str] | None = None) -> duckdb.DuckDBPyConnection:
        """_connect, waiting up to ``wait_seconds`` while another program holds the file;
        then WarehouseInUse with ``gave_up`` (French, English), or as _connect raised it."""
        deadline = time.monotonic() + wait_seconds
        warned = False
        while True:
            try:
                return self._connect()
            except WarehouseInUse:
                if time.monotonic() >= deadline:
                    if gave_up is None:
                        raise
                    raise WarehouseInUse(*gave_up) from None
                if not warned:
                    log.warning("l'entrepôt %s est ouvert par un autre programme ; attente de sa fermeture, %.0f s "
                                "au plus / the warehouse %s is open in another program; waiting up to %.0f s for "
                                "it to close", self.path, wait_seconds, self.path, wait_seconds)
                    warned = True
                time.sleep(REOPEN_POLL_SECONDS)

    def close(self) -> None:
        """Closes the warehouse; checkpoints only a large write-ahead log: a small incremental
        sync does not pay for a checkpoint, and the next open replays a small log quickly."""
        if not self.read_only and self._wal_bytes() > CLOSE_CHECKPOINT_BYTES:
            try:
                self.con.execute("CHECKPOINT")
            except duckdb.Error:
                pass  # (a full disk?) the log stays and is replayed by the next open
        self.con.close()

    def _wal_bytes(self) -> int:
        wal = Path(f"{self.path}.wal")
        return wal.stat().st_size if wal.exists() else 0

    def __enter__(self) -> "Warehouse":
        return self

    def _create_schema(self) -> None:
        """Runs schema.sql unless this warehouse already ran this very text (its digest is
        kept as the comment of raw.history): replacing its views took some 0.3 s each in
        a warehouse of 100,000 submissions, at every sync."""
        sql = (SQL_DIR / "schema.sql").read_text(encoding="utf-8")
        # ("with columns": warehouses stamped before _add_new_columns existed are checked once)
        digest = "schema.sql with columns " + hashlib.sha256(sql.encode()).hexdigest()[:16]
        done = self.con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'raw' AND "
                                "view_name = 'history' AND comment = ?", [digest]).fetchone()[0]
        if not done:
            self._add_new_columns(sql)
            self.con.execute(sql)
            self.con.execute(f"COMMENT ON VIEW raw.history IS '{digest}'")

    def _fill_lookup_keys(self) -> None:
        """Raw rows without a root_key or uuid_key (landed by an older Terrain, which had no
        such column) get theirs: a batch finds the versions raw holds by them (land_raw.sql
        known_versions, the duplicate_uuid rule), and would take a submission it missed for
        a new one. A few ms when none is missing."""
        self.con.execute("UPDATE raw.submissions SET root_key = coalesce(root_key, lookup_key(root_uuid)), "
                         "uuid_key = coalesce(uuid_key, lookup_key(uuid)) WHERE root_key IS NULL OR uuid_key IS NULL")

    def _add_new_columns(self, sql: str) -> None:
        """A warehouse made by an older Terrain gets the columns schema.sql has gained since
        (empty for the rows it holds): CREATE TABLE IF NOT EXISTS leaves a table as it was,
        and a sync would then fail on the missing column."""
        scratch = duckdb.connect()
        try:
            scratch.execute(sql)
            wanted = scratch.execute(TABLE_COLUMNS).fetchall()
        finally:
            scratch.close()
        present = self.con.execute(TABLE_COLUMNS).fetchall()
        tables = {(schema, table) for schema, table, _, _ in present}
        columns = {(schema, table, column) for schema, table, column, _ in present}
        missing = [(schema, table, column, duck_type) for schema, table, column, duck_type in wanted
                   if (schema, table) in tables and (schema, table, column) not in columns]
        for schema, table, column, duck_type in missing:
            log.info("ajout de la colonne %s à %s.%s de %s (faite par un Terrain plus ancien) / adding the column %s "
                     "to %s.%s of %s (made by an older Terrain)", column, schema, table, self.path, column, schema,
                     table, self.path)
            self.con.execute(f"ALTER TABLE {quote(schema)}.{quote(table)} ADD COLUMN {quote(column)} {duck_type}")
        if missing:
            # Written out at once: DuckDB 1.5 failed to replay such an ALTER from its log
            # ("GetDefaultDatabase with no default database set").
            self.con.execute("CHECKPOINT")

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def writing(self, lost: tuple[str, str] = BATCH_LOST) -> Iterator[None]:
        """Turns a failed write (a full disk, a file that cannot grow) into a clear error;
        the transaction around it is rolled back, so the warehouse stays as it was.
        ``lost`` says, in French and English, what the failure leaves undone (a sync's batch
        by default)."""
        lost_fr, lost_en = lost
        try:
            yield
        except (duckdb.FatalException, duckdb.OutOfMemoryException, duckdb.TransactionException,
                duckdb.IOException) as error:
            first_line = str(error).splitlines()[0]
            advice_fr, advice_en = self._more_memory_advice()
            if isinstance(error, duckdb.FatalException) or DATABASE_INVALIDATED in str(error):
                # Writing the log out (a checkpoint, within a commit) failed, and DuckDB stopped
                # the database (an attached one says so in a failed commit): the batches
                # committed before are in the log, this one is not.
                raise WarehouseError(f"DuckDB s'est arrêté en écrivant l'entrepôt {self.path} : {first_line} ; ce "
                                     f"qui a été enregistré avant est gardé dans son journal et écrit à sa prochaine "
                                     f"ouverture ; {lost_fr}. {advice_fr}",
                                     f"DuckDB stopped while writing out the warehouse {self.path}: {first_line}; "
                                     f"what was committed before is kept in its log and written out when it is next "
                                     f"opened; {lost_en}. {advice_en}") from None
            # DuckDB reports memory it could not find at commit as a failed commit ("failed to
            # pin block", "could not allocate block"): a form of 150 text questions needs more
            # than the default limit.
            if isinstance(error, duckdb.OutOfMemoryException) or (
                    isinstance(error, duckdb.TransactionException) and COMMIT_OUT_OF_MEMORY.search(str(error))):
                raise self._out_of_memory(error, lost) from None
            disk = isinstance(error, duckdb.IOException)
            why_fr = "disque plein, ou pas de place ?" if disk else "DuckDB a refusé l'enregistrement"
            why_en = "disk full, or no space for it?" if disk else "DuckDB refused the commit"
            raise WarehouseError(f"impossible d'écrire l'entrepôt {self.path} ({why_fr}) : {first_line} ; {lost_fr}",
                                 f"could not write the warehouse {self.path} ({why_en}): {first_line}; {lost_en}"
                                 ) from None

    @contextmanager
    def reading(self, lost: tuple[str, str]) -> Iterator[None]:
        """Turns a query short of memory (a report, a corrections template) into a clear error saying
        what was not done (``lost``, in French and English) and which setting to raise."""
        try:
            yield
        except duckdb.OutOfMemoryException as error:
            raise self._out_of_memory(error, lost) from None

    def _out_of_memory(self, error: duckdb.Error, lost: tuple[str, str]) -> WarehouseError:
        first_line = str(error).splitlines()[0]
        advice_fr, advice_en = self._more_memory_advice()
        return WarehouseError(f"l'entrepôt {self.path} a manqué de mémoire : {lost[0]}. {advice_fr} "
                              f"(DuckDB : {first_line})",
                              f"the warehouse {self.path} ran out of memory: {lost[1]}. {advice_en} "
                              f"(DuckDB: {first_line})")

    def _more_memory_advice(self) -> tuple[str, str]:
        more = max(256, math.ceil(2 * megabytes(self.memory_limit)))
        return (f"Il disposait de {self.memory_limit} de mémoire : définissez {MEMORY_LIMIT_ENV}={more}MB (ou plus) "
                f"et relancez.",
                f"It was allowed {self.memory_limit} of memory: set {MEMORY_LIMIT_ENV}={more}MB (or more) and run again.")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        try:
            self.con.execute("COMMIT")
        except duckdb.Error:
            try:  # a commit that failed (e.g. the disk is full) leaves nothing behind
                self.con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise

    # -- forms and tables -----------------------------------------------------------------
    def register_form_version(self, dictionary: FieldDictionary) -> None:
        """Records a form version's dictionary, and creates or widens its tables, labels and
        views; a version already recorded costs one lookup (and gains the personal marks
        of a redeploy under its name)."""
        known = self.con.execute("SELECT dictionary::VARCHAR FROM meta.form_versions WHERE form_id = ? AND version = ?",
                                 [dictionary.form_id, dictionary.version]).fetchone()
        if known:
            self._mark_personal(FieldDictionary.from_json(known[0]), dictionary)
        if known and all(self._table_exists(t.name) for t in dictionary.tables.values()):
            return
        self.con.execute(
            "INSERT INTO meta.form_versions (form_id, version, dictionary, first_seen, read_with) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [dictionary.form_id, dictionary.version, dictionary.to_json(), dt.datetime.now(dt.timezone.utc),
             DICTIONARY_READING],
        )
        for table in dictionary.tables.values():
            self._ensure_table(table)
        store_labels(self.con, dictionary)
        create_labelled_views(self.con, self.every_version(dictionary.form_id))
        self.create_marts()

    def versions_read_before(self, asset_uid: str) -> list[tuple[str, FieldDictionary]]:
        """(version uid, stored dictionary) of the project's versions stored with an older
        reading of forms than this Terrain's (DICTIONARY_READING)."""
        rows = self.con.execute(
            "SELECT a.version_uid, f.dictionary::VARCHAR FROM meta.asset_versions a JOIN meta.form_versions f "
            "USING (form_id, version) WHERE a.asset_uid = ? AND coalesce(f.read_with, 0) < ? ORDER BY f.first_seen",
            [asset_uid, DICTIONARY_READING]).fetchall()
        return [(uid, FieldDictionary.from_json(text)) for uid, text in rows]

    def bring_up_to_date(self, stored: FieldDictionary, read: FieldDictionary | None) -> None:
        """A stored version, as this Terrain ``read`` it again from its form (None: the form
        is gone): the marks it missed, then noted as read, in one transaction (a kill
        between would leave the views in clear with the version noted as done)."""
        with self.transaction():
            if read is not None:
                self._mark_personal(stored, read)
            self.con.execute("UPDATE meta.form_versions SET read_with = ? WHERE form_id = ? AND version = ?",
                             [DICTIONARY_READING, stored.form_id, stored.version])

    def _mark_personal(self, stored: FieldDictionary, built: FieldDictionary) -> None:
        """A question the form marks personal now and the stored version did not (stored by
        an older Terrain, which read fewer marks: "oui", a group's mark; or the project
        redeployed under the same version name with a new mark) is marked in the stored
        version too, and the labelled views made again: else it stayed in clear until a
        new form version. Marks are only added."""
        personal = {f.kobo_key for f in built.fields() if f.pii}  # a question's path: one per form
        if all(f.pii for f in stored.fields() if f.kobo_key in personal):
            return
        tables = {name: replace(table, fields=[replace(f, pii=f.pii or f.kobo_key in personal)
                                               for f in table.fields]) for name, table in stored.tables.items()}
        marked = replace(stored, tables=tables)
        self.con.execute("UPDATE meta.form_versions SET dictionary = ? WHERE form_id = ? AND version = ?",
                         [marked.to_json(), stored.form_id, stored.version])
        store_labels(self.con, marked)  # meta.field_labels.is_pii says so too
        create_labelled_views(self.con, self.every_version(stored.form_id))
        log.info("%s %s : questions personnelles marquées selon le formulaire / personal questions marked as the "
                 "form says", stored.form_id, stored.version)

    def mark_deployed(self, dictionary: FieldDictionary) -> None:
        """Notes that a sync found this version deployed (meta.form_versions.last_deployed)."""
        self.con.execute("UPDATE meta.form_versions SET last_deployed = ? WHERE form_id = ? AND version = ?",
                         [dt.datetime.now(dt.timezone.utc), dictionary.form_id, dictionary.version])

    def register_asset_version(self, asset_uid: str, version_uid: str, dictionary: FieldDictionary) -> None:
        self.con.execute("INSERT INTO meta.asset_versions VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         [asset_uid, version_uid, dictionary.form_id, dictionary.version])

    def dictionary_for(self, asset_uid: str, version_uid: str | None) -> FieldDictionary | None:
        """The stored dictionary a submission of this version uid was typed with (None:
        unknown). A sync first reads again those stored with an older reading of forms
        (flows.sync.read_stored_versions_again); a rebuild, offline, takes them as stored."""
        row = self.con.execute(
            "SELECT f.dictionary::VARCHAR FROM meta.asset_versions a JOIN meta.form_versions f USING (form_id, version) "
            "WHERE a.asset_uid = ? AND a.version_uid = ?", [asset_uid, version_uid]).fetchone()
        return FieldDictionary.from_json(row[0]) if row else None

    def create_marts(self) -> list[str]:
        """Creates the indicator views whose tables exist; returns their names."""
        self.con.execute("CREATE SCHEMA IF NOT EXISTS marts")
        created = []
        for name, sql in named_queries("marts.sql").items():
            try:
                self.con.execute(sql)
                created.append(name)
            except duckdb.CatalogException:
                continue  # a form it reads has not been synced yet
        return created

    def latest_dictionaries(self) -> list[FieldDictionary]:
        """The newest field dictionary of every form in the warehouse."""
        rows = self.con.execute(
            f"SELECT arg_max(dictionary, {NEWEST_VERSION_ORDER})::VARCHAR FROM meta.form_versions "
            f"GROUP BY form_id ORDER BY form_id").fetchall()
        return [FieldDictionary.from_json(row[0]) for row in rows]

    def tables_of_other_forms(self, form_id: str) -> set[str]:
        """The clean tables the other forms' versions use (forms.dictionary.distinct_tables)."""
        return {row[0] for row in self.con.execute(
            "SELECT DISTINCT unnest(json_keys(dictionary, '$.tables')) FROM meta.form_versions WHERE form_id <> ?",
            [form_id]).fetchall()}

    def all_dictionaries(self, form_id: str, newest_last: bool = False) -> list[FieldDictionary]:
        """Every version of the form, in the order they were first seen (keep_columns: the
        first to use a column owns it), or ``newest_last`` (the one deployed last, last)."""
        order = NEWEST_VERSION_ORDER if newest_last else "first_seen"
        rows = self.con.execute(f"SELECT dictionary::VARCHAR FROM meta.form_versions WHERE form_id = ? ORDER BY {order}",
                                [form_id]).fetchall()
        return [FieldDictionary.from_json(row[0]) for row in rows]

    def every_version(self, form_id: str) -> FieldDictionary:
        """One dictionary covering every version of the form (forms.dictionary.merge_versions)."""
        return merge_versions(self.all_dictionaries(form_id, newest_last=True))

    def refresh_analyst_tables(self) -> list[str]:
        """Rebuilds the analyst schema (clean tables without personal data): a column is
        left out or hashed if any version of its form marks it personal. The labelled
        views and the marts are made again too (a sync makes them only with a new form
        version), so a warehouse written by an older Terrain reads as this one's."""
        from warehouse.exports import pii_salt, refresh_analyst_tables

        forms = [row[0] for row in self.con.execute(
            "SELECT DISTINCT form_id FROM meta.form_versions ORDER BY 1").fetchall()]
        dictionaries = [self.every_version(form) for form in forms]
        with self.transaction():
            for dictionary in dictionaries:
                create_labelled_views(self.con, dictionary)
            self.create_marts()
            return refresh_analyst_tables(self.con, dictionaries, pii_salt(self.path))

    def _table_exists(self, name: str) -> bool:
        return bool(self.con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' "
                                     "AND table_name = ?", [name]).fetchone()[0])

    def _ensure_table(self, table: Table) -> None:
        """Creates the clean table, or adds the columns a new form version brought (never drops any)."""
        keys = ("root_uuid", "row_key")
        wanted = [(c, f"{t} NOT NULL" if c in keys else t) for c, t in table.column_types()]
        existing = dict(self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'main' "
            "AND table_name = ?", [table.name]).fetchall())
        clashes = [(c, existing[c], t) for c, t in table.column_types()
                   if c in existing and self._type_name(t) != existing[c]]
        if clashes:
            # keep_columns gives a question whose type changed a column of its own: a clash is
            # a table another form (or project) made under the same name.
            column, held, given = clashes[0]
            raise WarehouseError(
                f"la table {table.name} de {self.path} a une colonne {column} de type {held}, et une version de "
                f"formulaire donne à cette colonne le type {given} : une table d'un autre formulaire ou projet "
                f"s'appelle-t-elle aussi {table.name} ? Donnez à l'une d'elles un autre nom de table (le réglage "
                f"terrain_table de son XLSForm) ; rien n'a été écrit",
                f"the table {table.name} of {self.path} has a column {column} of type {held}, and a form "
                f"version gives that column the type {given}: is a table of another form or "
                f"project named {table.name} too? Give one of them another table name (the terrain_table "
                f"setting of its XLSForm); nothing was written")
        if not existing:
            # No PRIMARY KEY: a DuckDB index is held whole in memory, so memory would grow with
            # the warehouse; a submission's rows are deleted before they are inserted again, in
            # the same transaction (warehouse/load.py), and tests check there are no twins.
            columns = ", ".join(f"{quote(c)} {t}" for c, t in wanted)
            self.con.execute(f"CREATE TABLE {quote(table.name)} ({columns})")
            return
        for column, duck_type in wanted:
            if column not in existing:
                self.con.execute(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column)} "
                                 f"{duck_type.replace(' NOT NULL', '')}")

    def _type_name(self, duck_type: str) -> str:
        """DuckDB's own name of a type as written in a dictionary (TIMESTAMPTZ: TIMESTAMP WITH TIME ZONE)."""
        if duck_type not in _TYPE_NAMES:
            _TYPE_NAMES[duck_type] = self.con.execute(f"SELECT typeof(CAST(NULL AS {duck_type}))").fetchone()[0]
        return _TYPE_NAMES[duck_type]

    # -- raw landing --------------------------------------------------------------------
    def land(self, asset_uid: str, form_id: str, bodies: list[bytes], now: dt.datetime) -> LandingResult:
        """Lands the submissions of a batch of pages as received (JSON in UTF-8, each an
        object with a ``results`` list); DuckDB parses them, Python never walks them."""
        queries = named_queries("land_raw.sql")
        self.con.execute(queries["page_results"])
        for sequence, body in enumerate(bodies):
            self.con.execute(queries["page_results_of_page"], {"sequence": sequence, "body": body})
        self.con.execute(queries["page_documents"])
        results = self.con.execute("SELECT count(*) FROM page_results").fetchone()[0]
        self._in_slices(queries["page_documents_of_rows"], results, sum(len(body) for body in bodies))
        self.con.execute(queries["landing"], {"asset_uid": asset_uid, "form_id": form_id})
        rejected = self.con.execute(queries["rejected"]).fetchall()
        self.con.execute(queries["known_versions"], {"asset_uid": asset_uid})
        if self.con.execute(queries["hash_differs_same_uuid"]).fetchone()[0]:
            self.con.execute(queries["reordered"], {"asset_uid": asset_uid})
            self.con.execute(queries["same_content_rows"])
            pairs, text = self.con.execute("SELECT count(*), sum(strlen(CAST(held AS VARCHAR)) "
                                           "+ strlen(CAST(received AS VARCHAR))) FROM reordered").fetchone()
            self._in_slices(queries["same_content_of_rows"], pairs, text or 0)
            self.con.execute(queries["rehash_same_content"])
            self.con.execute(queries["known_versions"], {"asset_uid": asset_uid})
        self.con.execute(queries["new_versions"])
        self.con.execute(queries["restored"])
        landed = {sequence: (changed - edited, edited, total - changed - restored, restored)
                  for sequence, total, changed, edited, restored
                  in self.con.execute(queries["landed_counts"]).fetchall()}
        if any(unchanged or restored for _, _, unchanged, restored in landed.values()):
            self.con.execute(queries["touch_seen"], {"now": now})
        if any(edited for _, edited, _, _ in landed.values()):
            self.con.execute(queries["retire_old_versions"])
        self.con.execute(queries["insert_new_versions"], {"now": now})
        return LandingResult(landed=landed, rejected=rejected)

    def _in_slices(self, statement: str, rows: int, text_bytes: int) -> None:
        """Runs ``statement`` (with $done and $rows: its rows are done + 1 .. done + rows)
        over ``rows`` rows holding ``text_bytes`` of JSON, a slice of PARSE_BYTES at a time."""
        size = max(1, PARSE_BYTES * rows // max(1, text_bytes))
        for done in range(0, rows, size):
            self.con.execute(statement, {"done": done, "rows": size})

    def drop_landing(self) -> None:
        """Drops land()'s temp tables once their batch is done with them."""
        for name in LANDING_TEMP_TABLES:
            self.con.execute(f"DROP TABLE IF EXISTS {name}")

    # -- clean tables and quarantine ------------------------------------------------------
    @contextmanager
    def keys_relation(self, name: str, root_uuids: list[str]) -> Iterator[None]:
        """A list of submission keys as a relation other statements can join."""
        self.con.register(name, pd.DataFrame({"root_uuid": pd.Series(root_uuids, dtype="string")}))
        try:
            yield
        finally:
            self.con.unregister(name)

    def delete_clean(self, tables: list[str], root_uuids: list[str]) -> None:
        with self.keys_relation("touched_keys", root_uuids):
            for table in tables:
                self.con.execute(f"DELETE FROM {quote(table)} WHERE root_uuid IN (SELECT root_uuid FROM touched_keys)")

    # -- reconciliation: deletes and edits, which KoboToolbox does not announce -----------
    def start_reconciliation(self) -> None:
        self.con.execute("CREATE OR REPLACE TEMP TABLE server_index "
                         "(root_uuid VARCHAR, uuid VARCHAR, submission_id BIGINT)")

    def add_to_server_index(self, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame({
            "root_uuid": [root_uuid_of(r) for r in rows],
            "uuid": [str(r.get("_uuid") or "") for r in rows],
            "submission_id": [int(r["_id"]) for r in rows],
        })
        self.con.register("index_page", frame)
        try:
            self.con.execute("INSERT INTO server_index SELECT root_uuid, uuid, submission_id FROM index_page")
        finally:
            self.con.unregister("index_page")

    def reconciliation_diff(self, asset_uid: str) -> tuple[list[str], list[int]]:
        """(root uuids deleted on the server, _ids to fetch again because they changed or are missing)."""
        queries = named_queries("land_raw.sql")
        deleted = [r[0] for r in self.con.execute(queries["reconciliation_deleted"], {"asset_uid": asset_uid}).fetchall()]
        changed = [r[0] for r in self.con.execute(queries["reconciliation_changed"], {"asset_uid": asset_uid}).fetchall()]
        return deleted, changed

    def mark_deleted(self, form_id: str, tables: list[str], asset_uid: str, root_uuids: list[str],
                     now: dt.datetime) -> None:
        """A deletion marks the raw history and removes the rows of the form's clean
        ``tables`` (those of every version); nothing leaves raw."""
        if not root_uuids:
            return
        with self.keys_relation("deleted_keys", root_uuids):
            self.con.execute(named_queries("land_raw.sql")["mark_deleted"], {"asset_uid": asset_uid, "now": now})
        self.delete_clean(tables, root_uuids)
        self.record_issues(asset_uid, form_id, root_uuids, [], now)

    def mark_reconciled(self, asset_uid: str, now: dt.datetime) -> None:
        self.con.execute("UPDATE meta.sync_state SET last_reconciled_at = ? WHERE asset_uid = ?", [now, asset_uid])

    def last_reconciled(self, asset_uid: str) -> dt.datetime | None:
        row = self.con.execute("SELECT last_reconciled_at FROM meta.sync_state WHERE asset_uid = ?", [asset_uid]).fetchone()
        return row[0] if row else None

    def overlap_start(self, asset_uid: str, overlap: int) -> int | None:
        """Where an incremental pull starts: ``overlap`` submissions before the watermark, so
        a slow upload that became visible after a higher ``_id`` is not missed (kobo-api.md §3.4).
        Submissions, not raw versions: an edited one counts once."""
        watermark = self.watermark(asset_uid)
        if watermark is None or overlap <= 0:
            return watermark
        row = self.con.execute(
            "SELECT min(submission_id) FROM (SELECT DISTINCT submission_id FROM raw.submissions WHERE asset_uid = ? "
            "AND submission_id <= ? ORDER BY submission_id DESC LIMIT ?)", [asset_uid, watermark, overlap]).fetchone()
        return (row[0] - 1) if row and row[0] is not None else watermark

    def record_issues(self, asset_uid: str, form_id: str, root_uuids: list[str], issues: list[Issue],
                      now: dt.datetime) -> None:
        """Resolves the open issues of re-checked submissions, then records what was found now."""
        if root_uuids:
            with self.keys_relation("checked_keys", root_uuids):
                self.con.execute(
                    "UPDATE quality.issues SET resolved_at = ? WHERE asset_uid = ? AND resolved_at IS NULL "
                    "AND root_uuid IN (SELECT root_uuid FROM checked_keys)", [now, asset_uid])
        if not issues:
            return
        frame = pd.DataFrame([issue.__dict__ for issue in issues])
        frame["asset_uid"], frame["form_id"], frame["detected_at"] = asset_uid, form_id, now
        frame["submission_id"] = frame["submission_id"].astype("Int64")
        self.con.register("issue_frame", frame)
        try:
            self.con.execute(
                "INSERT INTO quality.issues (asset_uid, form_id, root_uuid, submission_id, table_name, column_name, "
                "row_key, check_code, value, severity, message, detected_at) "
                "SELECT asset_uid, form_id, root_uuid, submission_id, table_name, column_name, row_key, check_code, "
                "value, severity, message, detected_at FROM issue_frame")
        finally:
            self.con.unregister("issue_frame")

    # -- sync state ---------------------------------------------------------------------
    def form_of(self, asset_uid: str) -> str | None:
        """The form_id a project was last synced as (None: never synced)."""
        row = self.con.execute("SELECT form_id FROM meta.sync_state WHERE asset_uid = ?", [asset_uid]).fetchone()
        return row[0] if row else None

    def watermark(self, asset_uid: str) -> int | None:
        row = self.con.execute("SELECT watermark FROM meta.sync_state WHERE asset_uid = ?", [asset_uid]).fetchone()
        return row[0] if row else None

    def set_watermark(self, asset_uid: str, form_id: str, watermark: int | None, now: dt.datetime) -> None:
        self.con.execute(
            "INSERT INTO meta.sync_state (asset_uid, form_id, watermark, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (asset_uid) DO UPDATE SET watermark = excluded.watermark, updated_at = excluded.updated_at",
            [asset_uid, form_id, watermark, now])

    def start_run(self, asset_uid: str, form_id: str, now: dt.datetime) -> int:
        # One writer at a time (DuckDB's lock and ours): a run still 'running' here was killed.
        self.con.execute("UPDATE meta.sync_runs SET status = 'interrupted' WHERE asset_uid = ? AND status = 'running'",
                         [asset_uid])
        return self.con.execute(
            "INSERT INTO meta.sync_runs (asset_uid, form_id, started_at, status) VALUES (?, ?, ?, 'running') "
            "RETURNING run_id", [asset_uid, form_id, now]).fetchone()[0]

    def finish_run(self, run_id: int, status: str, counts: dict[str, int], now: dt.datetime) -> None:
        self.con.execute(
            "UPDATE meta.sync_runs SET finished_at = ?, status = ?, pulled = ?, new = ?, edited = ?, unchanged = ?, "
            "restored = ?, quarantined = ?, deleted = ?, reconciled = ? WHERE run_id = ?",
            [now, status, counts.get("pulled", 0), counts.get("new", 0), counts.get("edited", 0),
             counts.get("unchanged", 0), counts.get("restored", 0), counts.get("quarantined", 0),
             counts.get("deleted", 0), bool(counts.get("reconciled")), run_id])

    # -- reading ------------------------------------------------------------------------
    def query(self, sql: str, parameters: list[Any] | None = None) -> tuple[list[str], list[tuple]]:
        if not sql.strip().strip(";").strip():
            raise WarehouseError("aucune requête : écrivez-en une, par exemple terrain sql \"select count(*) from "
                                 "households\"",
                                 "no query given: write one, e.g. terrain sql \"select count(*) from households\"")
        try:
            cursor = self.con.execute(sql, parameters or [])
        except duckdb.Error as error:
            said = str(error).splitlines()[0]
            raise WarehouseError(f"la requête a échoué : {said}", f"the query failed: {said}") from None
        columns = [d[0] for d in cursor.description or []]
        return columns, cursor.fetchall()

    def quarantined_count(self, asset_uid: str | None = None) -> int:
        sql = "SELECT count(*) FROM quality.quarantine" + (" WHERE asset_uid = ?" if asset_uid else "")
        return self.con.execute(sql, [asset_uid] if asset_uid else []).fetchone()[0]

    def table_counts(self) -> dict[str, int]:
        names = [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_type = 'BASE TABLE' "
            "ORDER BY table_name").fetchall()]
        return {name: self.con.execute(f"SELECT count(*) FROM {quote(name)}").fetchone()[0] for name in names}
