-- name: page_results
-- The results of a batch of pages as received, one row each; sequence is the page's
-- position in the batch, position the result's in the batch, from 1 (rowids are no use
-- for that: DuckDB numbers the rows a transaction inserts from 2^62).
-- Memory: DuckDB's JSON functions hold the parse of a whole input vector (up to 2,048
-- rows, some 8 times their text) until the next, one parse per function call, all
-- alive together within a statement. So a statement parses each text once where it can,
-- the pages are parsed one by one (a page of 1,000 households: some 20 MB), and their
-- results in slices of rows (store.PARSE_BYTES of text).
CREATE OR REPLACE TEMP TABLE page_results (sequence BIGINT, doc JSON, position BIGINT);

-- name: page_results_of_page
-- One page's body (UTF-8 bytes, decoded here: DuckDB checks the encoding).
INSERT INTO page_results
SELECT $sequence, unnest(results), (SELECT count(*) FROM page_results) + generate_subscripts(results, 1)
FROM (SELECT json_extract(decode($body), '$.results[*]') AS results);

-- name: page_documents
-- DuckDB writes the results out as compact JSON: an object starts with '{'.
-- The content hash tells an edit from the same submission seen again (macros.sql). With
-- the keys, it takes some 20 times the slice's text while it runs (json_merge_patch): a
-- batch of 2,000 households at once did not fit in 100 MB, 250 of them fit in 30.
CREATE OR REPLACE TEMP TABLE page_documents (sequence BIGINT, doc JSON, is_object BOOLEAN, k VARCHAR[],
                                             content_hash VARCHAR);

-- name: page_documents_of_rows
INSERT INTO page_documents
SELECT sequence, doc, starts_with(doc, '{'),
       json_extract_string(doc, ['$._id', '$."meta/rootUuid"', '$._uuid', '$.__version__', '$._submission_time',
                                 '$._version_', '$._version__001']),  -- older names of __version__ (staging.VERSION_PATHS)
       content_hash(doc)
FROM page_results WHERE position > $done AND position <= $done + $rows;

-- name: landing
-- One row per usable submission of the batch (the last one if a root uuid comes twice:
-- the batch is the unit, as a page was).
CREATE OR REPLACE TEMP TABLE landing AS
SELECT sequence, $asset_uid AS asset_uid, $form_id AS form_id, CAST(trim(k[1]) AS BIGINT) AS submission_id,
       coalesce(nullif(k[2], ''), 'uuid:' || coalesce(k[3], 'None')) AS root_uuid, coalesce(k[3], '') AS uuid,
       coalesce(scalar_text(k[4]), scalar_text(k[6]), scalar_text(k[7])) AS form_version,
       TRY_CAST(k[5] AS TIMESTAMPTZ) AS submission_time,
       content_hash,
       doc AS payload,
       lookup_key(root_uuid) AS root_key,
       lookup_key(uuid) AS uuid_key
FROM page_documents
WHERE is_object AND regexp_full_match(coalesce(k[1], ''), '\s*-?\d{1,18}\s*')
  AND (nullif(k[2], '') IS NOT NULL OR nullif(k[3], '') IS NOT NULL)
QUALIFY row_number() OVER (PARTITION BY root_uuid ORDER BY sequence DESC, submission_id DESC) = 1;

-- name: rejected
-- What the batch held that is not a usable submission, and why.
SELECT sequence, CASE WHEN NOT is_object THEN 'a result that is not a JSON object (' || lower(json_type(doc)) || ')'
            WHEN NOT regexp_full_match(coalesce(k[1], ''), '\s*-?\d{1,18}\s*')
                THEN 'a submission without a valid _id (' || left(coalesce(k[1], 'None'), 40) || ')'
            ELSE 'a submission without meta/rootUuid or _uuid' END AS why,
       CAST(doc AS VARCHAR) AS what
FROM page_documents
WHERE NOT is_object OR NOT regexp_full_match(coalesce(k[1], ''), '\s*-?\d{1,18}\s*')
   OR (nullif(k[2], '') IS NULL AND nullif(k[3], '') IS NULL);

