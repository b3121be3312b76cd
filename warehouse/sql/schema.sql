-- Terrain warehouse: the fixed part of the schema. Clean tables (one per form and
-- per repeat group) are created from each form's field dictionary.
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS meta;
CREATE SCHEMA IF NOT EXISTS quality;

-- Contract 2: every submission as received, append-only. An edit adds a row version
-- (a new content hash); a deletion sets deleted_at, it never removes a row.
-- (asset_uid, root_uuid, content_hash) is unique, kept so by the landing SQL
-- (land_raw.sql) under one writer, not by a PRIMARY KEY: DuckDB holds an index whole
-- in memory, and it would grow with the warehouse.
CREATE TABLE IF NOT EXISTS raw.submissions (
    asset_uid       VARCHAR     NOT NULL,
    form_id         VARCHAR     NOT NULL,
    submission_id   BIGINT      NOT NULL,
    root_uuid       VARCHAR     NOT NULL,
    uuid            VARCHAR     NOT NULL,
    form_version    VARCHAR,
    submission_time TIMESTAMPTZ,
    content_hash    VARCHAR     NOT NULL,
    payload         JSON        NOT NULL,
    -- first_seen: the sync that landed this version. last_seen: the last sync that
    -- received it again (the overlap re-read below the watermark, a reconciliation's
    -- fetch); an incremental sync does not read older submissions again, so it is not
    -- when the server last had it: deleted_at says what the server no longer has.
    first_seen      TIMESTAMPTZ NOT NULL,
    last_seen       TIMESTAMPTZ NOT NULL,
    deleted_at      TIMESTAMPTZ,
    is_current      BOOLEAN     NOT NULL,
    -- lookup_key(root_uuid) and lookup_key(uuid) (macros.sql): what a batch looks its
    -- submissions up by (known versions, duplicate _uuid). Random uuids defeat DuckDB's
    -- min/max skipping, so a lookup reads the whole column: a million 8-byte numbers
    -- instead of a million uuid texts (some 10 times quicker).
    root_key        UBIGINT,
    uuid_key        UBIGINT
);

-- Contract 1: each form version's field dictionary, so old submissions are typed
-- with the version they were collected with.
CREATE TABLE IF NOT EXISTS meta.form_versions (
    form_id     VARCHAR     NOT NULL,
    version     VARCHAR     NOT NULL,
    dictionary  JSON        NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL,
    -- The last sync that found this version deployed: the newest version is the one
    -- deployed last, not the one first seen (a first sync meets the deployed version
    -- before the older ones its submissions were collected with).
    last_deployed TIMESTAMPTZ,
    -- How Terrain read the form into this dictionary (forms.dictionary.DICTIONARY_READING);
    -- empty: before it was noted. A version read with an older reading is read again from
    -- its form once, and gains what that one missed (a personal mark).
    read_with   INTEGER,
    PRIMARY KEY (form_id, version)
);

