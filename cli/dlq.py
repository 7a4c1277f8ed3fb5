"""Dead letters as data: read the dead-letter topic, filter it, count it (``sentistream dlq``).

The engine behind ``sentistream dlq stats|browse|replay`` (the replay itself: cli/dlq_replay.py):
functions that return data and print nothing, so that a web console can call them too. The topic
is read with a group-less consumer from its beginning to the end offsets taken at the start
(``read_committed``: a dead letter of an aborted transaction is not one). Times are the dead
letter's own Kafka timestamp (when the worker wrote it), in milliseconds since the epoch.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import TopicPartition

from sentistream.worker import kafka_clients
from sentistream.worker.contract import HEADER_PREFIX, Reason, replay_count
from sentistream.worker.errors import UserError
from sentistream.worker.settings import Settings

REASON = f"{HEADER_PREFIX}dlq-reason"
DETAIL = f"{HEADER_PREFIX}dlq-detail"
STUB = f"{HEADER_PREFIX}dlq-stub"
SOURCE = f"{HEADER_PREFIX}source-"
STALL_S = 30.0  # reading gives up when no partition moves for this long (an open transaction)


# -- one dead letter ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of the dead-letter topic: where it is, when it was written, what it holds."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # ms since the epoch: when the worker dead-lettered it
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)

    @classmethod
    def of(cls, record: Any) -> DeadLetter:
        """From a kafka-python ConsumerRecord."""
        return cls(record.topic, record.partition, record.offset, record.timestamp, record.key, record.value,
                   list(record.headers or []))

    def header(self, name: str) -> str | None:
        """The last header called ``name``, as text (None: absent)."""
        for key, value in reversed(self.headers):
            if key == name:
                return (value or b"").decode("utf-8", "replace")
        return None

    @property
    def reason(self) -> str:
        return self.header(REASON) or "unknown"

    @property
    def detail(self) -> str:
        return self.header(DETAIL) or ""

    @property
    def source_topic(self) -> str | None:
        return self.header(SOURCE + "topic")

    @property
    def source_partition(self) -> int | None:
        return _int(self.header(SOURCE + "partition"))

    @property
    def source_offset(self) -> int | None:
        return _int(self.header(SOURCE + "offset"))

    @property
    def replay_count(self) -> int:
        return replay_count(self)  # the contract's own reading of sentistream-replay-count

    @property
    def derived_id(self) -> str | None:
        """``topic/partition/offset`` of the source record: its id when its value named none."""
        if self.source_topic is None:
            return None
        return f"{self.source_topic}/{self.source_partition}/{self.source_offset}"

    @property
    def json_id(self) -> str | None:
        """The ``id`` field of a JSON object value, as text (None: no such field, not JSON)."""
        value = self.value or b""
        if value.lstrip()[:1] != b"{":
            return None
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return None
        found = parsed.get("id") if isinstance(parsed, dict) else None
        return None if found is None or isinstance(found, dict | list) else str(found)

    @property
    def replayable(self) -> bool:
        """Whether the dead letter holds the record: a stub or an unreadable record holds no value."""
        return self.value is not None and self.header(STUB) is None and self.reason != Reason.UNREADABLE_RECORD

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


# -- filters -------------------------------------------------------------------------------------
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_when(text: str, flag: str = "--since", now: datetime | None = None) -> int:
    """A point in time in ms since the epoch: ISO 8601 (``2026-12-03T10:00``, local time unless
    it names a zone: ``…Z``, ``…+01:00``) or a duration back from ``now`` (``30s``, ``30m``, ``2h``,
    ``1d``, ``1w``). UserError (one line) for anything else."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.fullmatch(text.strip().lower())
    if relative:
        moment = now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
        return int(moment.timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a time; give ISO 8601 (2026-12-03T10:00, 2026-12-03T10:00Z) "
                        "or a duration back from now (30m, 2h, 1d)") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the local time zone
    return int(moment.timestamp() * 1000)


