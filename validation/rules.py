"""High-frequency checks written by hand: what data managers check every day (today in
Stata or Excel after export), run on every sync.

Each rule has a code, a severity and a message in French then English. An error keeps
the submission out of the clean tables (quarantine); a warning flags it in place.
Rules look at a batch of typed tables and, for checks across submissions (duplicates,
submissions per day, distance to the village), at what the warehouse already holds.
A rule applies to any form that has the columns it reads.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb
import pandas as pd

from forms.dictionary import FieldDictionary
from warehouse.typing import Issue
from warehouse.xpath_sql import sql_literal

SQL_DIR = Path(__file__).resolve().parent / "sql"


@dataclass(frozen=True)
class QualitySettings:
    """Thresholds of the hand-written checks; a programme can tune them."""

    min_interview_minutes: float = 5.0
    max_submissions_per_day: int = 25
    max_km_from_village: float = 10.0
    near_duplicate_metres: float = 10.0
    plausible_fee_fcfa: tuple[int, int] = (0, 5000)
    min_participant_age: int = 15
    test_score_range: tuple[int, int] = (0, 20)  # training pre/post tests are marked out of 20


@dataclass
class RuleContext:
    dictionary: FieldDictionary
    tables: dict[str, pd.DataFrame]
    con: duckdb.DuckDBPyConnection | None
    settings: QualitySettings = field(default_factory=QualitySettings)
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def main(self) -> pd.DataFrame:
        return self.tables[self.dictionary.main_table.name]

    def main_name(self) -> str:
        return self.dictionary.main_table.name

    def table_with(self, *columns: str) -> tuple[str, pd.DataFrame] | None:
        for name, frame in self.tables.items():
            if all(c in frame.columns for c in columns):
                return name, frame
        return None


@dataclass(frozen=True)
class Rule:
    code: str
    severity: str
    check: Callable[[RuleContext], list[tuple]]
    # one (root_uuid, table, column, row_key, value, message) per problem


def _issues(rule: Rule, ctx: RuleContext, problems) -> list[Issue]:
    if not problems:
        return []
    ids = dict(zip(ctx.main["root_uuid"], ctx.main["submission_id"].astype("object")))
    return [Issue(root, ids.get(root), table, column, row_key, rule.code, value, rule.severity, message)
            for root, table, column, row_key, value, message in problems]


def _rows(frame: pd.DataFrame, mask: pd.Series, *columns: str) -> pd.DataFrame:
    """The rows ``mask`` selects, with root_uuid and ``columns`` only: itertuples() takes each
    column of a wide frame apart, some 40 ms a batch over the rules."""
    return frame.loc[mask.fillna(False).astype(bool), ["root_uuid", *columns]]


# -- rules on one submission ----------------------------------------------------------------
def end_before_start(ctx: RuleContext):
    if not {"start", "end"} <= set(ctx.main.columns):
        return []
    bad = _rows(ctx.main, ctx.main["end"] < ctx.main["start"], "start", "end")
    return [(r.root_uuid, ctx.main_name(), "end", None, f"{r.start} → {r.end}",
             "La fin de l'entretien est avant son début (horloge du téléphone ?) / "
             "The interview ends before it starts (phone clock?)") for r in bad.itertuples()]


def short_interview(ctx: RuleContext):
    if not {"start", "end"} <= set(ctx.main.columns):
        return []
    minutes = (ctx.main["end"] - ctx.main["start"]).dt.total_seconds() / 60
    limit = ctx.settings.min_interview_minutes
    bad = _rows(ctx.main.assign(minutes=minutes), (minutes >= 0) & (minutes < limit), "minutes")
    return [(r.root_uuid, ctx.main_name(), "end", None, f"{r.minutes:.1f} min",
             f"Entretien très court : {r.minutes:.1f} min (moins de {limit:g}) / "
             f"Very short interview: {r.minutes:.1f} min (under {limit:g})") for r in bad.itertuples()]


CLOCK_TOLERANCE = pd.Timedelta(minutes=10)


def in_the_future(ctx: RuleContext):
    """An interview that starts or ends after the server received it: the phone's clock is
    ahead. Measured against the submission's own ``_submission_time`` (the time of the
    sync only when the server gave none): a phone a day ahead is caught however late the
    sync, and a rebuild decides as the first sync did."""
    main = ctx.main
    now = pd.Timestamp(ctx.now)
    received = main["submission_time"] if "submission_time" in main.columns else pd.Series(pd.NaT, index=main.index)
    horizon = received.fillna(now) + CLOCK_TOLERANCE
    problems = []
    for column in ("start", "end", "submission_time"):
        if column in main.columns:
            late = main[column] > (now + CLOCK_TOLERANCE if column == "submission_time" else horizon)
            for r in _rows(main, late, column).itertuples():
                problems.append((r.root_uuid, ctx.main_name(), column, None, str(getattr(r, column)),
                                 f"Date dans le futur ({column}) : horloge du téléphone à vérifier / "
                                 f"Date in the future ({column}): check the phone's clock"))
    return problems


def household_size_vs_members(ctx: RuleContext):
    found = ctx.table_with("household_size")
    members = ctx.table_with("member_age")
    if not found or not members or members[0] == found[0]:
        return []
    counts = members[1].groupby("root_uuid").size()
    main = found[1].assign(listed=found[1]["root_uuid"].map(counts).fillna(0).astype(int))
    bad = _rows(main, main["household_size"].notna() & (main["household_size"] != main["listed"]),
                "household_size", "listed")
    return [(r.root_uuid, found[0], "household_size", None, f"{r.household_size} / {r.listed}",
             f"Taille du ménage {r.household_size} mais {r.listed} membres listés / "
             f"Household size {r.household_size} but {r.listed} members listed") for r in bad.itertuples()]


def ages_against_relation(ctx: RuleContext):
    found = ctx.table_with("member_age", "member_relation")
    if not found:
        return []
    name, members = found
    heads = members[members["member_relation"] == "head"].groupby("root_uuid")["member_age"].max()
    frame = members.assign(head_age=members["root_uuid"].map(heads))
    rules = [
        ((frame["member_relation"] == "head") & (frame["member_age"] < 15),
         "Chef de ménage de moins de 15 ans / Head of household under 15"),
        ((frame["member_relation"] == "child") & (frame["member_age"] >= frame["head_age"]),
         "Enfant aussi âgé ou plus âgé que le chef de ménage / Child as old as or older than the head"),
        ((frame["member_relation"] == "parent") & (frame["member_age"] <= frame["head_age"]),
         "Parent plus jeune que le chef de ménage / Parent younger than the head"),
    ]
    problems = []
    for mask, message in rules:
        for r in _rows(frame, mask, "row_key", "member_age").itertuples():
            problems.append((r.root_uuid, name, "member_age", r.row_key, str(r.member_age), message))
    return problems


def water_point_broken_without_date(ctx: RuleContext):
    found = ctx.table_with("functional_status", "broken_since")
    if not found:
        return []
    name, frame = found
    bad = _rows(frame, (frame["functional_status"] == "not_functional") & frame["broken_since"].isna())
    return [(r.root_uuid, name, "broken_since", None, None,
             "Point d'eau en panne sans date de panne / Water point not functional without a date")
            for r in bad.itertuples()]


def implausible_fee(ctx: RuleContext):
    found = ctx.table_with("fee_fcfa_per_month")
    if not found:
        return []
    name, frame = found
    low, high = ctx.settings.plausible_fee_fcfa
    bad = _rows(frame, (frame["fee_fcfa_per_month"] < low) | (frame["fee_fcfa_per_month"] > high), "fee_fcfa_per_month")
    return [(r.root_uuid, name, "fee_fcfa_per_month", None, str(r.fee_fcfa_per_month),
             f"Cotisation peu plausible : {r.fee_fcfa_per_month} FCFA/mois (attendu {low}–{high}) / "
             f"Implausible fee: {r.fee_fcfa_per_month} FCFA a month (expected {low}–{high})") for r in bad.itertuples()]


def young_participant(ctx: RuleContext):
    found = ctx.table_with("participant_age")
    if not found:
        return []
    name, frame = found
    limit = ctx.settings.min_participant_age
    bad = _rows(frame, frame["participant_age"] < limit, "row_key", "participant_age")
    return [(r.root_uuid, name, "participant_age", r.row_key, str(r.participant_age),
             f"Participant de moins de {limit} ans / Participant under {limit}") for r in bad.itertuples()]


def score_out_of_range(ctx: RuleContext):
    low, high = ctx.settings.test_score_range
    problems = []
    for column in ("pre_test_score", "post_test_score"):
        found = ctx.table_with(column)
        if not found:
            continue
        name, frame = found
        for r in _rows(frame, (frame[column] < low) | (frame[column] > high),
                           *(["row_key"] if "row_key" in frame.columns else []), column).itertuples():
            score = getattr(r, column)
            problems.append((r.root_uuid, name, column, getattr(r, "row_key", None), str(score),
                             f"Note de test hors de l'échelle : {score} (attendu {low}–{high}) / "
                             f"Test score out of range: {score} (expected {low}–{high})"))
    return problems


# -- rules across submissions (the warehouse holds the others) -------------------------------
# Each asks the warehouse only about the keys in the batch (its uuids, ids, villages...),
# so a sync costs the same per page however large the warehouse grows.
def _others(ctx: RuleContext, sql: str, keys: pd.DataFrame, params: list | None = None) -> pd.DataFrame:
    """Rows the warehouse already holds for the batch's ``keys`` (registered as ``batch_keys``),
    except the batch's own submissions (``batch_roots``)."""
    if ctx.con is None or keys.empty:
        return pd.DataFrame()
    ctx.con.register("batch_roots", pd.DataFrame({"root_uuid": ctx.main["root_uuid"].astype(str)}))
    ctx.con.register("batch_keys", keys)
    try:
        return ctx.con.execute(sql, params or []).df()
    finally:
        ctx.con.unregister("batch_roots")
        ctx.con.unregister("batch_keys")


