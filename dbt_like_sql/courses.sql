-- Every course any review version names, with the title its most recently modified version
-- carries. A course exists from its first review version on, counted or not, as in the stream.
select distinct on (course_id)
    course_id,
    course_title
from {{ source('stream', 'reviews') }}
order by course_id, modified desc, id desc