def check_reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    """The reason codes given, each one of the contract's; UserError names the first unknown one."""
    known = [r.value for r in Reason]
    for reason in reasons:
        if reason not in known:
            raise UserError(f"--reason {reason}: unknown reason; one of: {', '.join(known)}")
    return tuple(dict.fromkeys(reasons))


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead letters: all of the given conditions hold (a repeated one: any of its values)."""

    reasons: tuple[str, ...] = ()
    since_ms: int | None = None  # on the dead letter's own timestamp, inclusive
    until_ms: int | None = None  # exclusive
    ids: tuple[str, ...] = ()  # the value's "id", or the derived topic/partition/offset
    keys: tuple[str, ...] = ()  # the record key, read as UTF-8
    contains: str | None = None  # text in the value (read as UTF-8)

    def matches(self, dl: DeadLetter) -> bool:
        if self.reasons and dl.reason not in self.reasons:
            return False
        if self.since_ms is not None and dl.timestamp < self.since_ms:
            return False
        if self.until_ms is not None and dl.timestamp >= self.until_ms:
            return False
        if self.keys and (dl.key is None or dl.key.decode("utf-8", "replace") not in self.keys):
            return False
        if self.contains is not None and self.contains not in (dl.value or b"").decode("utf-8", "replace"):
            return False
        return not self.ids or dl.derived_id in self.ids or dl.json_id in self.ids

    def to_json(self) -> dict[str, Any]:
        """Only the conditions set (what an audit record keeps)."""
        out = {"reasons": list(self.reasons), "since_ms": self.since_ms, "until_ms": self.until_ms,
               "ids": list(self.ids), "keys": list(self.keys), "contains": self.contains}
        return {k: v for k, v in out.items() if v not in (None, [])}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Filter:
        return cls(tuple(data.get("reasons", ())), data.get("since_ms"), data.get("until_ms"), tuple(data.get("ids", ())),
                   tuple(data.get("keys", ())), data.get("contains"))

    def describe(self) -> str:
        """One line for people, e.g. ``reason too_large, since 2026-12-03T10:00:00Z``."""
        parts = []
        if self.reasons:
            parts.append("reason " + "|".join(self.reasons))
        if self.since_ms is not None:
            parts.append("since " + iso(self.since_ms))
        if self.until_ms is not None:
            parts.append("until " + iso(self.until_ms))
        parts += [f"id {'|'.join(self.ids)}"] if self.ids else []
        parts += [f"key {'|'.join(self.keys)}"] if self.keys else []
        parts += [f"contains {self.contains!r}"] if self.contains is not None else []
        return ", ".join(parts) or "all"


def make_filter(reasons: Iterable[str] = (), since: str | None = None, until: str | None = None,
                ids: Iterable[str] = (), keys: Iterable[str] = (), contains: str | None = None,
                now: datetime | None = None) -> Filter:
    """A :class:`Filter` from the command's flags; UserError (one line) for a bad one."""
    now = now or datetime.now(UTC)
    since_ms = parse_when(since, "--since", now) if since is not None else None
    until_ms = parse_when(until, "--until", now) if until is not None else None
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise UserError(f"--since {since} is not before --until {until}")
    return Filter(check_reasons(reasons), since_ms, until_ms, tuple(dict.fromkeys(ids)), tuple(dict.fromkeys(keys)),
                  contains)


def iso(ms: int) -> str:
    """ms since the epoch as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- reading -------------------------------------------------------------------------------------
def partitions_of(consumer: Any, topic: str) -> list[TopicPartition]:
    """The topic's partitions; UserError when the topic does not exist."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise UserError(f"no topic {topic} on the cluster (is --dlq-topic right?)")
    return [TopicPartition(topic, p) for p in sorted(found)]


def scan(consumer: Any, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int],
         stall_s: float = STALL_S) -> Iterator[Any]:
    """The records of each partition from ``starts`` up to ``ends`` (exclusive), as the consumer
    (assigned here) reads them. Stops with a UserError when no partition moves for ``stall_s``."""
    todo = {tp for tp in starts if starts[tp] < ends.get(tp, 0)}
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    consumer.pause(*(set(starts) - todo))
    moved = time.monotonic()
    while todo:
        polled = consumer.poll(timeout_ms=500)
        for tp, records in polled.items():
            yield from (r for r in records if r.offset < ends[tp])
        done = {tp for tp in todo if consumer.position(tp) >= ends[tp]}
        if done:
            consumer.pause(*done)
            todo -= done
        if polled or done:
            moved = time.monotonic()
        elif time.monotonic() - moved > stall_s:
            stuck = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(todo))
            raise UserError(f"reading {stuck} made no progress in {stall_s:.0f} s (an open transaction?)")


def reader(settings: Settings) -> Any:
    """A group-less consumer (it commits nothing) for reading whole topics."""
    return kafka_clients.consumer(settings, kafka_clients.resolve_bootstrap(settings), group_id=None,
                                  client_id=f"{settings.client_id}-dlq", enable_auto_commit=False)


def read_dead_letters(settings: Settings, flt: Filter | None = None, topic: str | None = None) -> Iterator[DeadLetter]:
    """Every dead letter (matching ``flt``) from the topic's beginning to its end at the start."""
    consumer = reader(settings)
    try:
        tps = partitions_of(consumer, topic or settings.dlq_topic)
        starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        for record in scan(consumer, starts, ends):
            dl = DeadLetter.of(record)
            if flt is None or flt.matches(dl):
                yield dl
    finally:
        consumer.close(autocommit=False)


def topic_size(settings: Settings, topic: str) -> int | None:
    """Records on ``topic`` now (end minus beginning offsets); None when it does not exist."""
    consumer = reader(settings)
    try:
        found = consumer.partitions_for_topic(topic)
        if not found:
            return None
        tps = [TopicPartition(topic, p) for p in found]
        starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        consumer.close(autocommit=False)


