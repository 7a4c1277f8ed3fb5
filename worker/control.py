"""The control topic (``sentences.control``, compacted, one partition): model commands that every
worker of a group reads, so that all replicas (processes and hosts) move together.

Hostile input. Only operators should be able to write the topic (the ACL recipe:
docs/operations.md), and a worker still treats each record as untrusted bytes: whatever a record
holds, or whatever reading, checking or carrying it out raises, it is refused with one log line
and ``sentistream_control_refused_total{reason}`` (worker/model_ops.py holds that boundary), and
the worker reads on. A record kafka-python cannot parse (``CorruptRecordError`` inside ``poll``)
is skipped by :class:`ControlReader` and handed on as an unreadable :class:`ControlRecord`, so it is
refused like the others.

Commands. A record's value is a JSON object ``{"command": "shadow"|"promote"|"rollback",
"bundle": an absolute path or a file:// URI, "sha256": the sha256 of the bundle's manifest.json,
"issued_at": …, "issued_by": …}`` and nothing else (``allow_label_change``, written by earlier
versions, is read and ignored: a label change is allowed by the worker's own setting only). Its
key names the slot the command sets: ``shadow`` or ``serving`` (promote, rollback); a record whose
key is not its command's is refused, since compaction keeps the latest record of each key.

State. What the workers serve and shadow is a pure fold over the log, :func:`fold`:

- ``shadow X``: X runs beside the serving bundle (replacing any shadow);
- ``promote X`` and ``rollback X``: X serves, and the shadow ends (to compare a candidate with the
  new serving bundle, shadow it again).

So the state is the latest serving command, plus the latest shadow command when it comes after
it. Compaction keeps the latest record of each key and the log's order, which is all the fold
reads: a worker that starts later and finds only those two records reaches the state of the
workers that read every record. Running workers and starting ones apply the same fold
(worker/model_ops.py): a refused command is left out of it in both. A record that is refused
still takes its key's place once compacted, which is why only operators may write the topic and
why ``sentistream model`` checks a command before writing it.

The manifest holds the sha256 of every other file, so its own hash pins the whole bundle: the
worker checks it on the bytes it loads (worker/bundle.py). No Kafka client is made here
(worker/kafka_clients.py makes them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from kafka import TopicPartition
from kafka.errors import CorruptRecordError, KafkaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sentistream.worker.bundle import MANIFEST, sha256_file
from sentistream.worker.faults import one_line

log = logging.getLogger(__name__)

CommandName = Literal["shadow", "promote", "rollback"]
KEYS: dict[str, str] = {"shadow": "shadow", "promote": "serving", "rollback": "serving"}
MAX_VALUE_BYTES = 64 * 1024  # a command is a few hundred bytes; larger values are not parsed


class Refused(Exception):
    """A command that changes nothing; ``reason`` is a metric label, the message one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def bundle_path(location: str) -> Path:
    """A command's bundle location as a local path: an absolute path or a ``file://`` URI.
    ValueError for anything else (a relative path means another folder on every host)."""
    parsed = urlparse(location)  # ValueError for e.g. "file://[::1/x"
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI of another host ({parsed.netloc[:100]})")
        path = Path(unquote(parsed.path))
    elif parsed.scheme == "":
        path = Path(location)
    else:
        raise ValueError(f"only paths and file:// URIs are supported, not {parsed.scheme[:20]}://")
    if not path.is_absolute() or "\0" in str(path):
        raise ValueError(f"not an absolute path: {location[:200]!r}")
    return path


