"""Local snapshots of changelog-backed state: Kafka Streams' state directory and `.checkpoint`
file in one, so a restart reads the changelog's tail instead of all of it.

One file per store partition, `<STATE_DIR>/<group>/<changelog topic>/<partition>.snap`: a
magic line, one JSON header line, the payload (the state's own `to_snapshot()` bytes). The
header says which changelog partition the state reflects and up to which offset (`offset`: the
state holds exactly the committed changelog records below it), the topic's id and partition
count, when it was written, and the payload's length and SHA-256. Files are written beside
their final name and renamed over it after an fsync, so a reader sees a whole old snapshot or a
whole new one, never a torn one.

A snapshot is a cache: the changelog stays the truth. `snapshot_problem` is the one decision of
whether a snapshot can be used; anything unreadable, foreign or stale is discarded and the
partition is restored from its whole changelog.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from streaming.settings import REPO_ROOT, LoopSettings, load
from streaming.workers.process import alive

MAGIC = b"REVIEWS-SNAPSHOT 1\n"
DEFAULT_STATE_DIR = REPO_ROOT / ".stack" / "state"


class SnapshotUnreadable(ValueError):
    """A snapshot file that is not a whole snapshot (truncated, corrupt, another format)."""


@dataclass(frozen=True)
class SnapshotHeader:
    store: str
    changelog: str
    topic_id: str
    partitions: int
    """The changelog's partition count when the snapshot was written."""
    partition: int
    offset: int
    """The state holds exactly the committed changelog records below this offset."""
    written_at_ms: int
    size: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class ChangelogIdentity:
    """What a snapshot must match to be used: the changelog as it is now."""

    topic_id: str
    partitions: int
    delete_retention_ms: int
    """Tombstones older than this may be compacted away: a snapshot older than it could miss a
    removal in the changelog's tail."""


def snapshot_problem(
    header: SnapshotHeader,
    identity: ChangelogIdentity,
    partition: int,
    low: int,
    high: int,
    now_ms: int,
) -> str | None:
    """Why a snapshot cannot be restored on the changelog partition whose offsets are
    [low, high) now, or None when its tail from `header.offset` completes it."""
    if header.topic_id != identity.topic_id:
        return f"another changelog topic (id {header.topic_id}, now {identity.topic_id})"
    if header.partitions != identity.partitions:
        return f"written for {header.partitions} partitions, the topic has {identity.partitions}"
    if header.partition != partition:
        return f"written for partition {header.partition}"
    if header.offset > high:
        return f"ahead of the changelog (offset {header.offset}, end {high})"
    if header.offset < low:
        return f"behind the changelog's start (offset {header.offset}, start {low})"
    if now_ms - header.written_at_ms >= identity.delete_retention_ms:
        return "older than the changelog's delete.retention.ms (a removal may be compacted)"
    return None


class SnapshotDir:
    """The snapshot files of one consumer group's stores."""

    def __init__(self, root: Path, group: str) -> None:
        self.root = root / group

    @classmethod
    def from_env(cls, group: str) -> SnapshotDir:
        """STATE_DIR [<repository>/.stack/state]."""
        return cls(Path(load(LoopSettings).state_dir or DEFAULT_STATE_DIR), group)

    def path(self, changelog: str, partition: int) -> Path:
        return self.root / changelog / f"{partition}.snap"

    def write(self, header: SnapshotHeader, payload: bytes) -> Path:
        """Write atomically (temporary file, fsync, rename); returns the path."""
        path = self.path(header.changelog, header.partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        full = SnapshotHeader(
            **{
                **asdict(header),
                "size": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        )
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(json.dumps(asdict(full)).encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def read(self, changelog: str, partition: int) -> tuple[SnapshotHeader, bytes] | None:
        """The snapshot of a partition, None when there is none (SnapshotUnreadable when the
        file is not a whole snapshot)."""
        path = self.path(changelog, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not data.startswith(MAGIC):
            raise SnapshotUnreadable(f"{path}: not a snapshot file")
        end = data.find(b"\n", len(MAGIC))
        try:
            header = SnapshotHeader(**json.loads(data[len(MAGIC) : end]))
        except (ValueError, TypeError) as exc:
            raise SnapshotUnreadable(f"{path}: unreadable header ({exc})") from exc
        payload = data[end + 1 :]
        if len(payload) != header.size or hashlib.sha256(payload).hexdigest() != header.sha256:
            raise SnapshotUnreadable(f"{path}: payload does not match its header (corrupt)")
        return header, payload

    def discard(self, changelog: str, partition: int) -> None:
        self.path(changelog, partition).unlink(missing_ok=True)

    def write_note(self, name: str, note: dict) -> None:
        """A small JSON note beside the snapshots (replaced atomically)."""
        path = self.root / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(note, sort_keys=True))
        os.replace(tmp, path)

    def read_note(self, name: str) -> dict:
        """The note `write_note` last wrote ({} when there is none readable)."""
        try:
            note = json.loads((self.root / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}
        return note if isinstance(note, dict) else {}

    def write_owned(self, instance: str, owned: dict[str, list[int]]) -> None:
        """The partitions of each store this process (an instance's running incarnation) was
        just assigned: what its warm spare keeps standby copies of
        (`streaming.workers.standby`)."""
        self.write_note(f"owned-{instance}", {"pid": os.getpid(), "stores": owned})

    def read_owned(self, instance: str) -> dict[str, list[int]] | None:
        """What `write_owned` last said for `instance`, while the process that said it is
        alive; None otherwise (nothing readable, or its writer died: a restart restoring on
        its own must not compete with copies of what a dead predecessor owned, and a spare
        about to take over must not drop the copies it has)."""
        note = self.read_note(f"owned-{instance}")
        pid, stores = note.get("pid"), note.get("stores")
        if not isinstance(pid, int) or not alive(pid) or not isinstance(stores, dict):
            return None
        return {
            str(store): [p for p in parts if isinstance(p, int)]
            for store, parts in stores.items()
            if isinstance(parts, list)
        }

    def remove_leftovers(self) -> None:
        """Temporary files of writers that died mid-write (another live instance's stay)."""
        for tmp in [*self.root.glob("*/*.snap.*.tmp"), *self.root.glob("*.json.*.tmp")]:
            pid = tmp.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not alive(int(pid)):
                tmp.unlink(missing_ok=True)
