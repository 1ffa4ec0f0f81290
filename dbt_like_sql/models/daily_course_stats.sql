-- Counted reviews per course and UTC creation day: the all-time and recent statistics are sums
-- of these rows. Star buckets by halves: 1 (0.5) -> zero, 2-3 -> one, 4-5 -> two, 6-7 -> three,
-- 8-9 -> four, 10 (5.0) -> five.
select
    course_id,
    created_day,
    count(*) as count_reviews,
    sum(halves) as sum_halves,
    count(*) filter (where halves = 10) as count_five_stars,
    count(*) filter (where halves in (8, 9)) as count_four_stars,
    count(*) filter (where halves in (6, 7)) as count_three_stars,
    count(*) filter (where halves in (4, 5)) as count_two_stars,
    count(*) filter (where halves in (2, 3)) as count_one_star,
    count(*) filter (where halves = 1) as count_zero_star,
    max(created_ms) as last_review_ms
from {{ ref('valid_reviews') }}
group by course_id, created_day