class Command(BaseModel):
    """One model command on the control topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: CommandName
    bundle: str = Field(min_length=1, max_length=4096, description="the bundle directory as every worker host "
                        "sees it: an absolute path or a file:// URI")
    sha256: str = Field(pattern=r"^[0-9A-Fa-f]{64}$", description="sha256 of the bundle's manifest.json (which "
                        "holds every file's hash); read in lower case")
    allow_label_change: bool = Field(default=False, description="ignored: records of earlier versions carry it; "
                                     "the worker's own allow_label_change setting decides")
    issued_at: float = Field(default_factory=time.time, allow_inf_nan=False)
    issued_by: str = Field(default="", max_length=255)

    @field_validator("sha256")
    @classmethod
    def _lower_case(cls, value: str) -> str:
        return value.lower()

    @field_validator("bundle")
    @classmethod
    def _a_local_path(cls, value: str) -> str:
        bundle_path(value)
        return value

    @property
    def key(self) -> str:
        return KEYS[self.command]

    @property
    def path(self) -> Path:
        return bundle_path(self.bundle)

    def encode(self) -> tuple[bytes, bytes]:
        return self.key.encode(), self.model_dump_json(exclude={"allow_label_change"}).encode()


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """A control record as read: where it was, its key and value; ``unreadable``: why the Kafka
    client could not parse it (then key and value are unknown)."""

    where: str  # topic[partition]@offset, for the logs
    key: bytes | None
    value: bytes | None
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """A command and the record it came in (or the setting it stands for, e.g. ``--shadow-bundle``)."""

    where: str
    command: Command


# Records that are not model commands. ``dlq-resume``: every running worker closes its dead-letter
# breaker (worker/breaker.py; a starting worker's is closed anyway, so replay skips it).
# ``audit:…``: a record of what an operator did (``sentistream dlq replay``), for people to read.
DLQ_RESUME_KEY = b"dlq-resume"
AUDIT_KEY_PREFIX = b"audit:"


class Resume(BaseModel):
    """``sentistream dlq resume``: close the dead-letter breaker on every worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: Literal["dlq-resume"] = "dlq-resume"
    issued_at: float = Field(default_factory=time.time)
    issued_by: str = ""

    def encode(self) -> tuple[bytes, bytes]:
        return DLQ_RESUME_KEY, self.model_dump_json().encode()


def kind(record: ControlRecord) -> Literal["model", "dlq-resume", "audit"]:
    """What a control record is, by its key."""
    if record.key == DLQ_RESUME_KEY:
        return "dlq-resume"
    if record.key is not None and record.key.startswith(AUDIT_KEY_PREFIX):
        return "audit"
    return "model"


def read_resume(record: ControlRecord) -> Resume:
    """The record's resume command; Refused when it holds none."""
    if record.value is None or len(record.value) > MAX_VALUE_BYTES:
        raise Refused("invalid_command", "not a dlq-resume command (no value, or too large)")
    try:
        return Resume.model_validate_json(record.value)
    except ValidationError as exc:
        raise Refused("invalid_command", f"not a dlq-resume command: {exc.errors(include_url=False)[0]['msg']}"
                      [:300]) from None


def read_command(record: ControlRecord) -> Received:
    """The record's command; Refused when it holds none."""
    if record.unreadable is not None:
        raise Refused("unreadable_record", f"the Kafka client cannot parse it ({record.unreadable}); skipped")
    if record.value is None:
        raise Refused("tombstone", "a tombstone (no value) is not a command")
    if len(record.value) > MAX_VALUE_BYTES:
        raise Refused("too_large", f"{len(record.value)} bytes, more than a command's {MAX_VALUE_BYTES}")
    try:
        command = Command.model_validate_json(record.value)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "command"
        raise Refused("invalid_command", f"not a model command: {where}: {first['msg']}"[:300]) from None
    if record.key != command.key.encode():
        raise Refused("wrong_key", f"a {command.command} command must have key {command.key!r}, not "
                      f"{(record.key or b'')[:40]!r}")
    return Received(record.where, command)


def manifest_digest(path: Path) -> str:
    """sha256 of the bundle's manifest.json: the bundle's identity in commands."""
    return sha256_file(Path(path) / MANIFEST)


def locate(command: Command, roots: list[Path]) -> Path:
    """The command's bundle directory with symlinks and ``..`` resolved, when it lies under one of
    ``roots`` (resolved already); Refused otherwise."""
    try:
        resolved = command.path.resolve(strict=True)
    except FileNotFoundError:
        raise Refused("unknown_bundle", f"bundle {command.bundle[:300]}: no such directory") from None
    except (OSError, RuntimeError) as exc:  # a name too long, no permission, a symlink loop
        raise Refused("unknown_bundle", f"bundle {command.bundle[:300]}: {one_line(exc)}") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise Refused("outside_roots", f"bundle {command.bundle[:300]} ({resolved}) is under none of the "
                      f"bundle roots {':'.join(map(str, roots))}")
    if not resolved.is_dir():
        raise Refused("unknown_bundle", f"bundle {command.bundle[:300]}: not a directory")
    return resolved


# -- the state: a fold over the log --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class State:
    """What the control log says: the bundle to serve (None: each worker's own ``--bundle``) and
    the one to shadow (None: none)."""

    serving: Received | None = None
    shadow: Received | None = None

    def then(self, received: Received) -> State:
        """The state after one more command."""
        if received.command.command == "shadow":
            return State(self.serving, received)
        return State(received, None)


