-- The version order of the brief: every review of `reviews` has exactly one row in
-- current_reviews, and no version of it is later than that row's version by (modified, then
-- its record's partition and offset). Returns the reviews that break it.
{{ config(meta={'dagster': {'ref': {'name': 'current_reviews'}}}) }}
with versions as (
    select id, modified, __connect_partition as p, __connect_offset as o
    from {{ source('stream', 'reviews') }}
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
