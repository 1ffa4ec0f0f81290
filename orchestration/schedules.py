"""Schedules: the nightly batch, as the old pipeline ran it."""

from typing import Any

import dagster as dg

from orchestration.assets.batch import dated_models
from orchestration.jobs import batch_job
from orchestration.sql_models import MODELS_DIR
from orchestration.topology import batch_key
from streaming.core.window import date_to_day


def _run_config(context: dg.ScheduleEvaluationContext) -> dict[str, Any]:
    """The recent window ends on the (UTC) day the run was scheduled for."""
    day = date_to_day(context.scheduled_execution_time.date())
    return {
        "ops": {
            batch_key(name).to_python_identifier(): {"config": {"as_of_day": day}}
            for name in dated_models(MODELS_DIR)
        }
    }


nightly_batch = dg.ScheduleDefinition(
    name="nightly_batch",
    job=batch_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    run_config_fn=_run_config,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every night at 02:00 UTC: the batch statistics as of that day.",
)