def _later_duplicates(ctx: RuleContext, column: str, others: pd.DataFrame) -> pd.DataFrame:
    """Batch rows whose ``column`` value another submission with a smaller ``_id`` already has
    (in the batch or the warehouse): the later one is flagged, whatever order pages arrive in."""
    mine = ctx.main[["root_uuid", "submission_id", column]].dropna()
    pool = pd.concat([mine[[column, "submission_id"]], others[[column, "submission_id"]] if not others.empty else None])
    first = pool.groupby(column)["submission_id"].min()
    return mine[mine["submission_id"] > mine[column].map(first)]


def duplicate_uuid(ctx: RuleContext):
    keys = pd.DataFrame({"uuid": ctx.main["uuid"].dropna().astype(str).unique()})
    # By uuid_key first (see raw.submissions): reading every row's uuid text took some 60 ms
    # a batch at 1,000,000 submissions, and a batch of new uuids finds no key at all.
    others = _others(ctx, "SELECT uuid, submission_id FROM raw.submissions WHERE rowid IN "
                          "(SELECT rowid FROM raw.submissions WHERE uuid_key IN (SELECT lookup_key(uuid) FROM batch_keys)) "
                          "AND form_id = ? AND is_current AND deleted_at IS NULL AND uuid IN (SELECT uuid FROM batch_keys) "
                          "AND root_uuid NOT IN (SELECT root_uuid FROM batch_roots)", keys, [ctx.dictionary.form_id])
    return [(r.root_uuid, ctx.main_name(), "uuid", None, r.uuid,
             "Identifiant de soumission (_uuid) en double / Duplicate submission id (_uuid)")
            for r in _later_duplicates(ctx, "uuid", others).itertuples()]


