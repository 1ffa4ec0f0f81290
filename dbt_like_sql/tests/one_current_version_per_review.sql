-- The version order of the brief: every review of `reviews` with a version the validity rule
-- accepts has exactly one row in current_reviews, and no accepted version of it is later than
-- that row's version by (modified, then its record's partition and offset); a version the rule
-- refuses never counts, one not judged yet (arrived after the build) does. Returns the reviews
-- that break it.
{{ config(meta={'dagster': {'ref': {'name': 'current_reviews'}}}) }}
with versions as (
    select r.id, r.modified, r.__connect_partition as p, r.__connect_offset as o
    from {{ source('stream', 'reviews') }} as r
    left join {{ source('batch', 'review_verdicts') }} as verdicts
        on verdicts.source_partition = r.__connect_partition
        and verdicts.source_offset = r.__connect_offset
    where verdicts.verdict is distinct from 'invalid'
),
chosen as (
    select c.id, v.modified, v.p, v.o
    from {{ ref('current_reviews') }} as c
    join versions as v on v.p = c.source_partition and v.o = c.source_offset
)
select id, 'no current version' as problem
from (select distinct id from versions) as ids
where not exists (select 1 from chosen where chosen.id = ids.id)
union all
select id, 'several current versions'
from {{ ref('current_reviews') }}
group by id
having count(*) > 1
union all
select chosen.id, 'a later version exists'
from chosen
join versions as v on v.id = chosen.id
where (v.modified, v.p, v.o) > (chosen.modified, chosen.p, chosen.o)
