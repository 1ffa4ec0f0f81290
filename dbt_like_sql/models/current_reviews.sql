-- The current version of every review, by the stream's order: the greatest `modified`, ties to
-- the later record of `udemy-reviews` (all versions of a review share a partition there, so its
-- offset orders them). The sink keys `reviews` by each record's Kafka coordinates, so a tie
-- keeps both records and only this order decides, never another column. The coordinates stay
-- as the version's unique key (`source_partition`, `source_offset`); timestamps become epoch
-- milliseconds, the unit of the stream's records.
select distinct on (id)
    id,
    title,
    content,
    rating,
    (extract(epoch from created) * 1000)::bigint as created_ms,
    (extract(epoch from modified) * 1000)::bigint as modified_ms,
    user_title,
    user_name,
    user_display_name,
    course_id,
    course_title,
    course_url,
    __connect_partition as source_partition,
    __connect_offset as source_offset
from {{ source('stream', 'reviews') }}
order by id, modified desc, __connect_partition desc, __connect_offset desc
