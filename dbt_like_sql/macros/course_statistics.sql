{#- Every course's statistics (the CourseStatistic columns) over the counted reviews of
    daily_course_stats that `where` keeps (all of them when none), the window columns as given:
    the one shape of long_term_stats and recent_stats. average = sum / count, 0 without reviews;
    last_review_time = greatest created among counted reviews (the epoch without any). A course
    without counted reviews still has its row (every course of `courses`). -#}
{% macro course_statistics(where=none, window_start='null::date', window_end='null::date') %}
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
    {% if where %}where {{ where }}{% endif %}
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
    {{ window_start }} as window_start_day,
    {{ window_end }} as window_end_day,
    now() at time zone 'UTC' as as_of_time
from {{ ref('courses') }} as c
left join totals as t using (course_id)
{% endmacro %}
