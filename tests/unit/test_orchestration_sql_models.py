"""The SQL runner: dependencies parsed from templates, topological order, rendering."""

from pathlib import Path

import pytest

from orchestration.assets.batch import PYTHON_MODELS, source_relations
from orchestration.resources import SqlModelsResource
from orchestration.sql_models import (
    MODELS_DIR,
    ModelError,
    load_models,
    parse_model,
    quote,
    render,
    topological_order,
)

TEMPLATE = """-- Reviews per course.
-- Second line of the description.
select c.course_id, count(*) as n
from {{ ref('current') }} as c
join {{ source('stream', 'reviews') }} as r using (id)
where c.day between {{ var('as_of_day') }} - 89 and {{var('as_of_day')}}
  and exists (select 1 from {{ ref( 'current' ) }})
group by c.course_id;
"""


def test_parse_reads_refs_sources_vars_and_the_leading_comment() -> None:
    model = parse_model("per_course", TEMPLATE)
    assert model.refs == ("current",)
    assert model.sources == (("stream", "reviews"),)
    assert model.vars == ("as_of_day",)
    assert model.description == "Reviews per course. Second line of the description."


@pytest.mark.parametrize(
    "bad",
    [
        "select {{ ref('a', 'b') }}",
        "select * from {{ source('only_one') }}",
        "select {{ config(materialized='table') }}",
        'select {{ ref("double_quoted") }}',
    ],
)
def test_parse_refuses_what_it_cannot_read(bad: str) -> None:
    with pytest.raises(ModelError):
        parse_model("m", bad)


def test_render_points_refs_into_the_schema_and_inserts_sources_and_vars() -> None:
    sql = render(
        parse_model("per_course", TEMPLATE),
        schema="batch",
        sources={("stream", "reviews"): '"public"."reviews"'},
        variables={"as_of_day": 20000},
    )
    assert '"batch"."current" as c' in sql
    assert 'join "public"."reviews" as r' in sql
    assert "between 20000 - 89 and 20000" in sql
    assert "{{" not in sql and not sql.endswith(";")


def test_render_names_a_missing_var_or_source() -> None:
    model = parse_model("per_course", TEMPLATE)
    with pytest.raises(ModelError, match="var\\('as_of_day'\\)"):
        render(model, schema="b", sources={("stream", "reviews"): "r"}, variables={})
    with pytest.raises(ModelError, match="source\\('stream', 'reviews'\\)"):
        render(model, schema="b", sources={}, variables={"as_of_day": 1})


def test_quote_accepts_plain_names_only() -> None:
    assert quote("batch_2") == '"batch_2"'
    for bad in ('x"; drop table reviews; --', "a.b", "", "1abc"):
        with pytest.raises(ModelError):
            quote(bad)


def _models(**sqls: str) -> dict:
    return {name: parse_model(name, sql) for name, sql in sqls.items()}


def test_order_puts_every_model_after_what_it_refs() -> None:
    models = _models(
        d="select * from {{ ref('b') }} join {{ ref('c') }} using (x)",
        b="select * from {{ ref('a') }}",
        c="select * from {{ ref('a') }} join {{ ref('py') }} using (x)",
        a="select * from {{ source('s', 't') }}",
    )
    assert topological_order(models, {"py": ["b"]}) == ["a", "b", "py", "c", "d"]


def test_order_refuses_cycles_and_unknown_refs() -> None:
    with pytest.raises(ModelError, match="cycle"):
        topological_order(_models(a="select {{ ref('b') }}", b="select {{ ref('a') }}"))
    with pytest.raises(ModelError, match="unknown"):
        topological_order(_models(a="select {{ ref('nowhere') }}"))


def test_the_project_models_order_and_render(tmp_path: Path) -> None:
    models = load_models(MODELS_DIR)
    order = topological_order(models, PYTHON_MODELS)
    assert order.index("current_reviews") < order.index("review_verdicts")
    assert order.index("review_verdicts") < order.index("valid_reviews")
    assert order.index("daily_course_stats") < order.index("long_term_stats")
    assert order.index("daily_course_stats") < order.index("recent_stats")
    layout = SqlModelsResource(stream_schema="scratch")
    for model in models.values():
        assert model.description, f"{model.name} has no leading comment"
        sql = render(
            model,
            schema="b",
            sources=source_relations(layout),
            variables={"as_of_day": 20000, "recent_days": 90},
        )
        assert "{{" not in sql
    recent = render(
        models["recent_stats"],
        schema="b",
        sources=source_relations(layout),
        variables={"as_of_day": 20000, "recent_days": 90},
    )
    assert "between 20000 - 90 + 1" in recent
    assert '"scratch"."reviews"' in render(
        models["current_reviews"], schema="b", sources=source_relations(layout), variables={}
    )
    with pytest.raises(ModelError, match=r"no \.sql models"):
        load_models(tmp_path)
