-- Current versions the fraud rule accepts (the verdicts step's `verdict`, the stream's rule
-- code), with the rating in halves (1..10, from the same step) so sums stay exact, and the UTC
-- day of creation (epoch days, as the recent window counts them).
select
    id,
    course_id,
    created_ms,
    halves,
    floor(created_ms / 86400000.0)::int as created_day
from {{ ref('current_reviews') }}
where verdict = 'valid'
