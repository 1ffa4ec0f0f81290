"""The batch's dbt project against the stack's PostgreSQL, beyond the numbers (test_orchestration):
a past as-of day's partition leaves today's rows alone, the singular tests catch what they
promise, the verdicts step judges only new versions, and the shell commands work as documented.
"""

import json
from typing import Any

import pytest
from sqlalchemy import Engine, text

from orchestration.resources import SchemasResource
from streaming.batch.dbt import run_dbt
from streaming.batch.verdicts import DEFAULT_MODEL, write_verdicts
from streaming.cli import main as reviews
from streaming.core.fraud import HashFraudModel
from streaming.settings import Settings
from tests.integration.test_orchestration import (
    AS_OF_DAY,
    _batch_rows,
    build_batch,
    located,
    scripted_versions,
    write_reviews,
)

pytestmark = pytest.mark.integration


def _vars(layout: SchemasResource, **extra: Any) -> str:
    return json.dumps(
        {"stream_schema": layout.stream_schema, "target_schema": layout.batch_schema, **extra}
    )


def _recent_days(engine: Engine, schema: str) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select window_end_day - date '1970-01-01', count(*) "
                f'from "{schema}".recent_stats group by 1'
            )
        ).all()
    return {int(day): int(n) for day, n in rows}


def test_a_past_partition_adds_its_day_and_never_replaces_todays(
    engine: Engine,
    scratch: SchemasResource,
    settings: Settings,
) -> None:
    write_reviews(engine, scratch.stream_schema, located(scripted_versions()), "timestamp")
    build_batch(settings, scratch, AS_OF_DAY)
    today = _batch_rows(engine, scratch.batch_schema, "recent_stats", AS_OF_DAY)
    build_batch(settings, scratch, AS_OF_DAY - 30)
    assert _recent_days(engine, scratch.batch_schema) == {
        AS_OF_DAY: len(today),
        AS_OF_DAY - 30: len(today),
    }
    again = _batch_rows(engine, scratch.batch_schema, "recent_stats", AS_OF_DAY)
    for course_id, row in today.items():
        assert again[course_id]["as_of_time"] == row["as_of_time"], "today's rows were rewritten"
    past = _batch_rows(engine, scratch.batch_schema, "recent_stats", AS_OF_DAY - 30)
    assert sum(r["count_reviews"] for r in past.values()) != sum(
        r["count_reviews"] for r in today.values()
    ), "the scripted reviews span both windows differently"
    build_batch(settings, scratch, AS_OF_DAY)  # the same day again: replaced, not duplicated
    assert _recent_days(engine, scratch.batch_schema)[AS_OF_DAY] == len(today)


def test_the_singular_tests_fail_on_data_that_breaks_them(
    engine: Engine,
    scratch: SchemasResource,
    settings: Settings,
) -> None:
    write_reviews(engine, scratch.stream_schema, located(scripted_versions()), "timestamp")
    build_batch(settings, scratch, AS_OF_DAY)
    day = _vars(scratch, as_of_day=AS_OF_DAY)
    suite = ["test", "--vars", day, "--select"]
    assert run_dbt([*suite, "test_type:singular"], settings.database_url) == 0
    batch, stream = scratch.batch_schema, scratch.stream_schema
    with engine.begin() as conn:
        # a newer version arrives after the build: current_reviews no longer holds the newest
        conn.execute(
            text(
                f'insert into "{stream}".reviews select __connect_topic, __connect_partition, '
                f"__connect_offset + 1000, id, title, content, rating, created, "
                f"modified + interval '1 day', user_title, user_name, user_display_name, "
                f'course_id, course_title, course_url from "{stream}".reviews '
                "order by id limit 1"
            )
        )
        # an average that is not sum / count, and a window one day short
        conn.execute(text(f'update "{batch}".long_term_stats set average_rating = 4.9'))
        conn.execute(
            text(f'update "{batch}".recent_stats set window_start_day = window_start_day + 1')
        )
    for test in (
        "one_current_version_per_review",
        "long_term_averages_equal_sum_over_count",
        "recent_window_bounds",
    ):
        assert run_dbt([*suite, test], settings.database_url) == 1, test
    assert run_dbt([*suite, "recent_averages_equal_sum_over_count"], settings.database_url) == 0


def test_verdicts_judge_only_new_versions_and_all_again_for_another_model(
    engine: Engine,
    scratch: SchemasResource,
) -> None:
    records = located(scripted_versions())
    write_reviews(engine, scratch.stream_schema, records, "timestamp")
    judge = {
        "source_schema": scratch.stream_schema,
        "schema": scratch.batch_schema,
        "model": HashFraudModel(),
    }
    first = write_verdicts(engine, **judge, model_name=DEFAULT_MODEL)
    assert (first.judged, first.total, first.rebuilt) == (len(records), len(records), True)
    assert first.fraud > 0
    again = write_verdicts(engine, **judge, model_name=DEFAULT_MODEL)
    assert (again.judged, again.total, again.rebuilt) == (0, len(records), False)
    with engine.begin() as conn:
        conn.execute(
            text(
                f'insert into "{scratch.stream_schema}".reviews select __connect_topic, '
                "__connect_partition, __connect_offset + 1000, id, title, content || ' (edited)', "
                "rating, created, modified, user_title, user_name, user_display_name, course_id, "
                f'course_title, course_url from "{scratch.stream_schema}".reviews limit 3'
            )
        )
    new = write_verdicts(engine, **judge, model_name=DEFAULT_MODEL)
    assert (new.judged, new.total, new.rebuilt) == (3, len(records) + 3, False)
    other = write_verdicts(engine, **judge, model_name="tests:another")
    assert (other.judged, other.total, other.rebuilt) == (len(records) + 3,) * 2 + (True,)


def test_verdicts_without_a_reviews_table_say_what_is_missing(
    engine: Engine, scratch: SchemasResource, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--schema", scratch.batch_schema, "--stream-schema", scratch.stream_schema]
    assert reviews(["verdicts", *where]) == 1
    err = capsys.readouterr().err
    assert f"no table {scratch.stream_schema}.reviews" in err and "Traceback" not in err


def test_the_shell_commands_run_the_verdicts_then_dbt_build(
    engine: Engine,
    scratch: SchemasResource,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = located(scripted_versions())
    write_reviews(engine, scratch.stream_schema, records, "timestamp")
    where = ["--schema", scratch.batch_schema, "--stream-schema", scratch.stream_schema]
    assert reviews(["verdicts", *where]) == 0
    assert f"{len(records)} versions judged" in capsys.readouterr().out
    assert reviews(["dbt", "build", "--vars", _vars(scratch, as_of_day="2024-10-04")]) == 0
    assert _recent_days(engine, scratch.batch_schema) == {AS_OF_DAY: 4}
    bad_day = _vars(scratch, as_of_day="someday")
    assert reviews(["dbt", "run", "--select", "recent_stats", "--vars", bad_day]) == 2
