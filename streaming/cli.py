"""The `reviews` command: operate the pipeline's streaming side from a shell."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming.pipeline import INPUT
from streaming.settings import Settings, SettingsError

if TYPE_CHECKING:
    from streaming.sink.connect import ConnectClient, ConnectorState


def _bootstrap(args: argparse.Namespace) -> int:
    from streaming.admin import bootstrap

    settings = Settings.from_env()
    from streaming.admin import SchemaRefused, TopicLayoutError

    try:
        actions, ids = bootstrap(settings, timeout_s=args.timeout)
    except (TopicLayoutError, SchemaRefused) as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 2
    except (KafkaException, TimeoutError) as exc:
        print(f"bootstrap: Kafka at {settings.kafka_bootstrap_servers}: {exc}", file=sys.stderr)
        return 1
    except SchemaRegistryError as exc:
        print(f"bootstrap: registry {settings.schema_registry_url}: {exc}", file=sys.stderr)
        return 1
    for action in actions or ["topics already as declared"]:
        print(f"bootstrap: {action}")
    for subject, (schema_id, level) in ids.items():
        print(f"bootstrap: schema {subject} id={schema_id} ({level})")
    return 0


def _rebuild_stream(args: argparse.Namespace) -> int:

    from streaming.rebuild import WorkersRunning, plan, rebuild
    from streaming.workers.snapshots import DEFAULT_STATE_DIR

    settings = Settings.from_env()
    state_root = Path(settings.loop.state_dir or DEFAULT_STATE_DIR)
    the_plan = plan(state_root)
    try:
        rebuild(settings, the_plan, say=lambda line: print(f"rebuild-stream: {line}"))
    except WorkersRunning as exc:
        print(f"rebuild-stream: {exc}", file=sys.stderr)
        return 2
    except (KafkaException, TimeoutError) as exc:
        print(
            f"rebuild-stream: Kafka at {settings.kafka_bootstrap_servers}: {exc}", file=sys.stderr
        )
        return 1
    return 0


def _source_api(args: argparse.Namespace) -> int:
    from streaming.source.server import main as serve_source

    serve_source()
    return 0


def _api(args: argparse.Namespace) -> int:
    from streaming.api.app import main as serve_api

    serve_api()
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from streaming.ingest.backfill import BackfillError, backfill_all, backfill_course
    from streaming.ingest.producer import ReviewProducer
    from streaming.serde import RegistryUnavailable
    from streaming.source.client import Checkpoint, SourceError, UdemyClient

    settings = Settings.from_env()
    checkpoint = Checkpoint(args.checkpoint_dir) if args.checkpoint_dir else None
    try:
        with (
            UdemyClient.from_env() as client,
            tqdm(unit=" reviews", unit_scale=True, smoothing=0.1) as bar,
        ):
            producer = ReviewProducer(settings, topic=args.topic)
            options = {
                "source_client": client,
                "producer": producer,
                "checkpoint": checkpoint,
                "progress": bar.update,
                "concurrency": args.concurrency,
            }
            if args.course:
                results = [backfill_course(cid, **options) for cid in args.course]
            else:
                results = backfill_all(**options)
    except (SourceError, BackfillError, KafkaException, RegistryUnavailable) as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 1
    total = sum(r.reviews for r in results)
    seconds = sum(r.seconds for r in results)
    rejected = sum(r.rejected for r in results)
    print(
        f"backfill: {total:,} reviews of {len(results)} courses into {args.topic} in "
        f"{seconds:.1f} s ({total / max(seconds, 1e-9):,.0f}/s); {rejected} rejected "
        "(in the dead-letter topic, with reasons)"
    )
    return 0


def _state_lines(state: ConnectorState) -> list[str]:
    """One line for the connector and one per task, with the failure summary when there is one."""
    from streaming.sink.connect import trace_summary

    rows = [("connector", state.state, state.worker_id, state.trace)]
    rows += [(f"task {t.id}", t.state, t.worker_id, t.trace) for t in state.tasks]
    return [
        f"{state.name:<24} {part:<9} {st:<10} {worker} {trace_summary(trace)}".rstrip()
        for part, st, worker, trace in rows
    ]


def _deploy(client: ConnectClient, names: list[str], wait_s: float, directory: Path) -> int:
    """Create/update, then (with a wait) restart what failed and wait until all run: `make up`
    runs this as an init step, so a sink that cannot run fails the start loudly. Nothing is
    deployed when a connector's table exists with another primary key (`sink.tables`)."""
    from streaming.sink.connect import describe, render_login
    from streaming.sink.tables import check_tables

    settings = Settings.from_env()
    configs = {name: render_login(name, settings, directory) for name in names}
    check_tables(settings.database_url, configs)
    for name, config in configs.items():
        print(f"connectors: {name} {client.deploy(name, config)}")
    if wait_s <= 0:
        return 0
    bad = 0
    for name in names:
        try:
            state = client.wait_for(name, lambda s: s.running or s.failed, wait_s)
            if state.failed:
                print(f"connectors: {name} had failed ({describe(state)}): restarting")
                client.restart_failed(name)
                state = client.wait_for(name, lambda s: s.running, wait_s)
            print(f"connectors: {name} running ({len(state.tasks)} tasks)")
        except TimeoutError as exc:
            print(f"connectors: {exc}", file=sys.stderr)
            bad = 1
    return bad


