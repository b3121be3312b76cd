-- High-frequency checks over the whole warehouse, not one batch: recomputed once after
-- each sync, rebuild or corrections over every clean submission of the groups that changed
-- (quality.unchecked_groups; all of them after a rebuild), so the result does not depend
-- on the order or the batches submissions arrived in. {table} is the form's main clean
-- table (an identifier from the field dictionary, quoted); {project} keeps the project's
-- rows (project_rows, or TRUE when no other project writes this table); {restrict} keeps
-- the rows of the groups to check (TRUE: all). Each rule fills rule_scope (the submissions of those
-- groups) and rule_found (those it flags).

-- name: macros
-- Great-circle distance in km (haversine), for the checks on GPS points.
CREATE OR REPLACE TEMP MACRO km(lat1, lon1, lat2, lon2) AS
    12742 * asin(sqrt(pow(sin(radians(lat2 - lat1) / 2), 2)
        + cos(radians(lat1)) * cos(radians(lat2)) * pow(sin(radians(lon2 - lon1) / 2), 2)));

-- name: shared_table
-- Whether another project loads a form ($form_ids: those with this main table) into the
-- same tables (rare: a copy of a project).
SELECT EXISTS (SELECT 1 FROM raw.submissions
               WHERE list_contains(CAST($form_ids AS VARCHAR[]), form_id) AND asset_uid <> $asset_uid);

-- name: project_rows
-- The main table's rows of this project, when the table is shared (a semi-join on raw:
-- about a second at 1,000,000 submissions, hence only then).
t.root_uuid IN (SELECT root_uuid FROM raw.submissions WHERE asset_uid = $asset_uid)

-- name: too_many_per_day/scope
CREATE OR REPLACE TEMP TABLE rule_scope AS
SELECT t.root_uuid, t.submission_id, t.submitted_by, t.today
FROM {table} AS t
WHERE {project} AND {restrict}
  AND t.submitted_by IS NOT NULL AND t.today IS NOT NULL;

-- name: too_many_per_day/found
CREATE OR REPLACE TEMP TABLE rule_found AS
SELECT root_uuid, submission_id, 'submitted_by' AS column_name,
       submitted_by || ' ' || CAST(today AS VARCHAR) || ': ' || CAST(n AS VARCHAR) AS value,
       submitted_by || ' a envoyé ' || n || ' fiches le ' || today || ' (plus de ' || $limit || ') / '
           || submitted_by || ' sent ' || n || ' forms on ' || today || ' (more than ' || $limit || ')' AS message
FROM (SELECT *, count(*) OVER (PARTITION BY submitted_by, today) AS n FROM rule_scope)
WHERE n > $limit;

-- name: far_from_village/scope
CREATE OR REPLACE TEMP TABLE rule_scope AS
SELECT t.root_uuid, t.submission_id, t.village, t.location_latitude AS lat, t.location_longitude AS lon
FROM {table} AS t
WHERE {project} AND {restrict}
  AND t.village IS NOT NULL AND t.location_latitude IS NOT NULL AND t.location_longitude IS NOT NULL;

-- name: far_from_village/found
-- The village's centre is the median of its submissions' points (at least 3 of them).
CREATE OR REPLACE TEMP TABLE rule_found AS
WITH centres AS (
    SELECT village, median(lat) AS centre_lat, median(lon) AS centre_lon, count(*) AS size
    FROM rule_scope GROUP BY village
), placed AS (
    SELECT s.*, km(s.lat, s.lon, c.centre_lat, c.centre_lon) AS km
    FROM rule_scope AS s JOIN centres AS c USING (village)
    WHERE c.size >= 3
)
SELECT root_uuid, submission_id, 'location' AS column_name, printf('%.1f km', km) AS value,
       printf('Point GPS à %.1f km des autres fiches du village (plus de %s km) / '
              'GPS point %.1f km from the village''s other submissions (over %s km)', km, $limit_text, km, $limit_text)
           AS message
FROM placed
WHERE km > $limit;

-- name: duplicate_household_id/scope
CREATE OR REPLACE TEMP TABLE rule_scope AS
SELECT t.root_uuid, t.submission_id, t.household_id
FROM {table} AS t
WHERE {project} AND {restrict}
  AND t.household_id IS NOT NULL;

-- name: duplicate_household_id/found
-- The first submission (smallest _id) with a household id is the original; later ones are flagged.
CREATE OR REPLACE TEMP TABLE rule_found AS
SELECT root_uuid, submission_id, 'household_id' AS column_name, household_id AS value,
       'Identifiant de ménage ' || household_id || ' déjà utilisé / Household ID ' || household_id || ' already used'
           AS message
