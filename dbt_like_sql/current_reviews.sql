-- The current version of every review: the one with the greatest `modified`. The sink's primary
-- key (id, modified) leaves no ties; on a source without it, the remaining columns break them
-- (the stream only ever sees exact duplicates there, so any fixed rule agrees with it).
-- Timestamps become epoch milliseconds, the unit of the stream's records.
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
    course_url
from {{ source('stream', 'reviews') }}
order by id, modified desc, created desc, rating desc, course_id desc, content desc, title desc
