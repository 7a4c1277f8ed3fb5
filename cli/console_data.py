"""What ``sentistream console`` shows, read from Kafka into plain data: the workers' status
records (worker/status.py), the group's lag, the control topic's history. The aggregations are
pure functions of that data; reading lives in the two classes at the end."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from sentistream.worker import kafka_clients
from sentistream.worker.lag import partition_lag
from sentistream.worker.settings import Settings
from sentistream.worker.status import WorkerStatus

GONE_AFTER_INTERVALS = 3
HISTORY_S = 15 * 60
COOKIE = "sentistream_console"


# -- pure: the fleet -----------------------------------------------------------------------------
def is_gone(status: WorkerStatus, now: float) -> bool:
    """Not heard of for GONE_AFTER_INTERVALS of its own intervals (a stopped, killed or cut-off worker)."""
    return now - status.at > GONE_AFTER_INTERVALS * max(status.interval_s, 0.001)


def fleet_rows(statuses: dict[str, WorkerStatus], now: float) -> list[dict[str, Any]]:
    """One row per worker process, live ones first."""
    rows = []
    for key, s in statuses.items():
        gone = is_gone(s, now)
        rows.append({"worker": key, "host": s.host, "pid": s.pid, "partitions": s.partitions,
                     "in_per_s": s.rates.records_in, "out_per_s": s.rates.sentences_out,
                     "dead_per_s": s.rates.dead_letters, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms,
                     "ready": s.ready and not gone, "reason": "gone" if gone else s.reason, "gone": gone,
                     "model": s.model.model_dump(), "shadow": s.shadow.model_dump() if s.shadow else None,
                     "runtime": s.runtime, "group": s.group, "batch_size": s.batch_size,
                     "last_seen_s": max(0.0, now - s.at), "publish_failures": s.publish_failures})
    return sorted(rows, key=lambda r: (r["gone"], r["host"], r["pid"]))


def live(statuses: dict[str, WorkerStatus], now: float) -> list[WorkerStatus]:
    return [s for s in statuses.values() if not is_gone(s, now)]


def totals(statuses: dict[str, WorkerStatus], now: float) -> dict[str, Any]:
    """The live fleet's sums; latency is the slowest live worker's."""
    up = live(statuses, now)
    p50s = [s.p50_ms for s in up if s.p50_ms is not None]
    p99s = [s.p99_ms for s in up if s.p99_ms is not None]
    labels: dict[str, int] = {}
    for s in up:
        for label, n in s.labels.items():
            labels[label] = labels.get(label, 0) + n
    return {"workers": len(up), "gone": len(statuses) - len(up),
            "in_per_s": sum(s.rates.records_in for s in up), "out_per_s": sum(s.rates.sentences_out for s in up),
            "dead_per_s": sum(s.rates.dead_letters for s in up),
            "p50_ms": max(p50s) if p50s else None, "p99_ms": max(p99s) if p99s else None, "labels": labels}


def owners(statuses: dict[str, WorkerStatus], now: float) -> dict[int, str]:
    """Input partition → the live worker that last said it owns it."""
    out: dict[int, str] = {}
    for s in sorted(live(statuses, now), key=lambda s: s.at):
        for p in s.partitions:
            out[p] = s.worker
    return out


def lag_rows(committed: dict[int, int], ends: dict[int, int], beginnings: dict[int, int],
             owner: dict[int, str]) -> list[dict[str, Any]]:
    """Per partition: end offset, committed offset, lag (worker/lag.py's), owner."""
    lag = partition_lag(ends, beginnings, committed)
    return [{"partition": p, "end": end, "committed": committed.get(p), "lag": lag.get(p, 0), "owner": owner.get(p)}
            for p, end in sorted(ends.items())]


@dataclass
class History:
    """Overview points of the last HISTORY_S seconds, kept in the console's memory."""

    keep_s: float = HISTORY_S
    points: deque[dict[str, Any]] = field(default_factory=deque)

    def add(self, point: dict[str, Any]) -> None:
        self.points.append(point)
        while self.points and point["t"] - self.points[0]["t"] > self.keep_s:
            self.points.popleft()


# -- pure: access --------------------------------------------------------------------------------
def is_local(host: str) -> bool:
    """A loopback bind (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_ok(configured: str | None, authorization: str | None, cookies: dict[str, str]) -> bool:
    """An action is allowed: the configured token came as ``Authorization: Bearer …`` or in the
    console's cookie. Without a configured token (a local bind only) every action is allowed."""
    if not configured:
        return True
    given = []
    if authorization and authorization.startswith("Bearer "):
        given.append(authorization[len("Bearer "):].strip())
    if COOKIE in cookies:
        given.append(cookies[COOKIE])
    return any(hmac.compare_digest(g.encode(), configured.encode()) for g in given)


def parse_cookies(header: str | None) -> dict[str, str]:
    out = {}
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name] = value
    return out


