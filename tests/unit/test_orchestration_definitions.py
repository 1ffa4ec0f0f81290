"""The code location loads, and its graph, jobs, sensors and schedule are wired as intended."""

import subprocess
from datetime import UTC, datetime

import dagster as dg
import yaml

from orchestration.assets.batch import AS_OF_DAYS, PARTITIONED_MODEL
from orchestration.definitions import defs
from orchestration.schedules import nightly_batch
from orchestration.topology import RECONCILIATION_KEY, batch_key, table_key, topic_key
from streaming.batch.dbt import PROJECT_DIR
from streaming.settings import REPO_ROOT


def test_dagster_validates_the_definitions() -> None:
    result = subprocess.run(
        [
            str(REPO_ROOT / ".venv/bin/dagster"),
            "definitions",
            "validate",
            "-m",
            "orchestration.definitions",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_every_dbt_model_is_a_batch_asset_next_to_the_stream_lineage() -> None:
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    for path in (PROJECT_DIR / "models").glob("*.sql"):
        node = graph.get(batch_key(path.stem))
        assert node.group_name == "batch"
        assert node.description, path.stem
        columns = node.metadata["dagster/column_schema"].columns
        assert columns and all(c.description for c in columns), path.stem
        assert (node.partitions_def is not None) == (path.stem == PARTITIONED_MODEL)
        assert node.freshness_policy is not None, "built within a day, as the checks say"
    parents = {key: set(graph.get(key).parent_keys) for key in keys}
    assert parents[topic_key("udemy-reviews-valid")] == {topic_key("udemy-reviews")}
    assert topic_key("long-term-stats") in parents[table_key("long_term_stats")]
    assert table_key("reviews") in parents[batch_key("current_reviews")]
    assert batch_key("review_verdicts") in parents[batch_key("current_reviews")]
    assert table_key("recent_stats") in parents[RECONCILIATION_KEY]
    checks = {c.name for c in graph.get(RECONCILIATION_KEY).check_keys}
    assert checks == {"long_term_stats_agree", "recent_stats_agree", "refusals_agree"}


def test_supervisors_run_by_default_and_restart_through_jobs() -> None:
    sensors = {s.name: s for s in defs.sensors}
    for name in ("supervise_fraud_filter", "supervise_aggregator", "supervise_connect"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["supervise_fraud_filter"].job_name == "restart_worker_job"
    assert sensors["supervise_connect"].job_name == "restart_connector_job"
    for job in ("course_backfill", "batch_statistics", "reconciliation"):
        assert defs.resolve_job_def(job) is not None


def test_the_nightly_schedule_computes_the_batch_as_of_its_day() -> None:
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2024, 10, 4, 2, 0, tzinfo=UTC)
    )
    schedule = defs.resolve_schedule_def(nightly_batch.name)
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-10-04", "the window ends on the night's own day"
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert defs.resolve_job_def("batch_statistics").partitions_def == AS_OF_DAYS


def test_every_dbt_test_is_an_asset_check_of_its_model() -> None:
    graph = defs.resolve_asset_graph()
    checks = {(c.asset_key, c.name) for c in graph.asset_check_keys}
    for model, test in [
        ("current_reviews", "one_current_version_per_review"),
        ("current_reviews", "unique_current_reviews_id"),
        ("recent_stats", "recent_window_bounds"),
        ("recent_stats", "recent_averages_equal_sum_over_count"),
        ("long_term_stats", "long_term_averages_equal_sum_over_count"),
        ("valid_reviews", "relationships_valid_reviews_id__id__ref_current_reviews_"),
    ]:
        assert (batch_key(model), test) in checks


def test_dagster_yaml_turns_telemetry_off_and_stores_in_postgres() -> None:
    config = yaml.safe_load((REPO_ROOT / "orchestration" / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert config["storage"]["postgres"]["postgres_db"]["db_name"] == "dagster"
