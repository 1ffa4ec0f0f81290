-- Statistics of every course over the valid reviews created on the UTC days
-- as_of_day - (recent_days - 1) .. as_of_day (both epoch days; recent_days is 90), the
-- reference for the stream's recent_stats on the same as-of day. Reviews created after the
-- as-of day are outside the window. Same columns and rules as long_term_stats.
-- One set of rows per as-of day (window_end_day): a run for a day replaces that day's rows and
-- no other, so rebuilding a past day never touches today's.
{{ config(
    materialized='incremental',
    unique_key='window_end_day',
    incremental_strategy='delete+insert',
    on_schema_change='fail'
) }}
with totals as (
    select
        course_id,
        sum(count_reviews) as count_reviews,
        sum(sum_halves) as sum_halves,
        sum(count_five_stars) as count_five_stars,
        sum(count_four_stars) as count_four_stars,
        sum(count_three_stars) as count_three_stars,
        sum(count_two_stars) as count_two_stars,
        sum(count_one_star) as count_one_star,
        sum(count_zero_star) as count_zero_star,
        max(last_review_ms) as last_review_ms
    from {{ ref('daily_course_stats') }}
    where created_day between {{ as_of_day() }} - {{ var('recent_days') | int }} + 1
        and {{ as_of_day() }}
    group by course_id
)
select
    c.course_id,
    c.course_title,
    case when coalesce(t.count_reviews, 0) = 0 then 0.0::float8
        else (t.sum_halves::float8 / 2) / t.count_reviews::float8 end as average_rating,
    coalesce(t.count_reviews, 0)::bigint as count_reviews,
    coalesce(t.count_five_stars, 0)::bigint as count_five_stars,
    coalesce(t.count_four_stars, 0)::bigint as count_four_stars,
    coalesce(t.count_three_stars, 0)::bigint as count_three_stars,
    coalesce(t.count_two_stars, 0)::bigint as count_two_stars,
    coalesce(t.count_one_star, 0)::bigint as count_one_star,
    coalesce(t.count_zero_star, 0)::bigint as count_zero_star,
    timestamp 'epoch' + coalesce(t.last_review_ms, 0) * interval '1 millisecond'
        as last_review_time,
    coalesce(t.sum_halves, 0)::float8 / 2 as sum_rating,
    date '1970-01-01' + ({{ as_of_day() }} - {{ var('recent_days') | int }} + 1)
        as window_start_day,
    date '1970-01-01' + {{ as_of_day() }} as window_end_day,
    now() at time zone 'UTC' as as_of_time
from {{ ref('courses') }} as c
left join totals as t using (course_id)