RULES = [
    Rule("end_before_start", "error", end_before_start),
    Rule("in_the_future", "error", in_the_future),
    Rule("duplicate_uuid", "error", duplicate_uuid),
    Rule("water_point_broken_without_date", "error", water_point_broken_without_date),
    Rule("short_interview", "warning", short_interview),
    Rule("household_size_vs_members", "warning", household_size_vs_members),
    Rule("age_vs_relation", "warning", ages_against_relation),
    Rule("implausible_fee", "warning", implausible_fee),
    Rule("young_participant", "warning", young_participant),
    Rule("score_out_of_range", "error", score_out_of_range),
]


def run_rules(dictionary: FieldDictionary, tables: dict[str, pd.DataFrame], con: duckdb.DuckDBPyConnection | None,
              settings: QualitySettings | None = None, now: dt.datetime | None = None) -> list[Issue]:
    ctx = RuleContext(dictionary, tables, con, settings or QualitySettings(), now or dt.datetime.now(dt.timezone.utc))
    if ctx.main.empty:
        return []
    issues: list[Issue] = []
    for rule in RULES:
        issues.extend(_issues(rule, ctx, rule.check(ctx)))
    return issues


# -- rules over the whole warehouse ---------------------------------------------------------
# Duplicate household ids, near-duplicates, submissions a day per enumerator and distance to
# the village's other submissions depend on every submission sharing a key, not only a
# batch (a late arrival with a smaller _id changes which one is "the later"): they run in SQL
# once a sync (or rebuild, or corrections) is done, over the whole project, and keep the
# open issues equal to what holds now, whatever order submissions came in.
@dataclass(frozen=True)
class TableRule:
    code: str
    severity: str
    columns: tuple[str, ...]  # the main table must have them
    parameters: Callable[[QualitySettings], dict]
    group_key: str  # SQL over a main-table row ``t``: the rows that can change each other's result


