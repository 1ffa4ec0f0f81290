{#- No two rows share these columns' values (dbt_utils' unique_combination_of_columns; the
    package hub is out of reach here, so the project carries its own). -#}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as rows_sharing
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
