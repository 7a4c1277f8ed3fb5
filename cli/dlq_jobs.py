"""Replay jobs on the control topic: their audit records (the ledger) and the replay lock.

Both are records on the compacted control topic under keys that start with ``audit:``, which the
workers read and leave alone (they are not model commands):

- ``audit:dlq-replay:<job>``: one per job, ``{"kind": "dlq-replay", …}`` (:class:`JobRecord`):
  who ran it, when, its filters and counts, and ``upto``: per dead-letter partition, the offset
  below which the job handled every dead letter its filter selects. Written when the job starts
  (``running``) and when it ends; the latest value counts. A killed job stays ``running``: its
  ``upto`` is then its replay group's committed offsets (committed with the job id as metadata),
  and the next job rewrites it as ``interrupted``. The ledger is what keeps a dead letter from being
  replayed twice: a job skips those that an earlier job's filter and ``upto`` cover.
- ``audit:dlq-replay-lock:<dlq topic>:<job>``: the lock that lets one replay per dead-letter
  topic run at a time, on any host. A job writes a *hold* record (host, pid, since, lease), then
  reads the topic: in log order, a hold takes the lock when nobody holds it, or the holder's lease
  had run out when the hold was written, or the holder is a process of this host that is gone.
  The first such hold wins; its job renews it every ``LEASE_S``/3 s and ends it with a tombstone;
  a loser writes a tombstone too. Leases compare the writers' clocks: keep hosts in NTP sync.

The topic has one partition, so every reader sees the same order. No printing here.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from sentistream.cli.dlq import DeadLetter, Filter
from sentistream.worker import kafka_clients
from sentistream.worker.settings import Settings

AUDIT_PREFIX = "audit:dlq-replay:"
LOCK_PREFIX = "audit:dlq-replay-lock:"
LEASE_S = 30.0


def replay_group(settings: Settings) -> str:
    """The consumer group whose committed offsets hold a running replay's progress."""
    return f"{settings.group_id}.dlq-replay"


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def new_job_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


# -- the ledger ----------------------------------------------------------------------------------
class JobRecord(BaseModel):
    """A replay job's audit record (value of ``audit:dlq-replay:<job>``)."""

    model_config = ConfigDict(extra="ignore")

    kind: str = "dlq-replay"
    job: str
    dlq: str
    who: str = ""
    host: str = ""
    pid: int = 0
    started: float = 0.0
    finished: float | None = None
    status: str = "running"  # running, done, failed, interrupted
    filters: dict[str, Any] = Field(default_factory=dict)
    to: str | None = None
    max_replays: int = 3
    rate: float = 0.0
    max: int | None = None
    upto: dict[str, int] = Field(default_factory=dict)  # dead-letter partition -> offset
    by_reason: dict[str, int] = Field(default_factory=dict)
    by_target: dict[str, int] = Field(default_factory=dict)
    replayed: int = 0
    parked: int = 0
    error: str | None = None

    @property
    def key(self) -> bytes:
        return f"{AUDIT_PREFIX}{self.job}".encode()

    _filter: Filter | None = PrivateAttr(default=None)

    @property
    def filter(self) -> Filter:
        if self._filter is None:
            self._filter = Filter.from_json(self.filters)
        return self._filter

    def covers(self, dl: DeadLetter) -> bool:
        """Whether this job handled ``dl`` (replayed or parked it)."""
        return dl.offset < self.upto.get(str(dl.partition), 0) and self.filter.matches(dl)


def read_jobs(records: Iterable[Any], dlq: str) -> list[JobRecord]:
    """The latest audit record of each replay job of ``dlq``, oldest job first. Records that are
    not such audit records (or do not parse) are left out."""
    latest: dict[bytes, JobRecord | None] = {}
    for record in records:
        key = record.key or b""
        if not key.startswith(AUDIT_PREFIX.encode()):
            continue
        latest[key] = _job(record.value)
    jobs = [j for j in latest.values() if j is not None and j.kind == "dlq-replay" and j.dlq == dlq]
    return sorted(jobs, key=lambda j: j.started)


def _job(value: bytes | None) -> JobRecord | None:
    if value is None or len(value) > 256 * 1024:
        return None
    try:
        return JobRecord.model_validate_json(value)
    except ValidationError:
        return None


def with_progress(jobs: list[JobRecord], committed: dict[int, tuple[int, str]], holder: Holder | None) -> list[JobRecord]:
    """Jobs with a ``running`` record get their ``upto`` from the replay group's committed offsets
    (those committed with their id); one that does not hold the lock is ``interrupted``."""
    out = []
    for job in jobs:
        if job.status == "running":
            upto = {str(p): offset for p, (offset, meta) in committed.items() if meta == job.job}
            status = "running" if holder is not None and holder.job == job.job else "interrupted"
            job = job.model_copy(update={"upto": upto, "status": status})
        out.append(job)
    return out


def covered(dl: DeadLetter, jobs: list[JobRecord]) -> bool:
    return any(job.covers(dl) for job in jobs)


