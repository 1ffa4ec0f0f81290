-- Every course any record of `reviews` names (any version, valid or fraud, current or not), with
-- the title of its record with the greatest `modified`, ties to the greater title compared by
-- code point (COLLATE "C", as Python compares the stream's strings): a max over every record,
-- so batch and stream agree whatever order the records arrived in. A course exists from its
-- first record on, counted or not, as in the stream.
select distinct on (course_id)
    course_id,
    course_title
from {{ source('stream', 'reviews') }}
order by course_id, modified desc, course_title collate "C" desc
