{#- The epoch day (UTC) the recent window ends on, as a SQL integer expression.
    var('as_of_day'): an epoch day (20790) or an ISO date (2026-12-03); unset: today, UTC, on
    the database's clock. Anything else stops the compilation with the value it got, so a typo
    never builds the window of another day. -#}
{% macro as_of_day() -%}
    {%- set day = var('as_of_day', none) -%}
    {%- if day is none -%}
        ((now() at time zone 'UTC')::date - date '1970-01-01')
    {%- else -%}
        {%- set text = day | string | trim -%}
        {%- if text.lstrip('-').isdigit() -%}
            {{ text | int }}
        {%- elif modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2}', text) -%}
            (date '{{ text }}' - date '1970-01-01')
        {%- else -%}
            {{ exceptions.raise_compiler_error(
                "var('as_of_day') must be an epoch day (an integer) or a date YYYY-MM-DD, got "
                ~ text) }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
