"""Schedules: the nightly batch, as the old pipeline ran it, built from the as-of-day partitions."""

import dagster as dg

from orchestration.jobs import batch_job

nightly_batch = dg.build_schedule_from_partitioned_job(
    batch_job,
    name="nightly_batch",
    hour_of_day=2,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every night at 02:00 UTC: the batch statistics, the recent window ending that "
    "day (the day's partition).",
)
