-- Marts: indicator views over the clean tables. Each statement is created once the
-- tables it reads exist (a form that was never synced has none).

-- name: water_point_functionality
-- Water point functionality rate by commune and month (one inspection per water
-- point and month counts: the latest by the date it was made, not by its upload: a
-- phone offline for weeks uploads old inspections after newer ones).
CREATE OR REPLACE VIEW marts.water_point_functionality AS
WITH latest AS (
    SELECT commune, CAST(date_trunc('month', today) AS DATE) AS month, water_point_id,
           arg_max(functional_status, (today, coalesce("start", submission_time), submission_time)) AS status
    FROM main.water_points
    GROUP BY ALL
), rates AS (
    SELECT commune, month,
           count(*) AS water_points_inspected,
           count(*) FILTER (WHERE status = 'functional') AS functional,
           count(*) FILTER (WHERE status = 'partially_functional') AS partially_functional,
           count(*) FILTER (WHERE status = 'not_functional') AS not_functional,
           round(count(*) FILTER (WHERE status = 'functional') / count(*), 3) AS functionality_rate
    FROM latest
    GROUP BY ALL
)
SELECT r.commune, l.label AS commune_label, r.* EXCLUDE (commune)
FROM rates AS r
LEFT JOIN meta.latest_choice_labels AS l
       ON l.form_id = 'water_point_inspection' AND l.list_name = 'commune' AND l.language = 'fr'
      AND l.choice_name = r.commune
ORDER BY r.commune, r.month;

-- name: household_water_service
-- Households by JMP drinking water service level: "basic" is an improved source
-- within 30 minutes round trip including queuing (piped water on premises counts
-- as basic or better), "limited" an improved source further away.
CREATE OR REPLACE VIEW marts.household_water_service AS
WITH levels AS (
    SELECT commune,
           CASE
               WHEN water_source = 'surface_water' THEN 'surface_water'
               WHEN water_source IN ('unprotected_well') THEN 'unimproved'
               WHEN water_source IN ('piped_dwelling', 'standpipe', 'borehole', 'protected_well', 'rainwater', 'tanker')
                    AND (water_source = 'piped_dwelling' OR water_trip_minutes <= 30) THEN 'basic'
               WHEN water_source IN ('standpipe', 'borehole', 'protected_well', 'rainwater', 'tanker') THEN 'limited'
               ELSE 'unknown'
           END AS service_level
    FROM main.households
    WHERE consent = 'yes'
)
SELECT v.commune, l.label AS commune_label, v.service_level, count(*) AS households,
       round(count(*) / sum(count(*)) OVER (PARTITION BY v.commune), 3) AS share_of_commune
FROM levels AS v
LEFT JOIN meta.latest_choice_labels AS l
       ON l.form_id = 'household_survey' AND l.list_name = 'commune' AND l.language = 'fr'
      AND l.choice_name = v.commune
GROUP BY v.commune, l.label, v.service_level
ORDER BY v.commune, v.service_level;

-- name: training_participation
-- Training participants by topic, sex and age group, with the mean score gain
-- between the pre-test and the post-test (scores out of 20).
CREATE OR REPLACE VIEW marts.training_participation AS
SELECT t.topic, p.participant_sex AS sex,
       CASE WHEN p.participant_age < 15 THEN 'under 15'
            WHEN p.participant_age < 25 THEN '15-24'
            WHEN p.participant_age < 35 THEN '25-34'
            WHEN p.participant_age < 50 THEN '35-49'
            WHEN p.participant_age >= 50 THEN '50 and over'
            ELSE 'unknown' END AS age_group,
       count(*) AS participants,
       round(avg(p.pre_test_score), 2) AS mean_pre_test,
       round(avg(p.post_test_score), 2) AS mean_post_test,
       round(avg(p.post_test_score - p.pre_test_score), 2) AS mean_score_gain
FROM main.training_participants AS p
JOIN main.trainings AS t USING (root_uuid)
GROUP BY ALL
ORDER BY ALL;

-- name: avec_savings
-- AVEC (village savings and loan association) membership and savings by commune.
CREATE OR REPLACE VIEW marts.avec_savings AS
SELECT h.commune, l.label AS commune_label,
       count(*) AS households,
       count(*) FILTER (WHERE avec_member = 'yes') AS avec_households,
       round(count(*) FILTER (WHERE avec_member = 'yes') / count(*), 3) AS avec_membership_rate,
       coalesce(sum(avec_savings_fcfa), 0)::BIGINT AS total_savings_fcfa,
       round(avg(avec_savings_fcfa) FILTER (WHERE avec_member = 'yes'))::BIGINT AS mean_savings_fcfa
FROM main.households AS h
LEFT JOIN meta.latest_choice_labels AS l
       ON l.form_id = 'household_survey' AND l.list_name = 'commune' AND l.language = 'fr'
      AND l.choice_name = h.commune
WHERE h.consent = 'yes'
GROUP BY ALL
ORDER BY h.commune;