TABLE_RULES = [
    TableRule("duplicate_household_id", "warning", ("household_id",), lambda s: {}, "t.household_id"),
    TableRule("near_duplicate", "warning", ("submitted_by", "head_name", "location_latitude", "location_longitude"),
              lambda s: {"metres": s.near_duplicate_metres}, "t.submitted_by || chr(31) || t.head_name"),
    TableRule("too_many_per_day", "warning", ("submitted_by", "today"),
              lambda s: {"limit": s.max_submissions_per_day}, "t.submitted_by || chr(31) || CAST(t.today AS VARCHAR)"),
    TableRule("far_from_village", "warning", ("village", "location_latitude", "location_longitude"),
              lambda s: {"limit": s.max_km_from_village, "limit_text": f"{s.max_km_from_village:g}"}, "t.village"),
]


def _table_rules(dictionary: FieldDictionary) -> list[TableRule]:
    """The TABLE_RULES whose columns the form's main table has."""
    main = dictionary.main_table
    columns = set(main.system_columns()) | {c for f in main.fields for c, _ in f.columns()}
    return [rule for rule in TABLE_RULES if set(rule.columns) <= columns]


def record_touched_groups(con: duckdb.DuckDBPyConnection, dictionary: FieldDictionary, asset_uid: str,
                          relation: str, chosen: str = "TRUE") -> None:
    """Notes the groups of the rows of ``relation`` (a main clean table or its stage table;
    ``chosen``: a condition on its rows ``t``) for the next run_table_rules: called before
    clean rows are deleted (their old groups) and after they are inserted (their new ones),
    in the same transaction."""
    from warehouse.store import named_queries

    sql = named_queries("table_rules.sql", SQL_DIR)["touched_groups"]
    for rule in _table_rules(dictionary):
        con.execute(sql.format(relation=relation, group_key=rule.group_key, chosen=chosen),
                    {"asset_uid": asset_uid, "code": rule.code})


def _forms_sharing(con: duckdb.DuckDBPyConnection, dictionary: FieldDictionary) -> list[str]:
    """The forms whose main clean table is this form's (usually only this form)."""
    main = dictionary.main_table.name
    rows = con.execute("SELECT form_id, any_value(dictionary::VARCHAR) FROM meta.form_versions GROUP BY form_id").fetchall()
    return sorted({dictionary.form_id} | {form_id for form_id, text in rows
                                          if FieldDictionary.from_json(text).main_table.name == main})


def run_table_rules(con: duckdb.DuckDBPyConnection, dictionary: FieldDictionary, asset_uid: str,
                    settings: QualitySettings, now: dt.datetime, everything: bool = False) -> None:
    """Runs TABLE_RULES over the project's clean submissions in the groups noted by
    record_touched_groups (``everything``, or other thresholds than last time: all of
    them), then clears those notes; the caller holds the transaction."""
    from warehouse.store import named_queries, quote

    queries = named_queries("table_rules.sql", SQL_DIR)
    con.execute(queries["macros"])
    rules = _table_rules(dictionary)
    parameters = json.dumps({rule.code: rule.parameters(settings) for rule in rules}, sort_keys=True)
    last = con.execute("SELECT parameters FROM quality.table_rule_runs WHERE asset_uid = ?", [asset_uid]).fetchone()
    everything = everything or last is None or last[0] != parameters
    table = f"main.{quote(dictionary.main_table.name)}"
    shared = con.execute(queries["shared_table"], {"form_ids": _forms_sharing(con, dictionary),
                                                   "asset_uid": asset_uid}).fetchone()[0]
    project = queries["project_rows"] if shared else "TRUE"
    for rule in rules:
        restrict = "TRUE" if everything else (
            f"({rule.group_key}) IN (SELECT group_key FROM quality.unchecked_groups "
            f"WHERE asset_uid = $asset_uid AND check_code = {sql_literal(rule.code)})")
        common = {"asset_uid": asset_uid, "code": rule.code, "now": now}
        scope = queries[f"{rule.code}/scope"].format(table=table, project=project, restrict=restrict)
        con.execute(scope, {"asset_uid": asset_uid} if "$asset_uid" in scope else {})
        con.execute(queries[f"{rule.code}/found"], rule.parameters(settings))
        con.execute(queries["resolve_gone"], {**common, "everything": everything})
        con.execute(queries["refresh_found"], {"asset_uid": asset_uid, "code": rule.code})
        con.execute(queries["insert_found"], {**common, "form_id": dictionary.form_id,
                                              "table_name": dictionary.main_table.name, "severity": rule.severity})
    con.execute("DELETE FROM quality.unchecked_groups WHERE asset_uid = ?", [asset_uid])
    con.execute("INSERT INTO quality.table_rule_runs VALUES (?, ?, ?) ON CONFLICT (asset_uid) DO UPDATE SET "
                "parameters = excluded.parameters, ran_at = excluded.ran_at", [asset_uid, parameters, now])
