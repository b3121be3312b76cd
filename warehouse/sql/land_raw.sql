-- name: touch_seen
-- Submissions seen again unchanged: only their last_seen moves.
UPDATE raw.submissions AS r
SET last_seen = $now, deleted_at = NULL
FROM landing AS l
WHERE r.asset_uid = l.asset_uid AND r.root_uuid = l.root_uuid AND r.content_hash = l.content_hash;

-- name: new_versions
-- Landing rows whose content is not yet in raw: new submissions and edits.
CREATE OR REPLACE TEMP TABLE landing_new AS
SELECT l.*, EXISTS (
           SELECT 1 FROM raw.submissions AS o
           WHERE o.asset_uid = l.asset_uid AND o.root_uuid = l.root_uuid
       ) AS is_edit
FROM landing AS l
WHERE NOT EXISTS (
    SELECT 1 FROM raw.submissions AS r
    WHERE r.asset_uid = l.asset_uid AND r.root_uuid = l.root_uuid AND r.content_hash = l.content_hash
);

-- name: retire_old_versions
UPDATE raw.submissions AS r
SET is_current = FALSE
FROM landing_new AS n
WHERE r.asset_uid = n.asset_uid AND r.root_uuid = n.root_uuid AND r.is_current;

-- name: insert_new_versions
INSERT INTO raw.submissions
SELECT asset_uid, form_id, submission_id, root_uuid, uuid, form_version, submission_time, content_hash,
       payload, $now, $now, NULL, TRUE
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
-- Attachments listed by the current version of submissions that are not stored yet.
WITH listed AS (
    SELECT r.root_uuid, r.submission_id, unnest(CAST(json_extract(r.payload, '$._attachments') AS JSON[])) AS item
    FROM raw.submissions AS r
    WHERE r.asset_uid = $asset_uid AND r.is_current AND r.deleted_at IS NULL
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
