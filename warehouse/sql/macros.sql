-- Macros shared by the landing SQL (land_raw.sql) and the typing (warehouse/staging.py);
-- created on every writer connection.

-- name: submission_content
-- What a submission's content hash covers, in two texts: the document without what
-- changes while its answers stay (the validation status, the old servers' _tags and
-- _notes), and its attachments without their download URLs (their host changes).
CREATE OR REPLACE TEMP MACRO submission_content(doc) AS [
    CAST(json_merge_patch(doc, '{"_validation_status": null, "_tags": null, "_notes": null, "_attachments": null}')
         AS VARCHAR),
    CAST(list_transform(json_extract(doc, '$._attachments[*]'),
         lambda a: json_merge_patch(a, '{"download_url": null, "download_large_url": null, '
                                      '"download_medium_url": null, "download_small_url": null}')) AS VARCHAR)];

-- name: content_hash
-- Cheap, but it follows the order of the keys, which KoboToolbox does not guarantee
-- (kobo-api.md §4): see same_content.
CREATE OR REPLACE TEMP MACRO content_hash(doc) AS md5(array_to_string(submission_content(doc), ''));

-- name: json_canonical
-- A JSON text as its paths and values in path order: the same for the same content,
-- whatever the order of its keys (arrays keep theirs).
CREATE OR REPLACE TEMP MACRO json_canonical(text) AS (
    SELECT string_agg(t.fullkey || '=' || coalesce(CAST(t.atom AS VARCHAR), t.type), '&' ORDER BY t.fullkey)
    FROM json_tree(text) AS t);

-- name: same_content
-- Two versions of a submission with the same content, keys in any order. Some 20 times
-- dearer than content_hash: only for documents whose hash differs while their _uuid
-- (which every edit changes, kobo-api.md §3.6) is the same.
CREATE OR REPLACE TEMP MACRO same_content(a, b) AS
    json_canonical(submission_content(a)[1]) = json_canonical(submission_content(b)[1])
    AND json_canonical(submission_content(a)[2]) IS NOT DISTINCT FROM json_canonical(submission_content(b)[2]);

-- name: lookup_key
-- A uuid as a number (md5's lower 64 bits: the same in every DuckDB release, unlike
-- hash()), for raw.submissions.root_key and uuid_key.
CREATE OR REPLACE TEMP MACRO lookup_key(uuid) AS md5_number_lower(uuid);

-- name: scalar_text
-- Metadata text (version, uuid, time, user name) that reads as a JSON object or list is
-- unusable: none of them starts with '{' or '[' (asking DuckDB for the value's JSON type
-- would parse the document once more).
CREATE OR REPLACE TEMP MACRO scalar_text(text) AS CASE WHEN left(text, 1) IN ('{', '[') THEN NULL ELSE text END;
