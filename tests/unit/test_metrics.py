"""Prometheus metrics of the workers and the APIs, the trusted-host check, and the pipeline
API's truthful health (its producer's link to Kafka)."""

from __future__ import annotations

import json

import httpx
import pytest
from confluent_kafka import KafkaError
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from streaming.api.ingest import STALE_STATS_S, KafkaLink
from streaming.api.serving import serve_http_extras
from streaming.settings import TrustedHosts
from streaming.workers.health import HealthServer
from streaming.workers.metrics import LatencyHistogram, StageFigures, WorkerMetrics
from streaming.workers.prometheus import exposition


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [
        v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= set(ls)
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def consumer_stats(**partitions: dict) -> str:
    parts = {p: {"fetch_state": "active", **v} for p, v in partitions.items()}
    return json.dumps({"topics": {"in": {"partitions": {**parts, "-1": {}}}}})


def busy_worker() -> WorkerMetrics:
    m = WorkerMetrics("aggregator", "1")
    m.records_in, m.dead_letters, m.transactions = 120, 2, 7
    m.last_commit_time = 1_800_000_000.0
    m.records_out["out"] += 40
    m.aborted("MSG_SIZE_TOO_LARGE")
    m.committed()
    m.last_commit_time = 1_800_000_000.0
    m.stage = StageFigures(as_of_day=20_000, state_bytes=4096, state_reviews=50)
    m.restore_progress = {"versions": {"records": 30, "of": 90}}
    m.on_stats(consumer_stats(**{"0": {"next_offset": 5, "ls_offset": 9, "rxmsgs": 70}}))
    m.on_producer_stats(json.dumps({"topics": {"out": {"partitions": {"3": {"txmsgs": 40}}}}}))
    for seconds in (0.002, 0.03, 0.03, 4.0):
        m.commit_latency.observe(seconds)
    return m


def test_a_scrape_has_the_loop_counters_per_topic_and_partition() -> None:
    content_type, body = exposition(busy_worker(), stall_after_s=30)
    text = body.decode()
    assert content_type.startswith("text/plain")
    ids = {"worker": "aggregator", "instance": "1"}
    assert value(text, "reviews_worker_records_in_total", **ids) == 120
    assert value(text, "reviews_worker_records_out_total", topic="out") == 40
    assert value(text, "reviews_worker_dead_letters_total") == 2
    assert value(text, "reviews_worker_transactions_committed_total") == 7
    aborted = {"reason": "MSG_SIZE_TOO_LARGE"}
    assert value(text, "reviews_worker_transactions_aborted_total", **aborted) == 1
    assert value(text, "reviews_worker_partition_lag", topic="in", partition="0") == 4
    assert value(text, "reviews_worker_partition_fetched_records_total", partition="0") == 70
    assert value(text, "reviews_worker_partition_produced_records_total", partition="3") == 40
    assert value(text, "reviews_worker_restore_records", store="versions", of="read") == 30
    assert value(text, "reviews_worker_restore_records", store="versions", of="total") == 90
    assert value(text, "reviews_worker_state_bytes") == 4096
    assert value(text, "reviews_worker_as_of_day_timestamp_seconds") == 20_000 * 86_400
    assert value(text, "reviews_worker_status", status="ok") == 1
    assert value(text, "reviews_worker_status", status="stalled") == 0
    assert value(text, "reviews_worker_commit_seconds_bucket", le="0.025") == 1
    assert value(text, "reviews_worker_commit_seconds_bucket", le="0.05") == 3
    assert value(text, "reviews_worker_commit_seconds_count") == 4


def test_a_partition_no_longer_fetched_has_no_lag() -> None:
    m = WorkerMetrics("w", "0")
    m.on_stats(consumer_stats(**{"0": {"next_offset": 1, "ls_offset": 9, "rxmsgs": 1}}))
    m.on_stats(json.dumps({"topics": {}}))  # revoked
    assert m.partitions[("in", 0)].lag == 0 and m.consumer_lag == 0


def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    h = LatencyHistogram(bounds=(0.1, 1.0))
    for s in (0.05, 0.1, 0.5, 3.0):
        h.observe(s)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.total_s == pytest.approx(3.65)


def test_the_health_port_serves_metrics_and_refuses_foreign_hosts() -> None:
    server = HealthServer(busy_worker(), 0, trusted=TrustedHosts.from_env({})).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        scrape = httpx.get(f"{base}/metrics")
        assert scrape.status_code == 200
        assert value(scrape.text, "reviews_worker_records_in_total") == 120
        assert httpx.get(f"{base}/health").json()["records_in"] == 120
        rebound = httpx.get(f"{base}/health", headers={"Host": "evil.example:8091"})
        assert rebound.status_code == 400
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("127.0.0.1:8000", True),
        ("localhost", True),
        ("LOCALHOST:3000", True),
        ("[::1]:8000", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
        (None, False),
    ],
)
def test_trusted_hosts(header: str | None, allowed: bool) -> None:
    assert TrustedHosts.from_env({}).allows(header) is allowed


