"""Run the whole pipeline once on the bundled sample, through Dagster, as `make run` does.

Every step is a Dagster run submitted to the running webserver, so the UI shows the same history
a user would create by hand: the course catalogue as partitions, one backfill run over all
courses, the batch models, then the reconciliation and its checks. Live `POST /reviews` keep
flowing afterwards; the supervisors keep the workers and connectors alive.

Environment: DAGSTER_HOME, DAGSTER_URL, DAGSTER_USER, DAGSTER_PASSWORD_FILE (the UI's login at
the stack's proxy), DAGSTER_CA_FILE (its CA, over TLS) and the stack's variables (.stack/env).
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Mapping
from urllib.parse import urlparse

import dagster as dg
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql.transport.requests import RequestsHTTPTransport

from orchestration.assets.backfill import courses
from orchestration.assets.batch import AS_OF_DAYS
from orchestration.topology import RECONCILIATION_KEY
from streaming.settings import PipelineSettings, dagster_auth, load, tls_verify
from streaming.source.client import SourceError, UdemyClient

RUN_TIMEOUT_S = 900
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def wait_for(client: DagsterGraphQLClient, run_id: str, what: str) -> str:
    """Poll the run's status until it ends; print progress so a long step is visible."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status != last:
            print(f"[run] {what}: {status}", flush=True)
            last = status
        if status in TERMINAL:
            return status
        time.sleep(1)  # poll interval
    raise TimeoutError(f"{what} did not finish in {RUN_TIMEOUT_S} s (run {run_id})")


def dagster_client() -> DagsterGraphQLClient:
    """A GraphQL client of DAGSTER_URL, logged in as DAGSTER_USER when one is set, an
    `https://` URL verified by DAGSTER_CA_FILE's CA when one is set."""
    settings = load(PipelineSettings)
    url = urlparse(settings.dagster_url)
    auth = dagster_auth()
    basic = base64.b64encode(":".join(auth).encode()).decode() if auth else None
    headers = {"Authorization": f"Basic {basic}"} if basic else None
    transport = None
    if settings.dagster_ca_file:
        tls_verify(settings.dagster_ca_file, "DAGSTER_CA_FILE")  # unusable: one line, exit 2
        transport = RequestsHTTPTransport(
            url=f"{settings.dagster_url.rstrip('/')}/graphql",
            use_json=True,
            timeout=300,
            headers=headers,
            verify=settings.dagster_ca_file,
        )
    return DagsterGraphQLClient(
        url.hostname or "127.0.0.1",
        port_number=url.port or 3000,
        transport=transport,
        use_https=url.scheme == "https",
        headers=headers,
    )


def login_line(settings: PipelineSettings) -> str:
    """How to log in to the UI: the user and the file that holds the password (not the password)."""
    if not settings.dagster_user:
        return f"[run] the Dagster UI: {settings.dagster_url}"
    return (
        f"[run] the Dagster UI: {settings.dagster_url} (log in as {settings.dagster_user!r}; "
        f"the password is in {settings.dagster_password_file})"
    )


def main() -> int:
    settings = load(PipelineSettings)
    url = urlparse(settings.dagster_url)
    client = dagster_client()
    print(login_line(settings), flush=True)
    try:
        with UdemyClient.from_env() as source:
            course_ids = [str(c["id"]) for c in source.iter_courses()]
    except SourceError as exc:
        print(f"[run] the review source is not answering: {exc}", file=sys.stderr)
        return 1
    with dg.DagsterInstance.get() as instance:
        known = set(instance.get_dynamic_partitions(courses.name))  # type: ignore[arg-type]  # named
        new = [c for c in course_ids if c not in known]
        if new:
            instance.add_dynamic_partitions(courses.name, new)  # type: ignore[arg-type]  # named
        keys = instance.get_dynamic_partitions(courses.name)  # type: ignore[arg-type]  # named
    print(f"[run] {len(course_ids)} courses in the catalogue ({len(new)} new)", flush=True)
    today_key = AS_OF_DAYS.get_last_partition_key()  # today's as-of day (UTC)
    steps: list[tuple[str, str, dict[str, str | None]]] = [
        (
            "course_backfill",
            f"backfill of {len(keys)} courses",
            {
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
        ),
        (
            "batch_statistics",
            f"batch models as of {today_key}",
            {"dagster/partition": today_key},
        ),
        ("reconciliation", "reconciliation batch vs stream", {}),
    ]
    for job, what, tags in steps:
        try:
            run_id = client.submit_job_execution(job, tags=tags)
        except DagsterGraphQLClientError as exc:
            print(f"[run] could not submit {job}: {exc}", file=sys.stderr)
            return 1
        if wait_for(client, run_id, what) != "SUCCESS":
            print(f"[run] {what} failed: see {url.geturl()}/runs/{run_id}", file=sys.stderr)
            return 1
    print(verdict(url.geturl()), flush=True)
    return 0


def verdict(ui: str) -> str:
    """What the reconciliation found, said plainly: agreement, or how many courses differ
    and where to see each difference."""
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(RECONCILIATION_KEY)
    page = f"{ui}/assets/{'/'.join(RECONCILIATION_KEY.path)}"
    if event is None or event.asset_materialization is None:
        return f"[run] the reconciliation left no result; see {page}"
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return verdict_line(meta, page)


def verdict_line(meta: Mapping[str, object], page: str) -> str:
    """The closing line of `make run`'s sample run, from the reconciliation's metadata."""
    differing, courses = meta.get("courses_differing", 0), meta.get("courses", "?")
    if not meta.get("mismatches"):
        return (
            f"[run] the pipeline ran on the sample: batch and stream AGREE on all {courses} "
            f"courses (as of {meta.get('as_of_day', '?')}); the UI: {page}"
        )
    return (
        f"[run] batch and stream DISAGREE: {differing} of {courses} courses differ "
        f"({meta['mismatches']} differences, {meta.get('agreement_pct', '?')} % agree); each "
        f"difference is in the table reconciliation.mismatches and on {page}"
    )


if __name__ == "__main__":
    sys.exit(main())
