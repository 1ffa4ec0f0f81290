-- The current version of every review (identified by its value's `id`, whatever key its
-- producer sent), by the stream's order: the greatest (`modified`, partition, offset) of
-- `udemy-reviews`, so a tie on `modified` goes to the greater partition, then the greater
-- offset, wherever the versions landed. The sink keys `reviews` by each record's Kafka coordinates, so a tie
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