FROM (SELECT *, min(submission_id) OVER (PARTITION BY household_id) AS first_id FROM rule_scope)
WHERE submission_id > first_id;

-- name: near_duplicate/scope
CREATE OR REPLACE TEMP TABLE rule_scope AS
SELECT t.root_uuid, t.submission_id, t.submitted_by, t.head_name, t.location_latitude AS lat,
       t.location_longitude AS lon
FROM {table} AS t
WHERE {project} AND {restrict}
  AND t.submitted_by IS NOT NULL AND t.head_name IS NOT NULL
  AND t.location_latitude IS NOT NULL AND t.location_longitude IS NOT NULL;

-- name: near_duplicate/found
-- Same enumerator, same head of household, GPS points within $metres: the later _id is
-- flagged, with the distance to the nearest earlier one.
-- Pairs are only compared within a band of latitude: two points $metres apart are at most
-- $metres / 111,195 m of latitude apart (a great circle is never shorter than its
-- north-south part), so each point meets only the points of its own and the two
-- neighbouring bands (111,000 m a degree: bands a little wider, never too narrow). Without
-- the bands an enumerator who met a common name many times was compared pair by pair.
CREATE OR REPLACE TEMP TABLE rule_found AS
WITH banded AS (
    SELECT *, CAST(floor(lat * 111000.0 / $metres) AS BIGINT) AS band FROM rule_scope
), reaching AS (
    SELECT *, unnest([band - 1, band, band + 1]) AS near_band FROM banded
)
SELECT root_uuid, submission_id, 'head_name' AS column_name, head_name AS value,
       printf('Doublon probable : même enquêteur, même chef de ménage, à %.0f m / '
              'Likely duplicate: same enumerator, same head, %.0f m apart', metres, metres) AS message
FROM (
    SELECT b.root_uuid, b.submission_id, b.head_name,
           1000 * km(b.lat, b.lon, a.lat, a.lon) AS metres
    FROM reaching AS b
    JOIN banded AS a
      ON a.submitted_by = b.submitted_by AND a.head_name = b.head_name AND a.band = b.near_band
     AND a.submission_id < b.submission_id
)
WHERE metres <= $metres
QUALIFY row_number() OVER (PARTITION BY root_uuid ORDER BY metres) = 1;

-- name: resolve_gone
-- Open issues of this check, in the groups checked, that no longer hold (the count or the
-- centre moved, the submission was edited, quarantined or deleted). A check finds at
-- most one problem per submission: the issue is the submission's, whatever its message.
UPDATE quality.issues AS i
SET resolved_at = $now
WHERE i.asset_uid = $asset_uid AND i.check_code = $code AND i.resolved_at IS NULL
  AND ($everything OR i.root_uuid IN (SELECT root_uuid FROM rule_scope))
  AND i.root_uuid NOT IN (SELECT root_uuid FROM rule_found);

-- name: refresh_found
-- An issue that still holds keeps its row and when it was detected; its value and message
-- follow what holds now (a village's centre moved a little, a day's count grew). Resolving
-- it and opening it again would show a data manager an old problem as new, and rewrite
-- every issue of a village each time one of its submissions arrives.
UPDATE quality.issues AS i
SET value = f.value, message = f.message, submission_id = f.submission_id
FROM rule_found AS f
WHERE i.asset_uid = $asset_uid AND i.check_code = $code AND i.resolved_at IS NULL AND i.root_uuid = f.root_uuid
  AND (i.message IS DISTINCT FROM f.message OR i.value IS DISTINCT FROM f.value
       OR i.submission_id IS DISTINCT FROM f.submission_id);

-- name: insert_found
INSERT INTO quality.issues (asset_uid, form_id, root_uuid, submission_id, table_name, column_name, row_key,
                            check_code, value, severity, message, detected_at)
SELECT $asset_uid, $form_id, f.root_uuid, f.submission_id, $table_name, f.column_name, NULL, $code, f.value,
       $severity, f.message, $now
FROM rule_found AS f
WHERE NOT EXISTS (SELECT 1 FROM quality.issues AS i
                  WHERE i.asset_uid = $asset_uid AND i.check_code = $code AND i.resolved_at IS NULL
                    AND i.root_uuid = f.root_uuid);

-- name: touched_groups
-- The groups of some submissions, to be checked again (rows of {relation}: the clean
-- table before a change, or the batch's stage table after it).
INSERT INTO quality.unchecked_groups
SELECT DISTINCT $asset_uid, $code, {group_key}
FROM {relation} AS t
WHERE {chosen} AND {group_key} IS NOT NULL;
