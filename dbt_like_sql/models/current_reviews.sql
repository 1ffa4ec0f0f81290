-- The current version of every review (identified by its value's `id`, whatever key its
-- producer sent), by the stream's order: the greatest (`modified`, partition, offset) of
-- `udemy-reviews` among the review's versions that are reviews at all, so a tie on `modified`
-- goes to the greater partition, then the greater offset, wherever the versions landed. A
-- version the validity rule refuses (`verdict = 'invalid'` in the verdicts step's table, the
-- stream's own rule code) never becomes current: the version before it stays, as in the
-- stream. The sink keys `reviews` by each record's Kafka coordinates, so a tie keeps both
-- records and only this order decides, never another column. The coordinates stay as the
-- version's unique key (`source_partition`, `source_offset`); timestamps become epoch
-- milliseconds, the unit of the stream's records; `verdict` (valid or fraud) and `halves` (the
-- rating times two) come from the verdicts step, so no SQL parses a rating.
select distinct on (r.id)
    r.id,
    r.title,
    r.content,
    r.rating,
    v.halves,
    v.verdict,
    (extract(epoch from r.created) * 1000)::bigint as created_ms,
    (extract(epoch from r.modified) * 1000)::bigint as modified_ms,
    r.user_title,
    r.user_name,
    r.user_display_name,
    r.course_id,
    r.course_title,
    r.course_url,
    r.__connect_partition as source_partition,
    r.__connect_offset as source_offset
from {{ source('stream', 'reviews') }} as r
join {{ source('batch', 'review_verdicts') }} as v
    on v.source_partition = r.__connect_partition and v.source_offset = r.__connect_offset
where v.verdict <> 'invalid'
order by r.id, r.modified desc, r.__connect_partition desc, r.__connect_offset desc
