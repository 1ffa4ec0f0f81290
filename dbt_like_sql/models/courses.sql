-- Every course any review names (any version, valid or fraud, current or not; never a record
-- the validity rule refuses, which names no course in the stream either), with the title of
-- its record with the greatest `modified`, ties to the greater title compared by code point
-- (COLLATE "C", as Python compares the stream's strings): a max over every record, so batch
-- and stream agree whatever order the records arrived in. A course exists from its first
-- record on, counted or not, as in the stream.
select distinct on (r.course_id)
    r.course_id,
    r.course_title
from {{ source('stream', 'reviews') }} as r
join {{ source('batch', 'review_verdicts') }} as v
    on v.source_partition = r.__connect_partition and v.source_offset = r.__connect_offset
where v.verdict <> 'invalid'
order by r.course_id, r.modified desc, r.course_title collate "C" desc
