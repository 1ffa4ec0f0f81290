-- Statistics of every course over the valid reviews created on the UTC days
-- as_of_day - (recent_days - 1) .. as_of_day (both epoch days; recent_days is 90), the
-- reference for the stream's recent_stats on the same as-of day. Reviews created after the
-- as-of day are outside the window. Same columns and rules as long_term_stats.
-- One set of rows per as-of day (window_end_day): a run for a day replaces that day's rows and
-- no other, so rebuilding a past day never touches today's.
{{ config(
    materialized='incremental',
    unique_key='window_end_day',
    incremental_strategy='delete+insert',
    on_schema_change='fail'
) }}
{%- set first_day = as_of_day() ~ ' - ' ~ (var('recent_days') | int) ~ ' + 1' %}
{{ course_statistics(
    where='created_day between ' ~ first_day ~ ' and ' ~ as_of_day(),
    window_start="date '1970-01-01' + (" ~ first_day ~ ")",
    window_end="date '1970-01-01' + " ~ as_of_day()
) }}