def test_trusted_hosts_from_the_environment() -> None:
    mine = TrustedHosts.from_env({"ALLOWED_HOSTS": "reviews.internal, api.example"})
    assert mine.allows("reviews.internal:8000") and mine.allows("api.example")
    assert not mine.allows("localhost")  # replaced, not added to
    assert mine.allows("127.0.0.1")  # the address it listens on
    bound = TrustedHosts.from_env({"BIND_HOST": "10.0.0.5"})
    assert bound.allows("10.0.0.5:8000") and bound.allows("localhost")
    assert TrustedHosts.from_env({"ALLOWED_HOSTS": "*"}).allows("anything")


def test_an_api_serves_request_metrics_and_refuses_foreign_hosts() -> None:
    app = FastAPI()

    @app.get("/hello/{name}")
    def hello(name: str) -> dict[str, str]:
        return {"hello": name}

    serve_http_extras(app, TrustedHosts.from_env({}))
    client = TestClient(app, base_url="http://localhost")
    assert client.get("/hello/a").status_code == 200
    assert client.get("/hello/b").status_code == 200
    text = client.get("/metrics").text
    assert value(text, "http_requests_total", handler="/hello/{name}", status="200") == 2
    assert value(text, "http_request_duration_seconds_count", handler="/hello/{name}") == 2
    rebound = TestClient(app, base_url="http://evil.example").get("/hello/a")
    assert rebound.status_code == 400
    assert rebound.json() == {"detail": "untrusted Host header (ALLOWED_HOSTS)"}, "its reason"
    empty = client.get("/hello/a", headers={"Host": ""})  # schemathesis found this one
    assert empty.status_code == 400 and "Host" in empty.json()["detail"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def broker_stats(*states: str) -> str:
    brokers = {"bootstrap": {"nodeid": -1, "state": "INIT"}}
    brokers |= {f"b{i}": {"nodeid": i, "state": s} for i, s in enumerate(states)}
    return json.dumps({"brokers": brokers})


def test_kafka_link_is_ok_only_while_a_broker_is_up() -> None:
    clock = Clock()
    link = KafkaLink(clock)
    assert link.problem() == "connecting to Kafka"
    link.on_stats(broker_stats("UP"))
    assert link.problem() is None
    link.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "kafka-0.internal:9092: 1/1 down"))
    link.on_stats(broker_stats("CONNECT"))
    assert link.problem() == "no Kafka broker reachable"  # the broker's text is the log's
    link.on_stats(broker_stats("DOWN", "UP"))
    assert link.problem() is None


def test_kafka_link_fails_on_a_fatal_error_and_on_silence() -> None:
    clock = Clock()
    link = KafkaLink(clock)
    link.on_stats(broker_stats("UP"))
    clock.now += STALE_STATS_S + 1
    assert "no producer statistics" in (link.problem() or "")
    link.on_stats(broker_stats("UP"))
    link.on_error(KafkaError(KafkaError._FENCED, "fenced by kafka-0.internal:9092", fatal=True))
    link.on_stats(broker_stats("UP"))
    assert "failed fatally" in (link.problem() or "")
    assert "kafka-0" not in (link.problem() or "")


def test_the_dashboard_reads_only_metrics_we_serve() -> None:
    """Every series a panel of docs/monitoring/grafana-dashboard.json queries is served: by
    the workers' exposition or the APIs' instrumentator (a renamed metric breaks this)."""
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs/monitoring/grafana-dashboard.json").read_text()
    )
    served = {name for name, _ in samples(exposition(busy_worker(), 30)[1].decode())}
    served |= {"http_requests_total", "http_request_duration_seconds_bucket"}
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:reviews|http)_[a-z_]+)\b", e)}
    assert used and used <= served, used - served


def test_the_scrape_config_lists_every_instance() -> None:
    from streaming.monitoring import scrape_config, scrape_targets

    env = {"AGGREGATOR_INSTANCES": "3", "FRAUD_FILTER_HEALTH_PORT": "9100"}
    jobs = scrape_targets(env)
    assert [t for t, _ in jobs["aggregator"]] == [f"127.0.0.1:{8101 + i}" for i in range(3)]
    assert [t for t, _ in jobs["fraud-filter"]] == ["127.0.0.1:9100", "127.0.0.1:9101"]
    assert "- job_name: pipeline-api" in scrape_config(env)


def test_the_committed_scrape_config_is_the_default_one() -> None:
    """docs/monitoring/prometheus.yml is `reviews prometheus-config` for the default ports
    (regenerate it after changing the declaration's instances or ports)."""
    from pathlib import Path

    from streaming.monitoring import scrape_config

    committed = Path(__file__).resolve().parents[2] / "docs/monitoring/prometheus.yml"
    assert committed.read_text() == scrape_config({})
