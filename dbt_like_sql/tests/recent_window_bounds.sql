-- The recent window of the as-of day (var as_of_day, default today): every course has a row,
-- the window is the recent_days UTC days ending on the as-of day, and it counts exactly the
-- valid reviews created in those days (none later, none earlier). Returns the rows that break it.
{{ config(meta={'dagster': {'ref': {'name': 'recent_stats'}}}) }}
with day as (
    select {{ as_of_day() }} as end_day, {{ var('recent_days') | int }} as days
),
rows_of_day as (
    select r.*
    from {{ ref('recent_stats') }} as r
    cross join day
    where r.window_end_day = date '1970-01-01' + day.end_day
),
expected as (
    select v.course_id, count(*) as count_reviews
    from {{ ref('valid_reviews') }} as v
    cross join day
    where v.created_day between day.end_day - day.days + 1 and day.end_day
    group by v.course_id
)
select c.course_id, 'no row for the as-of day' as problem
from {{ ref('courses') }} as c
where not exists (select 1 from rows_of_day as r where r.course_id = c.course_id)
union all
select r.course_id, 'window does not span recent_days days'
from rows_of_day as r
cross join day
where r.window_start_day <> r.window_end_day - (day.days - 1)
union all
select r.course_id, 'counts reviews outside the window (or misses some)'
from rows_of_day as r
left join expected as e using (course_id)
where r.count_reviews <> coalesce(e.count_reviews, 0)