-- Contract 5: per project, the watermark and the last reconciliation.
CREATE TABLE IF NOT EXISTS meta.sync_state (
    asset_uid           VARCHAR PRIMARY KEY,
    form_id             VARCHAR NOT NULL,
    watermark           BIGINT,
    last_reconciled_at  TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS meta.sync_run_ids;
CREATE TABLE IF NOT EXISTS meta.sync_runs (
    run_id        BIGINT PRIMARY KEY DEFAULT nextval('meta.sync_run_ids'),
    asset_uid     VARCHAR     NOT NULL,
    form_id       VARCHAR     NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    pulled        BIGINT,
    new           BIGINT,
    edited        BIGINT,
    unchanged     BIGINT,
    quarantined   BIGINT,
    deleted       BIGINT,
    reconciled    BOOLEAN,
    status        VARCHAR     NOT NULL,
    restored      BIGINT      -- marked deleted, then sent again unchanged: back in the clean tables
);

-- The validation status Terrain last set on each submission (sync --write-back): a status
-- found on the server that is neither empty nor this one was set by a person, and stays.
-- A status is recorded before it is sent (confirmed FALSE, previous: the one Terrain had
-- set before, if any), and confirmed once the server took it: a run stopped in between
-- leaves the next run knowing both statuses the server may hold as Terrain's, and no
-- other. (confirmed NULL: recorded by an older Terrain after the server took it.)
CREATE TABLE IF NOT EXISTS meta.status_writes (
    asset_uid      VARCHAR     NOT NULL,
    submission_id  BIGINT      NOT NULL,
    status         VARCHAR     NOT NULL,
    written_at     TIMESTAMPTZ NOT NULL,
    confirmed      BOOLEAN,
    previous       VARCHAR,
    PRIMARY KEY (asset_uid, submission_id)
);

-- Contract 4: one row per problem found in a submission.
CREATE SEQUENCE IF NOT EXISTS quality.issue_ids;
CREATE TABLE IF NOT EXISTS quality.issues (
    issue_id      BIGINT PRIMARY KEY DEFAULT nextval('quality.issue_ids'),
    asset_uid     VARCHAR     NOT NULL,
    form_id       VARCHAR     NOT NULL,
    root_uuid     VARCHAR     NOT NULL,
    submission_id BIGINT,
    table_name    VARCHAR     NOT NULL,
    column_name   VARCHAR,
    row_key       VARCHAR,
    check_code    VARCHAR     NOT NULL,
    value         VARCHAR,
    severity      VARCHAR     NOT NULL,
    message       VARCHAR     NOT NULL,
    detected_at   TIMESTAMPTZ NOT NULL,
    resolved_at   TIMESTAMPTZ
);

-- The groups (a household id, an enumerator's day, a village...) whose warehouse-wide
-- checks must run again: written in the transaction that changes a clean row, cleared by
-- the checks' own transaction, so a killed sync leaves them for the next one.
CREATE TABLE IF NOT EXISTS quality.unchecked_groups (
    asset_uid   VARCHAR NOT NULL,
    check_code  VARCHAR NOT NULL,
    group_key   VARCHAR NOT NULL
);

-- The thresholds the warehouse-wide checks last ran with, per project: other thresholds
-- mean every group is checked again.
CREATE TABLE IF NOT EXISTS quality.table_rule_runs (
    asset_uid   VARCHAR PRIMARY KEY,
    parameters  VARCHAR NOT NULL,
    ran_at      TIMESTAMPTZ NOT NULL
);

-- The submissions kept out of the clean tables: those with an open error.
CREATE OR REPLACE VIEW quality.quarantine AS
SELECT asset_uid, form_id, root_uuid, any_value(submission_id) AS submission_id,
       count(*) AS errors, string_agg(message, ' | ' ORDER BY issue_id) AS reasons,
       min(detected_at) AS quarantined_at
FROM quality.issues
WHERE severity = 'error' AND resolved_at IS NULL
GROUP BY asset_uid, form_id, root_uuid;

-- Files attached to submissions (photos, audit logs), stored by content hash: the
-- server's file name is kept as data, it never chooses a path on disk.
CREATE TABLE IF NOT EXISTS attachments (
    asset_uid       VARCHAR     NOT NULL,
    attachment_uid  VARCHAR     NOT NULL,
    root_uuid       VARCHAR     NOT NULL,
    submission_id   BIGINT,
    question_xpath  VARCHAR,
    file_name       VARCHAR,
    mimetype        VARCHAR,
    sha256          VARCHAR     NOT NULL,
    size_bytes      BIGINT      NOT NULL,
    stored_path     VARCHAR     NOT NULL,
    downloaded_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (asset_uid, attachment_uid)
);

-- What changed, when: each submission's arrival, its edits and its deletion.
CREATE OR REPLACE VIEW raw.history AS
SELECT asset_uid, form_id, root_uuid, submission_id, uuid, first_seen AS changed_at,
       CASE WHEN row_number() OVER (PARTITION BY asset_uid, root_uuid ORDER BY first_seen, uuid) = 1
            THEN 'new' ELSE 'edited' END AS change
FROM raw.submissions
UNION ALL
SELECT asset_uid, form_id, root_uuid, submission_id, uuid, deleted_at, 'deleted'
FROM raw.submissions
WHERE deleted_at IS NOT NULL;

-- Labels as data: what each column and each choice is called, per form version and language.
CREATE TABLE IF NOT EXISTS meta.field_labels (
    form_id      VARCHAR NOT NULL,
    version      VARCHAR NOT NULL,
    table_name   VARCHAR NOT NULL,
    column_name  VARCHAR NOT NULL,
    field_name   VARCHAR NOT NULL,
    kobo_key     VARCHAR NOT NULL,
    xlsform_type VARCHAR NOT NULL,
    list_name    VARCHAR,
    is_pii       BOOLEAN NOT NULL,
    language     VARCHAR NOT NULL,
    label        VARCHAR,
    PRIMARY KEY (form_id, version, table_name, column_name, language)
);
CREATE TABLE IF NOT EXISTS meta.choice_labels (
    form_id      VARCHAR NOT NULL,
    version      VARCHAR NOT NULL,
    list_name    VARCHAR NOT NULL,
    choice_name  VARCHAR NOT NULL,
    language     VARCHAR NOT NULL,
    label        VARCHAR,
    PRIMARY KEY (form_id, version, list_name, choice_name, language)
);

-- Which form version each KoboToolbox version uid (a submission's __version__) is.
CREATE TABLE IF NOT EXISTS meta.asset_versions (
    asset_uid    VARCHAR NOT NULL,
    version_uid  VARCHAR NOT NULL,
    form_id      VARCHAR NOT NULL,
    version      VARCHAR NOT NULL,
    PRIMARY KEY (asset_uid, version_uid)
);

-- Corrections made by data managers (from their corrections file), applied on every
-- build, and what became of each: applied, or reported because it targets nothing or
-- the answer changed under it (outdated).
CREATE TABLE IF NOT EXISTS meta.corrections (
    root_uuid    VARCHAR NOT NULL,
    field        VARCHAR NOT NULL,
    row_key      VARCHAR NOT NULL DEFAULT '',
    new_value    VARCHAR,
    reason       VARCHAR,
    author       VARCHAR,
    source_file  VARCHAR,
    imported_at  TIMESTAMPTZ NOT NULL,
    status       VARCHAR NOT NULL DEFAULT 'pending',  -- pending, applied, no_target, outdated
    problem      VARCHAR,
    -- The answer the correction first replaced (JSON; 'null': there was none), NULL until
    -- it is first applied: a different answer later means the submission changed under it.
    original_value VARCHAR,
    -- For a repeat's row: its other answers (JSON) when the correction was first applied.
    -- Other ones later mean another row moved into its place (a member removed before it),
    -- even one with the same answer (two children of one age).
    original_row   VARCHAR,
    PRIMARY KEY (root_uuid, field, row_key)
);