-- name: known_versions
-- The versions raw holds of the batch's submissions: raw is scanned once a batch, and
-- the statements below that need not touch it are skipped (a full sync lands new
-- submissions only). The first scan reads root_key alone. When it finds no key (a full
-- sync's batches of new submissions), DuckDB skips the second; else the second reads the
-- root_uuid of every row, but no other column. Reading every row's uuid each batch took
-- some 150 ms at 1,000,000 submissions; the key alone, 8 ms.
-- raw_row: the rowid the updates below change these rows by (DuckDB updates by rowid
-- without reading the table again; the same update joined on root_uuid read every row's).
CREATE OR REPLACE TEMP TABLE known_versions AS
SELECT r.rowid AS raw_row, r.root_uuid, r.uuid, r.is_current, r.content_hash, r.deleted_at
FROM raw.submissions AS r
WHERE r.rowid IN (SELECT rowid FROM raw.submissions WHERE root_key IN (SELECT root_key FROM landing))
  AND r.asset_uid = $asset_uid AND r.root_uuid IN (SELECT root_uuid FROM landing);

-- name: hash_differs_same_uuid
-- Submissions whose content hash changed while their _uuid did not: every edit changes
-- _uuid (kobo-api.md §3.6), so these may be the same content with its keys in another
-- order (kobo-api.md §4), as the overlap re-read by every sync would then show each time.
SELECT count(*)
FROM landing AS l JOIN known_versions AS k
  ON k.root_uuid = l.root_uuid AND k.is_current AND k.uuid = l.uuid AND k.content_hash <> l.content_hash
WHERE l.uuid <> '';

-- name: reordered
-- Those whose content is indeed the same keep their raw version and take the new hash,
-- so they count as seen again, not edited, now and at the next sync. same_content takes
-- some 20 times the texts it compares while it runs (json_tree): the pairs are compared
-- in slices (same_content_of_rows; 2,000 at once did not fit in 100 MB).
CREATE OR REPLACE TEMP TABLE reordered AS
SELECT row_number() OVER () AS position, r.rowid AS raw_row, l.content_hash, r.payload AS held, l.payload AS received
FROM raw.submissions AS r JOIN landing AS l ON r.root_uuid = l.root_uuid AND r.uuid = l.uuid
WHERE r.asset_uid = $asset_uid AND r.is_current AND l.uuid <> '' AND r.content_hash <> l.content_hash;

-- name: same_content_rows
CREATE OR REPLACE TEMP TABLE same_content_rows (raw_row BIGINT, content_hash VARCHAR);

-- name: same_content_of_rows
INSERT INTO same_content_rows
SELECT raw_row, content_hash FROM reordered
WHERE position > $done AND position <= $done + $rows AND same_content(held, received);

-- name: rehash_same_content
UPDATE raw.submissions AS r
SET content_hash = s.content_hash
FROM same_content_rows AS s
WHERE r.rowid = s.raw_row;

-- name: touch_seen
-- Submissions seen again unchanged: only their last_seen moves.
UPDATE raw.submissions
SET last_seen = $now, deleted_at = NULL
WHERE rowid IN (SELECT k.raw_row FROM known_versions AS k JOIN landing AS l
                ON k.root_uuid = l.root_uuid AND k.content_hash = l.content_hash);

-- name: new_versions
-- Landing rows whose content is not yet in raw: new submissions and edits.
CREATE OR REPLACE TEMP TABLE landing_new AS
SELECT l.*, EXISTS (SELECT 1 FROM known_versions AS o WHERE o.root_uuid = l.root_uuid) AS is_edit
FROM landing AS l
WHERE NOT EXISTS (SELECT 1 FROM known_versions AS k WHERE k.root_uuid = l.root_uuid AND k.content_hash = l.content_hash);

-- name: restored
-- Submissions marked deleted that the server sends again unchanged (the deletion was
-- marked from a listing that missed them): touch_seen marks them current again, and they
-- are typed again, their clean rows having gone with the deletion.
CREATE OR REPLACE TEMP TABLE landing_restored AS
SELECT l.root_uuid, l.submission_id, l.form_version, l.payload, l.sequence
FROM landing AS l JOIN known_versions AS k
  ON k.root_uuid = l.root_uuid AND k.content_hash = l.content_hash AND k.is_current AND k.deleted_at IS NOT NULL;

-- name: landed_counts
-- Per page of the batch: submissions landed, new or edited, edited, restored.
SELECT l.sequence, count(*), count(n.root_uuid), count(*) FILTER (WHERE n.is_edit), count(r.root_uuid)
FROM landing AS l LEFT JOIN landing_new AS n USING (root_uuid) LEFT JOIN landing_restored AS r USING (root_uuid)
GROUP BY l.sequence;

-- name: retire_old_versions
UPDATE raw.submissions
SET is_current = FALSE
WHERE rowid IN (SELECT k.raw_row FROM known_versions AS k JOIN landing_new AS n USING (root_uuid) WHERE k.is_current);

-- name: insert_new_versions
INSERT INTO raw.submissions
SELECT asset_uid, form_id, submission_id, root_uuid, uuid, form_version, submission_time, content_hash,
       payload, $now, $now, NULL, TRUE, root_key, uuid_key
FROM landing_new;

-- name: current_index
-- What the warehouse holds now for one project: the latest version of every
-- submission not known to be deleted.
SELECT root_uuid, uuid, submission_id
FROM raw.submissions
WHERE asset_uid = $asset_uid AND is_current AND deleted_at IS NULL;

-- name: reconciliation_deleted
-- Submissions we hold that the server no longer lists: KoboToolbox deleted them.
SELECT r.root_uuid
FROM raw.submissions AS r
WHERE r.asset_uid = $asset_uid AND r.is_current AND r.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM server_index AS s WHERE s.root_uuid = r.root_uuid);

-- name: reconciliation_changed
-- Submissions the server lists that we do not hold in that version: edits
-- (same root uuid, new _uuid) and late arrivals below the watermark.
SELECT s.submission_id
FROM server_index AS s
WHERE NOT EXISTS (
    SELECT 1 FROM raw.submissions AS r
    WHERE r.asset_uid = $asset_uid AND r.root_uuid = s.root_uuid AND r.uuid = s.uuid
      AND r.is_current AND r.deleted_at IS NULL
)
ORDER BY s.submission_id;

-- name: mark_deleted
UPDATE raw.submissions
SET deleted_at = $now
WHERE asset_uid = $asset_uid AND is_current AND deleted_at IS NULL
  AND root_uuid IN (SELECT root_uuid FROM deleted_keys);

-- name: pending_attachments
-- Attachments listed by the current version of submissions that are not stored yet, for
-- the submissions with $low <= _id <= $high: DuckDB's JSON functions hold the parse of a
-- whole vector of payloads (some 8 times their text), so the caller asks for a few
-- hundred submissions at a time (all of a project's at once ran out of memory from about
-- 2,000 submissions with photos).
WITH listed AS (
    SELECT r.root_uuid, r.submission_id, unnest(CAST(json_extract(r.payload, '$._attachments') AS JSON[])) AS item
    FROM raw.submissions AS r
    WHERE r.asset_uid = $asset_uid AND r.is_current AND r.deleted_at IS NULL
      AND r.submission_id BETWEEN $low AND $high
      AND json_type(r.payload, '$._attachments') = 'ARRAY'
)
SELECT root_uuid, submission_id,
       json_extract_string(item, '$.uid') AS attachment_uid,
       json_extract_string(item, '$.download_url') AS download_url,
       json_extract_string(item, '$.question_xpath') AS question_xpath,
       json_extract_string(item, '$.media_file_basename') AS file_name,
       json_extract_string(item, '$.mimetype') AS mimetype
FROM listed
WHERE json_type(item) = 'OBJECT'
  AND NOT coalesce(TRY_CAST(json_extract_string(item, '$.is_deleted') AS BOOLEAN), FALSE)
  AND json_extract_string(item, '$.uid') IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM attachments AS a
                  WHERE a.asset_uid = $asset_uid AND a.attachment_uid = json_extract_string(item, '$.uid'))
ORDER BY submission_id;
