"""Loading pages of submissions: land raw, type each submission with the form version
it was collected with, validate, replace clean rows, record issues, move the
watermark, all in one transaction per batch of pages. A run killed at any point
leaves the warehouse as it was after the last whole batch; the next sync pulls the
rest again (nothing lost, nothing twice: raw is keyed by content).

The submissions stay JSON text from the server to DuckDB: landing and typing are SQL
(warehouse/sql/land_raw.sql, warehouse/staging.py); Python sees typed frames only,
for pandera and the high-frequency rules.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Union

import duckdb

from forms.build import reserved_tables
from forms.dictionary import FieldDictionary, distinct_tables, distinct_version, keep_columns
from kobo.client import Page
from validation.corrections import apply_corrections
from validation.rules import QualitySettings, record_touched_groups, run_rules, run_table_rules
from validation.schemas import FormValidator
from warehouse.staging import BATCH_DOCS, StagingPlan, stage_name
from warehouse.store import Warehouse, quote, release_freed_memory
from warehouse.typing import Issue, root_uuid_of
from warehouse.xpath_sql import sql_literal

VersionLookup = Callable[[str], "FieldDictionary | None"]
PageInput = Union[Page, list[Any]]
PENDING = "pending_docs"  # the batch's new and edited submissions, as landed
ERROR_ROOTS = "error_roots"
# DuckDB parses a batch's documents a vector at a time, taking some 8 times their text
# while it does: a batch of long submissions is committed before it holds 2,000 of them.
BATCH_BYTES = 5 * 2**20


@dataclass
class PageResult:
    pulled: int
    new: int
    edited: int
    unchanged: int
    quarantined: int
    restored: int = 0  # marked deleted, and sent again by the server: clean again (not in unchanged)


PAGE_COUNTS = ("pulled", "new", "edited", "unchanged", "quarantined", "restored")


@dataclass
class _Version:
    dictionary: FieldDictionary
    validator: FormValidator
    plan: StagingPlan


def page_json(page: PageInput) -> bytes:
    """The JSON (UTF-8) DuckDB reads a page from (an object with a ``results`` list): the
    server's own body, else the results serialised here."""
    if isinstance(page, Page) and _strict_json(page.body):
        return page.body
    results = page.results if isinstance(page, Page) else page
    return json.dumps({"results": _finite(results)}, ensure_ascii=False, default=str).encode("utf-8")


def _strict_json(body: bytes) -> bool:
    """Python reads NaN and Infinity, DuckDB (rightly) does not: such a page is re-serialised."""
    return b"NaN" not in body and b"Infinity" not in body


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def batch_is_full(batch_size: int | None, submissions: int, text_bytes: int) -> bool:
    """Whether a batch of pages holding this many submissions and bytes of text is committed
    now (None: never, all in one transaction)."""
    return batch_size is not None and (submissions >= batch_size or text_bytes >= BATCH_BYTES)


def _count(page: PageInput) -> int:
    return page.size if isinstance(page, Page) else len(page)


def _forget_bodies(pages: list[PageInput]) -> None:
    """Keeps what a landed batch's pages say of themselves (size, remaining, last _id) and
    lets go of their bodies: DuckDB holds them now, and a batch's pages otherwise stayed
    alive through the typing, the sync's peak."""
    pages[:] = [replace(page, body=b"") if isinstance(page, Page) else page for page in pages]


