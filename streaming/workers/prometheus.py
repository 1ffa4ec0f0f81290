"""A stream worker's counters in Prometheus' text format, for `GET /metrics` on its health port.

Built at scrape time from the `WorkerMetrics` the loop already keeps (a collector, not client
counters updated per record): the loop's hot path pays nothing for being scraped. Every
series carries `worker` and `instance`; per-partition series come from librdkafka's statistics
(every statistics.interval.ms, 5 s), so they trail the loop by up to that much.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streaming.workers.metrics import WorkerMetrics

PREFIX = "reviews_worker"
STATUSES = ("ok", "restoring", "waiting", "stalled")
DAY_S = 86_400


class WorkerCollector(Collector):
    """Families for one worker instance: throughput, dead letters, transactions, commit
    latency, lag per partition, restore progress, state size and the as-of day."""

    def __init__(self, metrics: WorkerMetrics, stall_after_s: float) -> None:
        self.metrics = metrics
        self.stall_after_s = stall_after_s

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        snap = m.snapshot(self.stall_after_s)
        base = ["worker", "instance"]
        ids = [m.worker, m.instance]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=base)
            family.add_metric(ids, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=base)
            family.add_metric(ids, value)
            return family

        info = InfoMetricFamily(PREFIX, "The worker instance", labels=base)
        info.add_metric(ids, {"incarnation": snap["incarnation"]})
        yield info
        status = GaugeMetricFamily(
            f"{PREFIX}_status", "1 for the instance's current status", labels=[*base, "status"]
        )
        for word in STATUSES:
            status.add_metric([*ids, word], 1.0 if snap["status"] == word else 0.0)
        yield status
        yield gauge("uptime_seconds", "Seconds since the loop started", snap["uptime_s"])
        yield counter("records_in", "Records processed by the loop", m.records_in)
        out = CounterMetricFamily(
            f"{PREFIX}_records_out", "Records produced, per topic", labels=[*base, "topic"]
        )
        for topic, n in sorted(m.records_out.items()):
            out.add_metric([*ids, topic], n)
        yield out
        yield counter("dead_letters", "Records sent to a dead-letter topic", m.dead_letters)
        yield counter("transactions_committed", "Transactions committed", m.transactions)
        aborted = CounterMetricFamily(
            f"{PREFIX}_transactions_aborted",
            "Transactions aborted (then rewound), by reason",
            labels=[*base, "reason"],
        )
        for reason, n in sorted(m.aborts.items()):
            aborted.add_metric([*ids, reason], n)
        yield aborted
        yield counter("commit_retries", "Retriable commit errors retried", m.commit_retries or 0)
        yield counter("consumer_errors", "Consumer error events (not fatal)", m.consumer_errors)
        waits = m.service_waits or 0
        yield counter("service_waits", "Aborts while a service was unreachable", waits)
        yield self._commit_latency()
        if m.last_commit_time is not None:
            yield gauge(
                "last_commit_timestamp_seconds", "Wall clock of the last commit", m.last_commit_time
            )
        yield from self._partitions()
        if m.consumer_lag is not None:
            yield gauge("consumer_lag", "Records not yet processed, all partitions", m.consumer_lag)
        yield from self._state()

    def _commit_latency(self) -> HistogramMetricFamily:
        m = self.metrics
        family = HistogramMetricFamily(
            f"{PREFIX}_commit_seconds",
            "Time to send the offsets and commit a transaction",
            labels=["worker", "instance"],
        )
        family.add_metric(
            [m.worker, m.instance], m.commit_latency.cumulative(), m.commit_latency.total_s
        )
        return family

    def _partitions(self) -> Iterator[Metric]:
        m = self.metrics
        labels = ["worker", "instance", "topic", "partition"]
        lag = GaugeMetricFamily(
            f"{PREFIX}_partition_lag", "Records behind the last stable offset", labels=labels
        )
        fetched = CounterMetricFamily(
            f"{PREFIX}_partition_fetched_records",
            "Records received per input partition (librdkafka rxmsgs; again after a rewind)",
            labels=labels,
        )
        produced = CounterMetricFamily(
            f"{PREFIX}_partition_produced_records",
            "Records sent per output partition (librdkafka txmsgs)",
            labels=labels,
        )
        for (topic, partition), seen in sorted(m.partitions.items()):
            key = [m.worker, m.instance, topic, str(partition)]
            if seen.fetched:
                lag.add_metric(key, seen.lag)
                fetched.add_metric(key, seen.fetched)
            if seen.produced:
                produced.add_metric(key, seen.produced)
        yield from (lag, fetched, produced)
        assigned = GaugeMetricFamily(
            f"{PREFIX}_assigned_partitions", "Input partitions assigned", labels=labels[:2]
        )
        assigned.add_metric(labels_of(m), len(m.assigned))
        yield assigned

    def _state(self) -> Iterator[Metric]:
        m = self.metrics
        ids = labels_of(m)
        progress = GaugeMetricFamily(
            f"{PREFIX}_restore_records",
            "Changelog records of a restore in progress: read so far, and in all",
            labels=["worker", "instance", "store", "of"],
        )
        for store, done in sorted((m.restore_progress or {}).items()):
            progress.add_metric([*ids, store, "read"], done["records"])
            progress.add_metric([*ids, store, "total"], done["of"])
        yield progress
        stage = m.stage
        figures: tuple[tuple[str, str, int | None], ...] = (
            (
                "state_bytes",
                "Bytes of state the stores hold",
                None if stage is None else stage.state_bytes,
            ),
            (
                "state_reviews",
                "Reviews (current versions) in the state",
                None if stage is None else stage.state_reviews,
            ),
            ("snapshots", "State snapshots written", m.snapshots),
        )
        for name, doc, figure in figures:
            if figure is not None:
                family = (CounterMetricFamily if name == "snapshots" else GaugeMetricFamily)(
                    f"{PREFIX}_{name}", doc, labels=["worker", "instance"]
                )
                family.add_metric(ids, figure)
                yield family
        if stage is not None:
            day = GaugeMetricFamily(
                f"{PREFIX}_as_of_day_timestamp_seconds",
                "Midnight (UTC) of the day the recent window ends on",
                labels=["worker", "instance"],
            )
            day.add_metric(ids, stage.as_of_day * DAY_S)
            yield day


def labels_of(m: WorkerMetrics) -> list[str]:
    return [m.worker, m.instance]


def exposition(metrics: WorkerMetrics, stall_after_s: float) -> tuple[str, bytes]:
    """The content type and body of a scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(metrics, stall_after_s))
    return CONTENT_TYPE_LATEST, generate_latest(registry)
