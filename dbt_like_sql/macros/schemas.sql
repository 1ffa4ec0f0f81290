{#- Where the models are built: var('target_schema') when given (the reconciliation builds the
    batch side in its own schema, tests in scratch ones), else the profile's schema (batch).
    No "<target>_<custom>" prefixing: a model's schema is exactly the one asked for. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ var('target_schema', target.schema) | trim }}
{%- endmacro %}