class FormLoader:
    """Loads pages of one KoboToolbox project into the warehouse.

    ``dictionary`` is the deployed version's; ``version_lookup`` gives the dictionary of
    another version uid (None when unknown: the deployed one is used). Each version's
    dictionary is registered, so a new version adds columns and never drops any.
    """

    def __init__(self, warehouse: Warehouse, dictionary: FieldDictionary, asset_uid: str,
                 version_lookup: VersionLookup | None = None, deployed_version: str | None = None,
                 quality: QualitySettings | None = None):
        self.warehouse = warehouse
        self.quality = quality or QualitySettings()
        self.dictionary = dictionary
        self.asset_uid = asset_uid
        self.version_lookup = version_lookup
        self._by_version: dict[str | None, _Version] = {}
        self._stored: list[FieldDictionary] | None = None  # every version of the form the warehouse holds
        self._taken: set[str] = set()  # the tables of the other forms
        self.dictionary = self._register(deployed_version, dictionary).dictionary
        if deployed_version:
            warehouse.mark_deployed(self.dictionary)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The warehouse's connection, asked for each time: a long sync reopens it (Warehouse.reopen)."""
        return self.warehouse.con

    def _register(self, version_uid: str | None, dictionary: FieldDictionary) -> _Version:
        if self._stored is None:
            self._stored = self.warehouse.all_dictionaries(dictionary.form_id)
            # Our own forms' table names are theirs, unless this form took one before they were.
            self._taken = self.warehouse.tables_of_other_forms(dictionary.form_id) | (
                reserved_tables(dictionary.form_id) - {t for d in self._stored for t in d.tables})
        # No table of another form's name, each question in the column earlier versions gave
        # it, and a version name of its own (forms.dictionary).
        dictionary = distinct_tables(dictionary, self._taken)
        dictionary = distinct_version(keep_columns(dictionary, self._stored), self._stored, version_uid)
        key = (dictionary.form_id, dictionary.version)
        known = next((v for v in self._by_version.values()
                      if (v.dictionary.form_id, v.dictionary.version) == key), None)
        if known is None:
            self.warehouse.register_form_version(dictionary)
            if all((d.form_id, d.version) != key for d in self._stored):
                self._stored.append(dictionary)
            known = _Version(dictionary, FormValidator(dictionary), StagingPlan(dictionary))
        if version_uid:
            self.warehouse.register_asset_version(self.asset_uid, version_uid, dictionary)
        self._by_version[version_uid] = known
        self.warehouse.fit_memory_to(len({(name, column) for v in self._by_version.values()
                                          for name, table in v.dictionary.tables.items()
                                          for column, _ in table.column_types()}))
        return known

    def for_version(self, version_uid: str | None) -> _Version:
        if version_uid in self._by_version:
            return self._by_version[version_uid]
        found = self.version_lookup(version_uid) if (self.version_lookup and version_uid) else None
        return self._register(version_uid, found or self.dictionary)

    # -- loading ------------------------------------------------------------------------
    def load_page(self, page: PageInput, last_id: int | None, checks: bool = True) -> PageResult:
        return self.load_pages([page], last_id, checks)

    def load_pages(self, pages: list[PageInput], last_id: int | None, checks: bool = True) -> PageResult:
        """Lands and types these pages in one transaction, then moves the watermark to ``last_id``;
        ``checks``: then runs the warehouse-wide checks."""
        totals = PageResult(0, 0, 0, 0, 0)
        for _, result in self.load_stream(pages, batch_size=None, last_id=last_id):
            for name in PAGE_COUNTS:
                setattr(totals, name, getattr(totals, name) + getattr(result, name))
        if checks:
            self.run_warehouse_checks()
        return totals

    def load_stream(self, pages: Iterable[PageInput], batch_size: int | None,
                    last_id: int | None | Callable[[PageInput], int | None] = None,
                    reopen_every: int | None = None) -> Iterator[tuple[PageInput, PageResult]]:
        """Loads pages as they come, landing, typing and committing them together every
        ``batch_size`` submissions or BATCH_BYTES of text (None: all in one transaction);
        yields each page and its result once its batch is committed, the quarantine count
        with the batch's last page.
        The watermark moves with each commit to ``last_id`` (a number, or a function of the
        batch's last page). ``reopen_every``: the warehouse is reopened between batches after
        about that many submissions (see Warehouse.reopen), so memory does not grow with them."""
        batch: list[PageInput] = []
        gathered = text = since_reopen = 0
        for page in pages:
            if not batch and reopen_every is not None and since_reopen >= reopen_every:
                self.warehouse.reopen()  # before a batch, not after the last one
                since_reopen = 0
            batch.append(page)
            gathered += _count(page)
            text += len(page.body) if isinstance(page, Page) else 0
            del page  # the batch holds it, until its body is landed (see _forget_bodies)
            if batch_is_full(batch_size, gathered, text):
                yield from self._load_batch(batch, last_id)
                since_reopen += gathered
                batch, gathered, text = [], 0, 0
                release_freed_memory()
        if batch:
            yield from self._load_batch(batch, last_id)

    def _load_batch(self, pages: list[PageInput], last_id: int | None | Callable[[PageInput], int | None]
                    ) -> Iterator[tuple[PageInput, PageResult]]:
        """One transaction: lands the pages in raw, types their new and edited submissions,
        moves the watermark. A landing statement per batch, not per page: every statement
        leaves temp tables alive (DuckDB blocks) until the commit."""
        now = dt.datetime.now(dt.timezone.utc)
        form_id = self.dictionary.form_id
        with self.warehouse.writing(), self.warehouse.transaction():
            landing = self.warehouse.land(self.asset_uid, form_id, [page_json(page) for page in pages], now)
            _forget_bodies(pages)
            self._start_pending()
            self.con.execute(f"INSERT INTO {PENDING} SELECT root_uuid, submission_id, form_version, payload, "
                             f"is_edit, sequence FROM landing_new UNION ALL SELECT root_uuid, submission_id, "
                             f"form_version, payload, TRUE, sequence FROM landing_restored")
            rejected = [(sequence, _rejected_issue(why, what)) for sequence, why, what in landing.rejected]
            if rejected:
                # Seen again, the same unusable result replaces its issue instead of adding one.
                issues = [issue for _, issue in rejected]
                self.warehouse.record_issues(self.asset_uid, form_id, [i.root_uuid for i in issues], issues, now)
            results = []
            for sequence, page in enumerate(pages):
                new, edited, unchanged, restored = landing.landed.get(sequence, (0, 0, 0, 0))
                results.append(PageResult(pulled=_count(page), new=new, edited=edited, unchanged=unchanged,
                                          quarantined=sum(1 for s, _ in rejected if s == sequence),
                                          restored=restored))
            results[-1].quarantined += self.retype_pending(now)
            watermark = last_id(pages[-1]) if callable(last_id) else last_id
            if watermark is not None:
                self.warehouse.set_watermark(self.asset_uid, form_id, watermark, now)
            self._drop_batch_tables()
        yield from zip(pages, results)

    def _drop_batch_tables(self) -> None:
        """Frees the batch's temp tables with its commit (see StagingPlan.drop)."""
        self.warehouse.drop_landing()
        for version in {id(v): v for v in self._by_version.values()}.values():
            version.plan.drop(self.con)
        self.con.execute(f"DROP VIEW IF EXISTS {BATCH_DOCS}")
        for name in (PENDING, ERROR_ROOTS):
            self.con.execute(f"DROP TABLE IF EXISTS {name}")

    def _start_pending(self) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {PENDING} (root_uuid VARCHAR, submission_id BIGINT, "
                         f"form_version VARCHAR, doc JSON, replace BOOLEAN, sequence BIGINT)")

    def retype_from_raw(self, roots_sql: str, params: list[Any], now: dt.datetime) -> int:
        """Types again the current raw version of the submissions ``roots_sql`` selects (a
        query returning root_uuid); the caller holds the transaction."""
        self._start_pending()
        self.con.execute(
            f"INSERT INTO {PENDING} SELECT root_uuid, submission_id, form_version, payload, TRUE, 0 "
            f"FROM raw.submissions WHERE asset_uid = ? AND is_current AND deleted_at IS NULL "
            f"AND root_uuid IN ({roots_sql})", [self.asset_uid, *params])
        return self.retype_pending(now)

    def retype_pending(self, now: dt.datetime) -> int:
        """Types, validates and (re)places the clean rows of the pending submissions, one
        form version at a time; returns how many went to quarantine."""
        versions = [row[0] for row in self.con.execute(
            f"SELECT DISTINCT form_version FROM {PENDING} ORDER BY form_version NULLS FIRST").fetchall()]
        # Every version's columns are added (ALTER TABLE) before any row of the batch changes:
        # DuckDB 1.5 cannot commit a transaction that alters a table after changing its rows.
        prepared = [(version_uid, self.for_version(version_uid)) for version_uid in versions]
        quarantined = 0
        for version_uid, version in prepared:
            # A view (no copy of the documents); views take no parameters, hence the literal.
            version_sql = "IS NULL" if version_uid is None else f"= {sql_literal(version_uid)}"
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {BATCH_DOCS} AS SELECT root_uuid, submission_id, doc, replace "
                f"FROM {PENDING} WHERE form_version {version_sql} "
                f"QUALIFY row_number() OVER (PARTITION BY root_uuid ORDER BY sequence DESC) = 1")
            quarantined += self._retype_batch(version, now)
        return quarantined

    def _retype_batch(self, version: _Version, now: dt.datetime) -> int:
        self._apply_corrections(version.dictionary, now)
        staged = version.plan.run(self.con)
        issues: list[Issue] = (staged.issues + version.validator.validate(staged.tables)
                               + run_rules(version.dictionary, staged.tables, self.con, self.quality))
        errors = sorted({issue.root_uuid for issue in issues if issue.severity == "error"})
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {ERROR_ROOTS} AS "
                         f"SELECT unnest(CAST(? AS VARCHAR[])) AS root_uuid", [errors])
        replaced = [row[0] for row in self.con.execute(f"SELECT root_uuid FROM {BATCH_DOCS} WHERE replace").fetchall()]
        main = version.dictionary.main_table.name
        if replaced:
            chosen = f"t.root_uuid IN (SELECT root_uuid FROM {BATCH_DOCS} WHERE replace)"
            record_touched_groups(self.con, self.dictionary, self.asset_uid, f"main.{quote(main)}", chosen)
            for table in self.form_tables():
                self.con.execute(f"DELETE FROM {quote(table)} WHERE root_uuid IN "
                                 f"(SELECT root_uuid FROM {BATCH_DOCS} WHERE replace)")
        version.plan.insert_clean(self.con, ERROR_ROOTS)
        record_touched_groups(self.con, version.dictionary, self.asset_uid, quote(stage_name(main)))
        self.warehouse.record_issues(self.asset_uid, version.dictionary.form_id, replaced, issues, now)
        return len(errors)

    def run_warehouse_checks(self, everything: bool = False) -> None:
        """The checks over the whole warehouse (validation/rules.py TABLE_RULES: duplicate
        household ids, near-duplicates, submissions per enumerator-day, distance to the
        village's other submissions), in their own transaction: run once after a sync,
        a rebuild or corrections, so their warnings depend on what the warehouse holds, not
        on the order or the batches submissions came in. Only the groups whose submissions
        changed are checked again, unless ``everything`` (after a rebuild)."""
        now = dt.datetime.now(dt.timezone.utc)
        with self.warehouse.writing(), self.warehouse.transaction():
            run_table_rules(self.con, self.dictionary, self.asset_uid, self.quality, now, everything)

    def mark_deleted(self, root_uuids: list[str], now: dt.datetime) -> None:
        """Submissions deleted on the server: their groups are checked again, then the
        warehouse marks them (the caller holds the transaction)."""
        if root_uuids:
            with self.warehouse.keys_relation("deleted_roots", root_uuids):
                record_touched_groups(self.con, self.dictionary, self.asset_uid,
                                      f"main.{quote(self.dictionary.main_table.name)}",
                                      "t.root_uuid IN (SELECT root_uuid FROM deleted_roots)")
        self.warehouse.mark_deleted(self.dictionary.form_id, self.form_tables(), self.asset_uid, root_uuids, now)

    def retype_settled_duplicates(self, now: dt.datetime) -> int:
        """Types again the submissions kept out as later duplicates of a ``_uuid`` that no
        earlier current submission has any more: the earlier twin was deleted on the server
        (how a data manager settles a duplicate) or edited (an edit gives it a new _uuid).
        Without this they would stay in quarantine until a rebuild. Returns how many."""
        with self.warehouse.writing(), self.warehouse.transaction():
            settled = [row[0] for row in self.con.execute(SETTLED_DUPLICATES, [self.asset_uid]).fetchall()]
            if settled:
                with self.warehouse.keys_relation("settled_roots", settled):
                    self.retype_from_raw("SELECT root_uuid FROM settled_roots", [], now)
        return len(settled)

    def form_tables(self) -> list[str]:
        """The clean tables of every version of the form: a submission's rows may be in a
        table of the version it was collected with, which the deployed one dropped."""
        return sorted({t for d in self._stored or [] for t in d.tables})

    def _apply_corrections(self, dictionary: FieldDictionary, now: dt.datetime) -> None:
        """Recorded corrections change the answers of the batch's documents before typing
        (raw keeps them as received)."""
        if not self.con.execute("SELECT count(*) FROM meta.corrections").fetchone()[0]:
            return
        rows = self.con.execute(
            f"SELECT b.doc::VARCHAR FROM {BATCH_DOCS} b WHERE b.root_uuid IN "
            f"(SELECT root_uuid FROM meta.corrections)").fetchall()
        if not rows:
            return
        corrected = apply_corrections(self.con, dictionary, [json.loads(row[0]) for row in rows], now)
        for submission in corrected:
            self.con.execute(f"UPDATE {PENDING} SET doc = ? WHERE root_uuid = ?",  # batch_docs is a view of it
                             [json.dumps(_finite(submission), ensure_ascii=False), root_uuid_of(submission)])


# A project's open duplicate_uuid errors whose _uuid no earlier current submission of the
# form has any more (found by uuid_key, as the rule itself finds them).
SETTLED_DUPLICATES = """
SELECT DISTINCT i.root_uuid FROM quality.issues i
WHERE i.asset_uid = ? AND i.check_code = 'duplicate_uuid' AND i.resolved_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM raw.submissions r
                  WHERE r.uuid_key = lookup_key(i.value) AND r.uuid = i.value AND r.form_id = i.form_id
                    AND r.is_current AND r.deleted_at IS NULL AND r.root_uuid <> i.root_uuid
                    AND r.submission_id < i.submission_id)
"""


def _rejected_issue(why: str, what: str) -> Issue:
    """A quarantine row for something the server sent that is not a usable submission."""
    return Issue(root_uuid=f"unidentified:{hashlib.sha256(what.encode()).hexdigest()[:16]}",
                 submission_id=None, table_name="raw.submissions", column_name=None, row_key=None,
                 check_code="malformed_submission", value=what[:500], severity="error",
                 message=f"Résultat inutilisable reçu du serveur : {why} / Unusable result from the server: {why}")
