{#- The rows of a statistics model whose numbers do not hold together: average = sum / count
    (0 without reviews), the star buckets adding up to the count, the sum between 0.5 and 5
    stars per review. The singular tests on both statistics models select these. -#}
{% macro statistics_inconsistencies(relation) %}
select course_id, window_end_day, average_rating, sum_rating, count_reviews
from {{ relation }}
where (count_reviews = 0 and average_rating <> 0)
    or (count_reviews > 0 and abs(average_rating - sum_rating / count_reviews) > 1e-9)
    or count_five_stars + count_four_stars + count_three_stars + count_two_stars
        + count_one_star + count_zero_star <> count_reviews
    or sum_rating not between 0.5 * count_reviews and 5 * count_reviews
{% endmacro %}
