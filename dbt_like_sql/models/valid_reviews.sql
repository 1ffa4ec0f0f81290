-- Current versions the fraud rule accepts (verdicts by the Python step `reviews verdicts`, the
-- stream's rule code, joined on the version's Kafka coordinates: two versions of a review may
-- share `modified`), with the rating in halves (rating * 2, 1..10) so sums stay exact, and the
-- UTC day of creation (epoch days, as the recent window counts them).
select
    c.id,
    c.course_id,
    c.created_ms,
    (c.rating::numeric * 2)::int as halves,
    floor(c.created_ms / 86400000.0)::int as created_day
from {{ ref('current_reviews') }} as c
join {{ source('batch', 'review_verdicts') }} as v
    on v.source_partition = c.source_partition and v.source_offset = c.source_offset
where not v.is_fraud