# -- the lock ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Holder:
    """One hold record: the job that holds (or asks for) a dead-letter topic's replay lock."""

    job: str
    dlq: str
    who: str
    host: str
    pidns: str  # the pid namespace: same host name, other container
    pid: int
    pid_start: str  # the process's start time (/proc), so a reused pid is not taken for it
    since: float
    at: float  # when this record was written
    lease_until: float

    def to_json(self) -> bytes:
        return json.dumps({"kind": "dlq-replay-lock", **asdict(self)}).encode()

    def line(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return f"job {self.job} by {self.who} (host {self.host}, pid {self.pid}) since {since}"


def lock_key(dlq: str, job: str) -> bytes:
    return f"{LOCK_PREFIX}{dlq}:{job}".encode()


def _hold_of(record: Any, dlq: str) -> tuple[str, Holder | None] | None:
    """(job, hold or None for a release) when ``record`` is a lock record of ``dlq``; else None."""
    key = (record.key or b"").decode("utf-8", "replace")
    if not key.startswith(f"{LOCK_PREFIX}{dlq}:"):
        return None
    job = key[len(LOCK_PREFIX) + len(dlq) + 1:]
    if record.value is None:
        return job, None
    try:
        data = json.loads(record.value)
        data.pop("kind", None)
        return job, Holder(**data)
    except (ValueError, TypeError):
        return None


def process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux); None when it does not run (gone,
    or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else fields[19].decode()
    except FileNotFoundError:
        return None
    except (OSError, IndexError):  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def gone(holder: Holder, host: str, pidns: str, started: Callable[[int], str | None] = process_start) -> bool:
    """Whether the holder is a process of this host (and pid namespace) that no longer runs."""
    if holder.host != host or holder.pidns != pidns:
        return False
    now = started(holder.pid)
    return now is None or (holder.pid_start != "" and now != "" and now != holder.pid_start)


def lock_holder(records: Iterable[Any], dlq: str, now: float, host: str, pidns: str,
                started: Callable[[int], str | None] = process_start) -> Holder | None:
    """Who holds ``dlq``'s replay lock after ``records`` (in log order), at time ``now``."""
    holder: Holder | None = None
    for record in records:
        parsed = _hold_of(record, dlq)
        if parsed is None:
            continue
        job, hold = parsed
        if hold is None:
            holder = None if holder is not None and holder.job == job else holder
        elif holder is None or holder.job == job or hold.at > holder.lease_until or gone(holder, host, pidns, started):
            holder = hold
    if holder is not None and (now > holder.lease_until or gone(holder, host, pidns, started)):
        return None
    return holder


class ReplayBusy(Exception):
    """Another replay of the same dead-letter topic holds the lock."""

    def __init__(self, dlq: str, holder: Holder | None) -> None:
        what = holder.line() if holder else "another job (its hold record was written at the same time)"
        super().__init__(f"a replay of {dlq} is already running: {what}; try again once it is done")
        self.holder = holder


def control_records(settings: Settings) -> list[Any]:
    """Everything on the control topic now (empty when it does not exist)."""
    from sentistream.worker.control import ControlReader

    bootstrap = kafka_clients.resolve_bootstrap(settings)
    consumer = kafka_clients.control_consumer(settings, bootstrap)
    try:
        if not consumer.partitions_for_topic(settings.control_topic):
            return []
        return ControlReader(consumer, settings.control_topic).backlog()
    finally:
        consumer.close(autocommit=False)


def current_holder(settings: Settings, records: list[Any] | None = None) -> Holder | None:
    records = control_records(settings) if records is None else records
    return lock_holder(records, settings.dlq_topic, time.time(), socket.gethostname(), pid_namespace())


class ReplayLock:
    """The replay lock of ``settings.dlq_topic`` for ``job``: :meth:`acquire`, renewed in a thread
    every ``lease_s``/3 s, :meth:`release`. :meth:`valid` says whether the last renewal keeps it."""

    def __init__(self, settings: Settings, job: str, lease_s: float = LEASE_S) -> None:
        self.settings, self.job, self.lease_s = settings, job, lease_s
        self.host, self.pidns, self.pid = socket.gethostname(), pid_namespace(), os.getpid()
        self.since = time.time()
        self.lease_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = kafka_clients.producer(settings, kafka_clients.resolve_bootstrap(settings),
                                                max_block_ms=10_000)

    def _hold(self) -> Holder:
        now = time.time()
        return Holder(self.job, self.settings.dlq_topic, who(), self.host, self.pidns, self.pid,
                      process_start(self.pid) or "", self.since, now, now + self.lease_s)

    def _write(self, value: bytes | None) -> None:
        key = lock_key(self.settings.dlq_topic, self.job)
        self._producer.send(self.settings.control_topic, key=key, value=value).get(timeout=30)

    def acquire(self) -> None:
        """Hold the lock, or raise :class:`ReplayBusy` naming the holder (having written a release)."""
        hold = self._hold()
        self._write(hold.to_json())
        holder = current_holder(self.settings)
        for _ in range(3):  # our own hold not seen yet: a topic just created, metadata catching up
            if holder is not None:
                break
            time.sleep(0.5)
            holder = current_holder(self.settings)
        if holder is None or holder.job != self.job:
            with contextlib.suppress(Exception):
                self._write(None)
            self._producer.close(5)
            raise ReplayBusy(self.settings.dlq_topic, holder)
        self.lease_until = hold.lease_until
        self._thread = threading.Thread(target=self._renew, name="dlq-replay-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            hold = self._hold()
            try:
                self._write(hold.to_json())
            except Exception:  # the broker is away: valid() turns false once the lease runs out
                continue
            self.lease_until = hold.lease_until

    def valid(self, margin_s: float = 2.0) -> bool:
        return time.time() < self.lease_until - margin_s

    def release(self) -> None:
        """Stop renewing and end the lease (if the broker is away, it runs out by itself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self._write(None)
        self._producer.close(5)
