"""The original pipeline's Java producer, as a team migrating it still runs it: every review and
edit sent with no key (`new ProducerRecord<>(topic, review)`), Avro in the Confluent wire format,
the Java client's defaults. Built with the Maven set-up of the Kafka Streams peers
(`bench/peers/kstreams`, mode `legacy-produce`). One review's versions land on whichever
partitions the client picks; the statistics are exact in both topics, PostgreSQL and the read
API all the same, and the batch rebuilt from the sink's rows agrees (the reconciliation)."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from fastavro import json_writer, parse_schema
from sqlalchemy import Engine, text

from bench.peers.kstreams import build
from orchestration.resources import SchemasResource
from stack.kafka_client_security import java_properties, parse, read_password
from streaming.access import login_env
from streaming.core.window import epoch_day
from streaming.serde import Registry
from streaming.settings import KafkaSettings, Settings, load
from tests.integration.edit_history import (
    courses_on_distinct_partitions,
    expected_stats,
    history,
    review_record,
)
from tests.integration.test_edits_end_to_end import TIMEOUT_S, exact_everywhere, with_rule_verdicts
from tests.integration.test_orchestration import reconcile

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "review.avsc"
JAVA = str(Path(os.environ.get("JAVA_HOME", "/usr/lib/jvm/java-17-openjdk-amd64")) / "bin/java")


def avro_json_lines(records: list[dict]) -> str:
    """Review records in Avro's JSON encoding (unions as {"string": ...}), one per line."""
    out = io.StringIO()
    json_writer(out, parse_schema(json.loads(SCHEMA.read_text())), records)
    return out.getvalue()


def producer_login(tmp: Path) -> Path:
    """A client.properties (mode 0600) logging in as `producer`: the principal other systems
    that write the input get (streaming/access.py), nothing more."""
    kafka = load(KafkaSettings, {**os.environ, **login_env("producer", os.environ)})
    login = {**parse(kafka.security_config), "sasl.username": "producer"}
    props = java_properties(login, read_password(kafka.sasl_password_file))
    path = tmp / "producer.properties"
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def legacy_produce(settings: Settings, records: list[dict], tmp: Path) -> list[tuple[int, int]]:
    """Send through the Java producer; the (partition, offset) of each record, in order."""
    schema_id = Registry(settings.schema_registry_url).register(
        "udemy-reviews-value", "review.avsc"
    )
    source = tmp / "reviews.jsonl"
    source.write_text(avro_json_lines(records), encoding="utf-8")
    done = subprocess.run(
        [
            JAVA,
            "-jar",
            str(build()),
            "legacy-produce",
            "--bootstrap",
            settings.kafka_bootstrap_servers,
            "--topic",
            "udemy-reviews",
            "--schema",
            str(SCHEMA),
            "--schema-id",
            str(schema_id),
            "--input",
            str(source),
            "--client-properties",
            str(producer_login(tmp)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sent = [line.split() for line in done.stdout.splitlines() if line.startswith("SENT ")]
    return [(int(p), int(o)) for _, p, o in sent]


def copy_courses(engine: Engine, schema: str, ids: set[int], versions: int) -> None:
    """The stack's sink tables, these courses' rows only, into `schema`: the reconciliation then
    judges this test's records, whatever else other tests wrote to the stack. Waits until the
    raw sink has written every version."""
    deadline = time.monotonic() + TIMEOUT_S
    count = text("select count(*) from public.reviews where course_id = any(:ids)")
    with engine.connect() as conn:
        while conn.execute(count, {"ids": sorted(ids)}).scalar_one() < versions:
            assert time.monotonic() < deadline, "the reviews sink did not write every version"
            time.sleep(1.0)  # poll interval: the sink is catching up
            conn.rollback()
    with engine.begin() as conn:
        for table in ("reviews", "long_term_stats", "recent_stats"):
            conn.execute(
                text(
                    f'create table "{schema}".{table} as '
                    f"select * from public.{table} where course_id = any(:ids)"
                ),
                {"ids": sorted(ids)},
            )


def test_the_legacy_keyless_producer_is_counted_exactly(
    settings: Settings, tmp_path: Path, engine: Engine, scratch: SchemasResource
):
    rng = random.Random(47)
    now_ms = int(time.time() * 1000)
    base = 7_000_000_000 + rng.randrange(10**9)
    courses = courses_on_distinct_partitions(base, 6)
    records = history(200, now_ms, courses, first_id=base * 10, seed=47)
    verdicts = with_rule_verdicts(records, rng)
    positions = legacy_produce(settings, [review_record(r) for r in records], tmp_path)
    assert len(positions) == len(records)
    spread: dict[int, set[int]] = {}
    for rec, (partition, _) in zip(records, positions, strict=True):
        spread.setdefault(rec["id"], set()).add(partition)
    assert len({p for p, _ in positions}) == 4, "keyless records spread over the partitions"
    assert any(len(parts) > 1 for parts in spread.values()), "a review's versions, apart"
    expected = expected_stats(records, positions, epoch_day(now_ms), fraud=verdicts)
    ids = set(courses) & {r["course"]["id"] for r in records}
    exact_everywhere(settings, ids, expected)
    copy_courses(engine, scratch.stream_schema, ids, len(records))
    assert reconcile(settings, scratch, epoch_day(now_ms)) == {
        "long_term_stats_agree": True,
        "recent_stats_agree": True,
        "refusals_agree": True,
    }