# -- stats ---------------------------------------------------------------------------------------
@dataclass
class Seen:
    """How many, and the first and last dead letter's timestamp (ms)."""

    count: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, ms: int) -> None:
        self.count += 1
        self.first_ms = ms if self.first_ms is None else min(self.first_ms, ms)
        self.last_ms = ms if self.last_ms is None else max(self.last_ms, ms)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "first": iso(self.first_ms) if self.first_ms is not None else None,
                "last": iso(self.last_ms) if self.last_ms is not None else None}


@dataclass
class Stats:
    """The dead-letter topic counted: by reason, by source topic and partition, by hour (UTC)."""

    topic: str
    total: Seen = field(default_factory=Seen)
    by_reason: dict[str, Seen] = field(default_factory=dict)
    by_source: Counter[str] = field(default_factory=Counter)  # "topic[partition]"
    by_hour: Counter[str] = field(default_factory=Counter)  # "2026-12-03T10" (UTC)
    replayed: int = 0  # dead letters of records that a replay had put back (replay count > 0)

    def add(self, dl: DeadLetter) -> None:
        self.total.add(dl.timestamp)
        self.by_reason.setdefault(dl.reason, Seen()).add(dl.timestamp)
        self.by_source[f"{dl.source_topic or '?'}[{'?' if dl.source_partition is None else dl.source_partition}]"] += 1
        self.by_hour[iso(dl.timestamp)[:13]] += 1
        self.replayed += int(dl.replay_count > 0)

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "total": self.total.to_json(), "replayed_before": self.replayed,
                "by_reason": {r: s.to_json() for r, s in sorted(self.by_reason.items(), key=lambda kv: -kv[1].count)},
                "by_source": dict(sorted(self.by_source.items())), "by_hour": dict(sorted(self.by_hour.items()))}


def count(dead_letters: Iterable[DeadLetter], topic: str) -> Stats:
    stats = Stats(topic)
    for dl in dead_letters:
        stats.add(dl)
    return stats


def collect_stats(settings: Settings) -> Stats:
    """The whole dead-letter topic counted (read once, start to end)."""
    return count(read_dead_letters(settings), settings.dlq_topic)


class RunningStats:
    """:func:`collect_stats`, kept up to date for a page that asks every few seconds: each call
    reads only the dead letters that came since the last one. It counts afresh when what it
    counted is no longer what the topic holds: a partition's beginning moved past where counting
    began (retention, deleted records), its end went back or its partitions changed (the topic was
    recreated), or the last read failed halfway. Thread-safe (the console serves requests in
    threads)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats: Stats | None = None
        self.began: dict[TopicPartition, int] = {}
        self.next: dict[TopicPartition, int] = {}
        self.read = 0  # dead letters read by the last call
        self._lock = threading.Lock()

    def current(self) -> Stats:
        with self._lock:
            consumer = reader(self.settings)
            try:
                tps = partitions_of(consumer, self.settings.dlq_topic)
                starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
                if self.stats is None or counts_afresh(self.began, self.next, starts, ends):
                    self.stats, self.began, self.next = Stats(self.settings.dlq_topic), dict(starts), dict(starts)
                stats, self.stats, self.read = self.stats, None, 0  # None until this read is whole
                for record in scan(consumer, self.next, ends):
                    stats.add(DeadLetter.of(record))
                    self.read += 1
                self.stats, self.next = stats, dict(ends)
                return stats
            finally:
                consumer.close(autocommit=False)


def counts_afresh(began: dict[TopicPartition, int], counted_to: dict[TopicPartition, int],
                  starts: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> bool:
    """Whether counts kept from ``began`` to ``counted_to`` no longer describe a topic that now
    holds ``starts`` to ``ends``."""
    if set(starts) != set(began):
        return True
    return any(starts[tp] > began[tp] or ends[tp] < counted_to[tp] for tp in starts)


# -- one dead letter as JSON ---------------------------------------------------------------------
def _text_or_b64(data: bytes | None) -> str | dict[str, str] | None:
    """UTF-8 as text; other bytes as ``{"base64": …}``."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def dead_letter_json(dl: DeadLetter) -> dict[str, Any]:
    """One dead letter with its headers decoded (what ``browse --json`` prints per line)."""
    return {
        "dlq": {"topic": dl.topic, "partition": dl.partition, "offset": dl.offset, "timestamp": iso(dl.timestamp),
                "timestamp_ms": dl.timestamp},
        "reason": dl.reason, "detail": dl.detail, "exception": dl.header(f"{HEADER_PREFIX}dlq-exception"),
        "source": {"topic": dl.source_topic, "partition": dl.source_partition, "offset": dl.source_offset,
                   "timestamp_ms": _int(dl.header(SOURCE + "timestamp"))},
        "id": dl.json_id or dl.derived_id, "replay_count": dl.replay_count, "stub": dl.header(STUB) is not None,
        "key": _text_or_b64(dl.key), "value": _text_or_b64(dl.value),
        "headers": [[k, _text_or_b64(v)] for k, v in dl.headers],
    }
