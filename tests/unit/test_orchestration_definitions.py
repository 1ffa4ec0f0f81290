"""The code location loads, and its graph, jobs, sensors and schedule are wired as intended."""

import subprocess
from datetime import UTC, datetime

import dagster as dg
import yaml

from orchestration.definitions import defs
from orchestration.schedules import nightly_batch
from orchestration.sql_models import MODELS_DIR
from orchestration.topology import RECONCILIATION_KEY, batch_key, table_key, topic_key
from streaming.config import REPO_ROOT


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


def test_every_sql_file_is_a_batch_asset_next_to_the_stream_lineage() -> None:
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    for path in MODELS_DIR.glob("*.sql"):
        assert batch_key(path.stem) in keys
    parents = {key: set(graph.get(key).parent_keys) for key in keys}
    assert parents[topic_key("udemy-reviews-valid")] == {topic_key("udemy-reviews")}
    assert topic_key("long-term-stats") in parents[table_key("long_term_stats")]
    assert table_key("reviews") in parents[batch_key("current_reviews")]
    assert batch_key("review_verdicts") in parents[batch_key("valid_reviews")]
    assert table_key("recent_stats") in parents[RECONCILIATION_KEY]
    checks = {c.name for c in graph.get(RECONCILIATION_KEY).check_keys}
    assert checks == {"long_term_stats_agree", "recent_stats_agree"}


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
    [request] = nightly_batch.evaluate_tick(context).run_requests
    job = defs.resolve_job_def("batch_statistics")
    assert dg.validate_run_config(job, request.run_config)
    assert request.run_config["ops"]["batch__recent_stats"]["config"] == {"as_of_day": 20000}
    assert nightly_batch.default_status == dg.DefaultScheduleStatus.RUNNING


def test_dagster_yaml_turns_telemetry_off_and_stores_in_postgres() -> None:
    config = yaml.safe_load((REPO_ROOT / "orchestration" / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert config["storage"]["postgres"]["postgres_db"]["db_name"] == "dagster"