def _status(client: ConnectClient, names: list[str]) -> int:
    from streaming.sink.connect import ConnectError

    bad = 0
    for name in names:
        try:
            state = client.status(name)
        except ConnectError as exc:
            if exc.status != 404:
                raise
            print(f"{name:<24} {'connector':<9} {'MISSING':<10} not deployed")
            bad = 1
            continue
        print("\n".join(_state_lines(state)))
        bad |= state.failed
    return bad


def _connectors(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from streaming.sink.connect import ConnectClient, ConnectError
    from streaming.sink.render import CONNECTORS_DIR, declared_connectors

    directory = args.config_dir or CONNECTORS_DIR
    names = [args.name] if args.name else declared_connectors(directory)
    with ConnectClient.from_env() as client:
        try:
            if args.action == "deploy":
                return _deploy(client, names, args.wait, directory)
            if args.action == "status":
                return _status(client, names)
            for name in names:
                if args.action == "restart":
                    print("\n".join(_state_lines(client.restart_failed(name))))
                elif args.action == "pause":
                    client.pause(name)
                    print(f"connectors: {name} paused")
                else:
                    client.resume(name)
                    print(f"connectors: {name} resumed")
        except (ConnectError, ValueError, SQLAlchemyError) as exc:
            print(f"connectors {args.action}: {exc}", file=sys.stderr)
            return 1
    return 0


def _status_screen(args: argparse.Namespace) -> int:

    from streaming.status import gather, render

    report = gather()
    print(render(report))
    return 0 if report.healthy else 1


def _stats(args: argparse.Namespace) -> int:
    import json

    import httpx

    from streaming.settings import PipelineSettings, load

    api = load(PipelineSettings).pipeline_api_url
    try:
        answer = httpx.get(f"{api}/courses/{args.course_id}/stats", timeout=10)
    except httpx.HTTPError as exc:
        print(f"stats: the pipeline API at {api} is unreachable: {exc}", file=sys.stderr)
        return 1
    if answer.status_code == 404:
        print(f"stats: no statistics for course {args.course_id}", file=sys.stderr)
        return 1
    if not answer.is_success:
        print(f"stats: HTTP {answer.status_code}: {answer.text}", file=sys.stderr)
        return 1
    print(json.dumps(answer.json(), indent=2))
    return 0


def _prometheus_config(args: argparse.Namespace) -> int:

    from streaming.monitoring import scrape_config

    print(scrape_config(), end="")
    return 0


def _verdicts(args: argparse.Namespace) -> int:
    import psycopg2
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from streaming.batch.verdicts import MissingReviews, judge_new_versions
    from streaming.settings import DatabaseSettings, load

    try:
        run = judge_new_versions(
            create_engine(load(DatabaseSettings).url),
            source_schema=args.stream_schema,
            schema=args.schema,
            full_refresh=args.full_refresh,
        )
    except MissingReviews as exc:
        print(f"verdicts: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, psycopg2.Error) as exc:
        print(f"verdicts: PostgreSQL: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a schema that is not a plain name, a FRAUD_MODEL that won't load
        print(f"verdicts: {exc}", file=sys.stderr)
        return 2
    how = "the table built anew" if run.rebuilt else "new versions only"
    print(
        f"verdicts: {run.judged} versions judged ({how}), {run.fraud} fraud, "
        f"{run.invalid} invalid; "
        f"{args.schema}.review_verdicts holds {run.total}"
    )
    return 0


def _dbt(args: argparse.Namespace) -> int:
    from streaming.batch.dbt import run_dbt
    from streaming.settings import DatabaseSettings, load

    dbt_args = args.dbt_args[1:] if args.dbt_args[:1] == ["--"] else args.dbt_args
    return run_dbt(dbt_args or ["--help"], load(DatabaseSettings).url)


def _db_roles(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from streaming.db_bootstrap import bootstrap_roles
    from streaming.settings import DatabaseSettings, load

    try:
        bootstrap_roles(load(DatabaseSettings), say=lambda line: print(f"db-roles: {line}"))
    except SQLAlchemyError as exc:
        # the driver's own error, which a DBAPIError carries (other SQLAlchemyErrors have none)
        orig = getattr(exc, "orig", None)
        print(f"db-roles: PostgreSQL: {str(orig or exc).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from streaming.settings import reference_markdown

    print(reference_markdown(), end="")
    return 0


COMMON_ENV = (
    "KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_CONFIG, SCHEMA_REGISTRY_URL, SCHEMA_REGISTRY_USER, "
    "SCHEMA_REGISTRY_PASSWORD_FILE"
)
COMMAND_ENV = {
    "bootstrap": COMMON_ENV,
    "rebuild-stream": f"STATE_DIR, <WORKER>_GROUP_ID, <WORKER>_<PORT>_TOPIC, {COMMON_ENV}",
    "source-api": "UDEMY_API_PORT, UDEMY_CLIENT_ID, UDEMY_CLIENT_SECRET(_FILE), SAMPLE_SEED, "
    "SAMPLE_SIZE, UDEMY_RATE_LIMIT, BIND_HOST, ALLOWED_HOSTS",
    "api": f"PIPELINE_API_PORT, PIPELINE_API_WORKERS, PIPELINE_API_TOKEN_FILE, BIND_HOST, "
    f"ALLOWED_HOSTS, DATABASE_URL, PGPASSFILE, PROMETHEUS_MULTIPROC_DIR, {COMMON_ENV}",
    "backfill": f"UDEMY_API_URL, UDEMY_CLIENT_ID, UDEMY_CLIENT_SECRET(_FILE), {COMMON_ENV}",
    "connectors": "CONNECT_URL, CONNECT_USER, CONNECT_PASSWORD_FILE, DATABASE_URL, "
    "DATABASE_SINK_SECRETS_DIR, DATABASE_PASSWORD_FILE, PGPASSFILE",
    "db-roles": "DATABASE_URL (the superuser's), PGPASSFILE, DATABASE_ROLES_DIR, "
    "DATABASE_SINK_SECRETS_DIR",
    "status": f"PIPELINE_API_URL, UDEMY_API_URL, DAGSTER_URL, DAGSTER_USER, DAGSTER_PASSWORD_FILE, "
    f"DATABASE_URL, PGPASSFILE, "
    f"CONNECT_URL, CONNECT_USER, CONNECT_PASSWORD_FILE, <WORKER>_INSTANCES, "
    f"<WORKER>_HEALTH_PORT, {COMMON_ENV}",
    "stats": "PIPELINE_API_URL",
    "verdicts": "DATABASE_URL, PGPASSFILE, FRAUD_MODEL",
    "dbt": "DATABASE_URL (PGHOST, PGPORT, PGUSER, PGDATABASE for dbt), PGPASSFILE",
    "config-reference": "none",
    "prometheus-config": "PIPELINE_API_URL, UDEMY_API_URL, <WORKER>_INSTANCES, "
    "<WORKER>_HEALTH_PORT",
}
"""What each command reads from its environment, for its --help (defaults: docs/contracts.md)."""


def _epilog(command: str) -> str:
    return f"environment: {COMMAND_ENV[command]}"


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="reviews",
        description=__doc__,
        epilog="every command's --help lists the environment variables it reads",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('realtime-reviews')}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "status",
        help="every service, worker instance, connector and the newest reconciliation",
        epilog=_epilog("status"),
    )
    p.set_defaults(func=_status_screen)
    p = sub.add_parser(
        "stats", help="a course's statistics (all time and recent)", epilog=_epilog("stats")
    )
    p.add_argument("course_id", type=int)
    p.set_defaults(func=_stats)
    p = sub.add_parser(
        "prometheus-config",
        help="Prometheus' scrape config for every process of ours (to stdout)",
        epilog=_epilog("prometheus-config"),
    )
    p.set_defaults(func=_prometheus_config)
    p = sub.add_parser(
        "config-reference",
        help="every variable, its default and meaning, as Markdown (docs/configuration.md)",
        epilog=_epilog("config-reference"),
    )
    p.set_defaults(func=_config_reference)
    p = sub.add_parser(
        "bootstrap",
        help="create/align topics and register schemas (idempotent)",
        epilog=_epilog("bootstrap"),
    )
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for Kafka")
    p.set_defaults(func=_bootstrap)
    p = sub.add_parser(
        "db-roles",
        help="create/align the pipeline's PostgreSQL roles, their grants and password files "
        "(idempotent; as the superuser)",
        epilog=_epilog("db-roles"),
    )
    p.set_defaults(func=_db_roles)
    p = sub.add_parser(
        "rebuild-stream",
        help="with the stream workers stopped, drop what they derived (valid/fraud, changelogs, "
        "offsets, snapshots) so they rebuild it from udemy-reviews",
        epilog=_epilog("rebuild-stream"),
    )
    p.set_defaults(func=_rebuild_stream)
    p = sub.add_parser(
        "source-api",
        help="serve the Udemy-compatible review API (sample data)",
        epilog=_epilog("source-api"),
    )
    p.set_defaults(func=_source_api)
    p = sub.add_parser(
        "api", help="serve the pipeline's HTTP API (POST /reviews, stats)", epilog=_epilog("api")
    )
    p.set_defaults(func=_api)
    p = sub.add_parser(
        "backfill",
        help="every review of the source's courses into Kafka",
        epilog=_epilog("backfill"),
    )
    p.add_argument("--course", type=int, action="append", help="a course id (repeatable)")
    p.add_argument("--topic", default=INPUT.name)
    p.add_argument("--concurrency", type=int, default=4, help="pages fetched in parallel")
    p.add_argument("--checkpoint-dir", help="resume state directory (one file per course)")
    p.set_defaults(func=_backfill)
    p = sub.add_parser(
        "verdicts",
        help="the batch's fraud verdicts (the stream's rule) on every version of `reviews`, "
        "before `reviews dbt build`",
        epilog=_epilog("verdicts"),
    )
    p.add_argument("--schema", default="batch", help="where review_verdicts goes (the models')")
    p.add_argument("--stream-schema", default="public", help="where the sink's reviews table is")
    p.add_argument(
        "--full-refresh", action="store_true", help="judge every version again, not only new ones"
    )
    p.set_defaults(func=_verdicts)
    p = sub.add_parser(
        "dbt",
        help="dbt's own CLI on the batch project (dbt_like_sql/), connected to DATABASE_URL",
        description="Runs `dbt ARGS` in dbt_like_sql/ (e.g. `reviews dbt build`, "
        "`reviews dbt build --vars '{as_of_day: 2026-11-30}'`, `reviews dbt docs generate`).",
        epilog=_epilog("dbt"),
    )
    p.add_argument("dbt_args", nargs=argparse.REMAINDER, help="dbt's arguments")
    p.set_defaults(func=_dbt)

    conn = sub.add_parser(
        "connectors",
        help="the PostgreSQL sink's Kafka Connect connectors",
        epilog=_epilog("connectors"),
    )
    actions = conn.add_subparsers(dest="action", required=True)
    helps = {
        "deploy": "create or update from streaming/sink/connectors (idempotent)",
        "status": "one line per connector and task; exit 1 if any is FAILED or missing",
        "restart": "restart the connector and its tasks that FAILED",
        "pause": "pause (consumption stops, offsets kept)",
        "resume": "resume after a pause",
    }
    for action, text in helps.items():
        a = actions.add_parser(action, help=text, epilog=_epilog("connectors"))
        a.add_argument("name", nargs="?", help="one connector (default: every declared one)")
        a.add_argument(
            "--config-dir",
            type=Path,
            help="directory of the <name>.json configs (default: streaming/sink/connectors)",
        )
        if action == "deploy":
            a.add_argument(
                "--wait",
                type=float,
                default=60,
                help="seconds to wait until every task runs, restarting failed ones (0: no wait)",
            )
        a.set_defaults(func=_connectors)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per registry request is noise at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dbt"] and argv[1:2] not in ([], ["-h"], ["--help"]):
        # dbt's arguments as they are: argparse would take dbt's own options (--version) as ours
        args = argparse.Namespace(command="dbt", func=_dbt, dbt_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:  # a bad variable: its name and why, not a traceback
        print(f"reviews {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