def fold(commands: Iterable[Received], start: State | None = None) -> State:
    """The state ``commands`` lead to, in their order, from ``start`` (default: nothing set)."""
    state = start or State()
    for received in commands:
        state = state.then(received)
    return state


# -- reading ---------------------------------------------------------------------------------------
class ControlReader:
    """Reads every partition of the control topic from the beginning, with no group (each worker
    sees every command). ``consumer``: a kafka-python consumer made without a group; ``probe``: makes
    a fresh one, to find which partition holds an unreadable record when there are several."""

    def __init__(self, consumer: Any, topic: str, probe: Callable[[], Any] | None = None) -> None:
        self.consumer = consumer
        self.topic = topic
        self.probe = probe
        partitions = consumer.partitions_for_topic(topic) or {0}
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(self.partitions)
        consumer.seek_to_beginning(*self.partitions)

    def backlog(self, timeout_s: float = 10.0) -> list[ControlRecord]:
        """Everything on the topic now (what a starting worker replays)."""
        ends = self.consumer.end_offsets(self.partitions)
        got: list[ControlRecord] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(self.consumer.position(tp) < end for tp, end in ends.items()):
            got += self.poll(timeout_ms=200)
        return got

    def poll(self, timeout_ms: int = 0) -> list[ControlRecord]:
        """The records that arrived, in order. An error that is not about a record (the broker,
        an ACL) is raised: the caller tries again later."""
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms)
        except CorruptRecordError as exc:
            return [self._skip_unreadable(exc)]
        except KafkaError:
            raise
        except Exception as exc:  # not the broker's answer: kafka-python failed on a record's bytes
            return [self._skip_unreadable(exc)]
        return [ControlRecord(f"{r.topic}[{r.partition}]@{r.offset}", r.key, r.value)
                for records in polled.values() for r in records]

    def _skip_unreadable(self, exc: Exception) -> ControlRecord:
        """kafka-python leaves its position on a record it cannot parse: move past it."""
        tp, offset = self._unreadable_at(exc)
        log.error("control record %s[%d]@%d cannot be parsed (%s): skipping it", tp.topic, tp.partition, offset,
                  one_line(exc))
        self.consumer.seek(tp, offset + 1)
        return ControlRecord(f"{tp.topic}[{tp.partition}]@{offset}", None, None, unreadable=one_line(exc))

    def _unreadable_at(self, exc: Exception) -> tuple[TopicPartition, int]:
        positions = {tp: self.consumer.position(tp) for tp in self.partitions}
        ends = self.consumer.end_offsets(self.partitions)
        waiting = {tp: offset for tp, offset in positions.items() if offset < ends.get(tp, 0)}
        if len(waiting) == 1:
            return next(iter(waiting.items()))
        if waiting and self.probe is not None:
            from sentistream.worker.intake import find_unreadable

            found = find_unreadable(self.probe, waiting)
            if found is not None:
                return found
        raise exc  # no record to blame: not a record's fault


class ControlFeed:
    """A running worker's view of the control topic: ``reader`` polled by a thread of its own, so
    that the loop never waits on the topic (a poll of even an idle consumer goes through
    kafka-python's I/O thread, and on a busy machine held the loop for up to 60 ms,
    docs/performance.md). :meth:`poll` hands over what the thread has queued, in order, and raises
    what reading failed with (a failure that is not a record's: the broker, an ACL); after one the
    thread waits ``retry_s`` before it reads again."""

    def __init__(self, reader: ControlReader, retry_s: float, poll_ms: int = 500) -> None:
        self.reader = reader
        self.topic = reader.topic
        self.retry_s = retry_s
        self.poll_ms = poll_ms
        self._queue: queue.SimpleQueue[ControlRecord | Exception] = queue.SimpleQueue()
        self._failed: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sentistream-control", daemon=True)

    def start(self) -> ControlFeed:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                records = self.reader.poll(timeout_ms=self.poll_ms)
            except BaseException as exc:  # reading failed: the loop says so, and this waits before it reads again
                self._queue.put(exc if isinstance(exc, Exception) else RuntimeError(one_line(exc)))
                self._stop.wait(self.retry_s)
                continue
            for record in records:
                self._queue.put(record)

    def poll(self) -> list[ControlRecord]:
        """The records read since the last call, in order; a failure is raised after the records
        read before it."""
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        got: list[ControlRecord] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return got
            if isinstance(item, Exception):
                if not got:
                    raise item
                self._failed = item
                return got
            got.append(item)
