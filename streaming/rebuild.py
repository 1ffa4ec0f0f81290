"""`reviews rebuild-stream`: the stream's derived state rebuilt from `udemy-reviews`.

When an upgrade changes how the stream keeps its state (the format of a changelog, how the valid
and fraud topics are keyed), the old state cannot be carried over exactly; the system of record
can replay it. With the stream workers stopped, this deletes what they derived (the valid and
fraud topics, the aggregator's changelog and change topics, the workers' committed offsets and
the aggregator's snapshots) and creates those topics again. Started again, the workers read
`udemy-reviews` from its beginning and publish every course's statistics anew: the compacted
statistics topics, the tables and the read API keep serving the old figures until each course's
new record overwrites them. Records dead-lettered before are dead-lettered again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streaming.admin import ensure_topics, input_max_bytes
from streaming.pipeline import AGGREGATOR, TOPICS, WORKERS, TopicSpec, max_message_bytes
from streaming.settings import Settings, worker_settings

DELETE_WAIT_S = 60.0


@dataclass(frozen=True)
class Plan:
    topics: tuple[TopicSpec, ...]
    """As declared, under the names the environment gives them."""
    groups: tuple[str, ...]
    state_dirs: tuple[Path, ...]


def plan(state_root: Path, env: Mapping[str, str] | None = None) -> Plan:
    """What a rebuild removes: the topics the workers derive (never `udemy-reviews`, the
    statistics topics or the dead letters), their consumer groups and snapshot directories
    (`<STATE_DIR>/<group>`), with the environment's overrides of names."""
    by_name = {t.name: t for t in TOPICS}
    named = AGGREGATOR.topics(env)
    ports = [
        p for p, t in AGGREGATOR.ports.items() if p in ("valid", "fraud") or by_name[t].internal
    ]
    topics = tuple(replace(by_name[AGGREGATOR.ports[p]], name=named[p]) for p in ports)
    groups = tuple(worker_settings(w, env).group_id for w in WORKERS)
    return Plan(topics, groups, tuple(state_root / g for g in groups))


class WorkersRunning(RuntimeError):
    """A worker's consumer group still has members: rebuilding under it would mix states."""


def active_groups(admin: AdminClient, groups: Iterable[str]) -> list[str]:
    """The groups that have members now."""
    found = admin.describe_consumer_groups(list(groups))
    return [g for g, fut in found.items() if fut.result(30).members]


def wait_deleted(admin: AdminClient, topics: Iterable[str]) -> None:
    """Until the broker no longer lists them (deletion is asynchronous)."""
    deadline = time.monotonic() + DELETE_WAIT_S
    left = set(topics)
    while left & set(admin.list_topics(timeout=30).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics still listed {DELETE_WAIT_S:.0f} s after deletion: {left}")
        time.sleep(0.5)  # polling the broker's metadata, not waiting on a guess


def recreate(admin: AdminClient, specs: list[TopicSpec]) -> list[str]:
    """Create the topics again, until the broker lists every one: a deletion finishes in the
    background, and a create meanwhile is answered TOPIC_ALREADY_EXISTS for a topic about to go."""
    deadline, actions = time.monotonic() + DELETE_WAIT_S, []
    while True:
        actions += ensure_topics(admin, specs)
        listed = admin.list_topics(timeout=30).topics
        missing = [s.name for s in specs if s.name not in listed]
        if not missing:
            return actions
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not created again within {DELETE_WAIT_S:.0f} s: {missing}")
        time.sleep(0.5)  # polling the broker's metadata while the deletion completes


def rebuild(settings: Settings, the_plan: Plan, say: Callable[[str], None] = print) -> None:
    admin = AdminClient(settings.kafka_config())
    busy = active_groups(admin, the_plan.groups)
    if busy:
        raise WorkersRunning(
            f"consumer groups {busy} have members: stop the stream workers first "
            "(the fraud filter and the aggregator), then run this again (a worker stopped "
            "just now stays a member until its session times out, 10 s)"
        )
    present = set(admin.list_topics(timeout=30).topics)
    doomed = [t.name for t in the_plan.topics if t.name in present]
    if doomed:
        for topic, fut in admin.delete_topics(doomed, operation_timeout=30).items():
            fut.result()
            say(f"deleted topic {topic}")
        wait_deleted(admin, doomed)
    for group, fut in admin.delete_consumer_groups(list(the_plan.groups)).items():
        try:
            fut.result()
            say(f"deleted the committed offsets of {group}")
        except KafkaException as exc:
            if exc.args[0].name() != "GROUP_ID_NOT_FOUND":
                raise
    for directory in the_plan.state_dirs:
        if directory.exists():
            shutil.rmtree(directory)
            say(f"removed the snapshots in {directory}")
    limit = input_max_bytes(admin)  # recreated as bootstrap sizes them
    sized = [
        replace(t, config={**t.config, "max.message.bytes": str(max_message_bytes(t, limit))})
        for t in the_plan.topics
    ]
    for action in recreate(admin, sized):
        say(action)
    say("done: start the stream workers; they rebuild every statistic from udemy-reviews")