# -- pure: the control topic ---------------------------------------------------------------------
def control_rows(records: list[Any]) -> list[dict[str, Any]]:
    """The control topic's records, newest first: model commands, dlq resumes and audit records
    (``sentistream dlq replay`` and console actions)."""
    rows = []
    for r in records:
        key = (r.key or b"").decode("utf-8", "replace")
        try:
            value = json.loads(r.value) if r.value else None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            value = {"raw": None if r.value is None else r.value[:200].decode("utf-8", "replace")}
        at = next((value[k] for k in ("issued_at", "at", "started") if isinstance(value.get(k), int | float)), None)
        rows.append({"where": r.where, "at": at, "key": key, "value": value})
    return rows[::-1]


# -- reading Kafka -------------------------------------------------------------------------------
class StatusFeed:
    """The status topic from its beginning; ``poll()`` folds new records into the latest per worker."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.topic = settings.status_topic
        self.consumer = kafka_clients.consumer(settings, bootstrap, group_id=None,
                                               client_id=f"{settings.client_id}-console")
        self.statuses: dict[str, WorkerStatus] = {}
        self._assigned = False

    def poll(self, timeout_ms: int = 200) -> dict[str, WorkerStatus]:
        if not self._assigned:
            parts = self.consumer.partitions_for_topic(self.topic)
            if not parts:
                return self.statuses
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
            self._assigned = True
        for records in self.consumer.poll(timeout_ms=timeout_ms, max_records=5000).values():
            for r in records:
                fold(self.statuses, r.key, r.value)
        return self.statuses

    def close(self) -> None:
        self.consumer.close()


def fold(statuses: dict[str, WorkerStatus], key: bytes | None, value: bytes | None) -> None:
    """One status record into the latest per worker (a tombstone forgets it; an unreadable one is skipped)."""
    name = (key or b"").decode("utf-8", "replace")
    if value is None:
        statuses.pop(name, None)
        return
    with contextlib.suppress(ValueError):
        statuses[name] = WorkerStatus.model_validate_json(value)


class LagReader:
    """The group's committed offsets against the input topic's end offsets."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.admin = kafka_clients.admin(settings, bootstrap)
        self.consumer = kafka_clients.consumer(settings, bootstrap, group_id=None,
                                               client_id=f"{settings.client_id}-console-lag")

    def read(self) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        """Committed, end and first offsets per partition of the input topic."""
        topic = self.settings.input_topic
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return {}, {}, {}
        ends = {tp.partition: o for tp, o in self.consumer.end_offsets(tps).items()}
        beginnings = {tp.partition: o for tp, o in self.consumer.beginning_offsets(tps).items()}
        offsets = self.admin.list_group_offsets(self.settings.group_id).get(self.settings.group_id, {})
        committed = {tp.partition: m.offset for tp, m in offsets.items()
                     if tp.topic == topic and m.offset is not None and m.offset >= 0}
        return committed, ends, beginnings

    def close(self) -> None:
        self.admin.close()
        self.consumer.close()
