"""``sentistream dlq replay``: put dead letters back where they came from, once.

A replay job (engine only; no printing):

1. takes the dead-letter topic's replay lock (cli/dlq_jobs.py: one replay per topic, any host);
2. plans: reads the topic from its beginning to its end offsets at the start and picks the dead
   letters the filter selects that hold a record (not a stub) and that no earlier job handled (the
   ledger of audit records); ``--max`` keeps the oldest, a prefix of each partition; each goes to
   its ``sentistream-source-topic`` (or ``--to``), which must be on the allow-list, or, when one
   more replay would exceed ``--max-replays``, to the parking topic ``<dlq>.parked``;
3. sends them, paced at ``--rate`` records/s: key, value and the record's own headers, without the
   ``sentistream-*`` headers of the dead letter, with ``sentistream-replay-count`` one higher (a
   parked record keeps the dead letter as it is, plus ``sentistream-parked``);
4. every ``CHECKPOINT_S`` (or ``CHECKPOINT_RECORDS`` records) flushes the producer, then commits
   the replay group's offset of each partition past what the target acknowledged (with the job id
   as metadata): a killed job leaves its progress there, and the next job skips what it covers, so
   at most one window of records is sent twice;
5. writes its audit record (cli/dlq_jobs.py) when it starts and ends, and releases the lock.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError

from sentistream.cli.dlq import DeadLetter, Filter, partitions_of, read_dead_letters, reader, scan
from sentistream.cli.dlq_jobs import (
    JobRecord,
    ReplayLock,
    control_records,
    covered,
    current_holder,
    new_job_id,
    read_jobs,
    replay_group,
    who,
    with_progress,
)
from sentistream.worker import kafka_clients
from sentistream.worker.contract import HEADER_PREFIX, REPLAY_COUNT
from sentistream.worker.errors import UserError
from sentistream.worker.settings import Settings

PARKED = f"{HEADER_PREFIX}parked"
CHECKPOINT_S = 0.5
CHECKPOINT_RECORDS = 500


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What to replay, where to, how fast."""

    filter: Filter = field(default_factory=Filter)
    allowed: tuple[str, ...] = ()  # topics a replay may write to
    to: str | None = None  # instead of each record's source topic
    max_replays: int = 3
    rate: float = 100.0  # records/s
    max_records: int | None = None


def parked_topic(settings: Settings) -> str:
    return f"{settings.dlq_topic}.parked"


def allowed_topics(settings: Settings, replay_topics: str | None) -> tuple[str, ...]:
    """The allow-list: the workers' input topic, and the comma-separated ``replay_topics``."""
    extra = [t.strip() for t in (replay_topics or "").split(",") if t.strip()]
    return tuple(dict.fromkeys([settings.input_topic, *extra]))


def check_options(settings: Settings, opts: ReplayOptions) -> None:
    """UserError (one line) for options no replay may run with."""
    own = {settings.dlq_topic, parked_topic(settings), settings.control_topic}
    bad = sorted(own & set(opts.allowed))
    if bad:
        raise UserError(f"the replay allow-list names {', '.join(bad)}: a replay never writes to the dead-letter, "
                        "parking or control topic")
    if opts.to is not None and opts.to not in opts.allowed:
        raise UserError(f"--to {opts.to}: not on the replay allow-list ({', '.join(opts.allowed)}); add it with "
                        "--replay-topics or SENTISTREAM_REPLAY_TOPICS")
    if opts.rate <= 0 or opts.max_replays < 0 or (opts.max_records is not None and opts.max_records < 1):
        raise UserError("--rate must be > 0, --max-replays >= 0, --max >= 1")


# -- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Planned:
    """One dead letter to send, and where."""

    partition: int
    offset: int
    timestamp: int
    reason: str
    target: str
    parked: bool


@dataclass
class Plan:
    """What a replay would do now."""

    dlq: str
    items: list[Planned] = field(default_factory=list)  # in the order they go
    upto: dict[int, int] = field(default_factory=dict)  # the job covers what its filter selects below these
    matched: int = 0  # dead letters the filter selects
    already: int = 0  # of those, replayed or parked by an earlier job
    unreplayable: int = 0  # of those, stubs and unreadable records: no record to put back
    beyond_max: int = 0  # of those, left for a later job by --max
    refused: Counter[str] = field(default_factory=Counter)  # targets not on the allow-list
    jobs: list[JobRecord] = field(default_factory=list)  # the ledger it was planned against

    def by_reason(self) -> Counter[str]:
        return Counter(item.reason for item in self.items)

    def by_target(self) -> Counter[str]:
        return Counter(item.target for item in self.items)

    @property
    def parked(self) -> int:
        return sum(item.parked for item in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"dlq": self.dlq, "matched": self.matched, "to_send": len(self.items), "parked": self.parked,
                "already_handled": self.already, "unreplayable": self.unreplayable, "beyond_max": self.beyond_max,
                "by_reason": dict(self.by_reason().most_common()), "by_target": dict(self.by_target().most_common()),
                "refused_targets": dict(self.refused)}


def make_plan(dead_letters: Any, dlq: str, ends: dict[int, int], opts: ReplayOptions, jobs: list[JobRecord],
              parking: str) -> Plan:
    """The plan over ``dead_letters`` (the topic, start to ``ends``), given the earlier ``jobs``."""
    plan, per_partition = Plan(dlq, jobs=jobs), {p: [] for p in ends}
    for dl in dead_letters:
        if dl.offset >= ends.get(dl.partition, 0) or not opts.filter.matches(dl):
            continue  # (past the end offsets taken: for a later job)
        plan.matched += 1
        if not dl.replayable:
            plan.unreplayable += 1
        elif covered(dl, jobs):
            plan.already += 1
        else:
            item = _planned(dl, opts, parking)
            if item.target == "" or (not item.parked and item.target not in opts.allowed):
                plan.refused[item.target or "(no source topic header)"] += 1
            per_partition.setdefault(dl.partition, []).append(item)
    _keep_oldest(plan, per_partition, ends, opts.max_records)
    return plan


def _planned(dl: DeadLetter, opts: ReplayOptions, parking: str) -> Planned:
    """Where ``dl`` goes: the parking topic once it was replayed ``max_replays`` times, else ``--to``
    or its source topic ("" when it names none)."""
    if dl.replay_count + 1 > opts.max_replays:
        return Planned(dl.partition, dl.offset, dl.timestamp, dl.reason, parking, True)
    return Planned(dl.partition, dl.offset, dl.timestamp, dl.reason, opts.to or dl.source_topic or "", False)


def _keep_oldest(plan: Plan, per_partition: dict[int, list[Planned]], ends: dict[int, int],
                 most: int | None) -> None:
    """The plan's items: the oldest ``most`` (by timestamp, each partition's in offset order, so
    a prefix of each partition is kept); ``upto``: per partition, the first offset left for later."""
    merged = list(heapq.merge(*per_partition.values(), key=lambda item: item.timestamp))
    plan.items = merged if most is None else merged[:most]
    plan.beyond_max = len(merged) - len(plan.items)
    first_left: dict[int, int] = {}
    for item in reversed(merged[len(plan.items):]):
        first_left[item.partition] = item.offset
    plan.upto = {p: first_left.get(p, end) for p, end in ends.items()}


def committed_progress(settings: Settings) -> dict[int, tuple[int, str]]:
    """The replay group's committed offset and metadata (a job id) per dead-letter partition."""
    admin = kafka_clients.admin(settings, kafka_clients.resolve_bootstrap(settings))
    group = replay_group(settings)
    try:
        offsets = _retried(lambda: admin.list_group_offsets({group: None}).get(group, {}))
    finally:
        admin.close()
    return {tp.partition: (m.offset, m.metadata or "") for tp, m in offsets.items()
            if tp.topic == settings.dlq_topic and m.offset is not None and m.offset >= 0}


def _retried(call: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """``call()``, again while Kafka says to retry (a group coordinator still being elected)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ledger(settings: Settings) -> list[JobRecord]:
    """The replay jobs of the dead-letter topic, with a running job's progress from its group."""
    records = control_records(settings)
    jobs = read_jobs(records, settings.dlq_topic)
    if any(j.status == "running" for j in jobs):
        jobs = with_progress(jobs, committed_progress(settings), current_holder(settings, records))
    return jobs


def dlq_ends(settings: Settings) -> dict[int, int]:
    consumer = reader(settings)
    try:
        tps = partitions_of(consumer, settings.dlq_topic)
        return {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close(autocommit=False)


def plan_replay(settings: Settings, opts: ReplayOptions, jobs: list[JobRecord] | None = None) -> Plan:
    """What ``replay`` would send now (``--dry-run``): nothing is written."""
    check_options(settings, opts)
    jobs = ledger(settings) if jobs is None else jobs
    ends = dlq_ends(settings)
    return make_plan(read_dead_letters(settings), settings.dlq_topic, ends, opts, jobs, parked_topic(settings))


# -- sending -------------------------------------------------------------------------------------
def replay_message(dl: DeadLetter) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Key, value and headers to put back: the record's own headers (the dead letter's
    ``sentistream-*`` ones left out) and the replay count one higher."""
    own = [(k, v or b"") for k, v in dl.headers if not k.startswith(HEADER_PREFIX)]
    return dl.key, dl.value, [*own, (REPLAY_COUNT, str(dl.replay_count + 1).encode())]


def parked_message(dl: DeadLetter, max_replays: int, job: str) -> tuple[bytes | None, bytes | None,
                                                                         list[tuple[str, bytes]]]:
    """The dead letter as it is, plus why it was parked."""
    why = f"replayed {dl.replay_count} time(s), --max-replays {max_replays}; job {job}; from {dl.where}"
    return dl.key, dl.value, [*((k, v or b"") for k, v in dl.headers), (PARKED, why.encode())]


class Pace:
    """At most ``rate`` calls of :meth:`wait` per second, evenly spaced."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval, self.clock, self.sleep = 1.0 / rate, clock, sleep
        self.next = clock()

    def ahead(self) -> float:
        """Seconds the next :meth:`wait` would sleep."""
        return max(0.0, self.next - self.clock())

    def wait(self) -> None:
        now = self.clock()
        if self.next > now:
            self.sleep(self.next - now)
            now = self.next
        self.next = max(self.next, now) + self.interval


class Window:
    """Records sent since the last checkpoint: per partition, (offset, future) in order."""

    def __init__(self) -> None:
        self.sent: dict[int, list[tuple[int, Any, str]]] = {}
        self.count, self.opened = 0, time.monotonic()

    def add(self, partition: int, offset: int, future: Any, where: str) -> None:
        self.sent.setdefault(partition, []).append((offset, future, where))
        self.count += 1

    def due(self) -> bool:
        return self.count >= CHECKPOINT_RECORDS or time.monotonic() - self.opened >= CHECKPOINT_S

    def acknowledged(self) -> tuple[dict[int, int], str | None]:
        """Per partition, the offset past the last record acknowledged before any failure; and the
        first failure (one line) if there was one. Call after the producer's flush."""
        upto, failure = {}, None
        for partition, sent in self.sent.items():
            for offset, future, where in sent:
                if future.failed():
                    failure = failure or f"{where}: {type(future.exception).__name__}: {future.exception}"
                    break
                upto[partition] = offset + 1
        return upto, failure


@dataclass
class Report:
    """What a replay did."""

    job: str
    plan: Plan
    sent: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_target: Counter[str] = field(default_factory=Counter)
    parked: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "sent": self.sent, "replayed": self.sent - self.parked, "parked": self.parked,
                "by_reason": dict(self.by_reason), "by_target": dict(self.by_target), "seconds": round(self.seconds, 3),
                "records_per_s": round(self.rate, 1), "already_handled": self.plan.already,
                "unreplayable": self.plan.unreplayable, "beyond_max": self.plan.beyond_max}


class LockLost(UserError):
    pass


class Sender:
    """Sends a plan's records, checkpointing the replay group's offsets as the target acknowledges."""

    def __init__(self, settings: Settings, plan: Plan, opts: ReplayOptions, job: str, lock: ReplayLock,
                 on_progress: Callable[[int, int], None] | None) -> None:
        self.settings, self.plan, self.opts, self.job, self.lock = settings, plan, opts, job, lock
        self.on_progress = on_progress or (lambda done, total: None)
        bootstrap = kafka_clients.resolve_bootstrap(settings)
        self.consumer = kafka_clients.consumer(settings, bootstrap, group_id=replay_group(settings),
                                               client_id=f"{settings.client_id}-dlq-replay", max_poll_records=100)
        self.producer = kafka_clients.producer(settings, bootstrap, linger_ms=5, max_block_ms=10_000)
        self.window = Window()
        self.committed: dict[int, int] = {}
        self.report = Report(job, plan)

    def run(self) -> Report:
        started, wanted = time.monotonic(), {(i.partition, i.offset): i for i in self.plan.items}
        starts: dict[TopicPartition, int] = {}
        ends: dict[TopicPartition, int] = {}
        for item in self.plan.items:
            tp = TopicPartition(self.plan.dlq, item.partition)
            starts[tp] = min(starts.get(tp, item.offset), item.offset)
            ends[tp] = max(ends.get(tp, 0), item.offset + 1)
        pace = Pace(self.opts.rate)
        for record in scan(self.consumer, starts, ends):
            item = wanted.get((record.partition, record.offset))
            if item is None:
                continue
            if self.window.due() or (self.window.count and pace.ahead() > CHECKPOINT_S):
                self.checkpoint()  # (before a long wait too: a slow replay keeps little in flight)
            pace.wait()
            self._send(DeadLetter.of(record), item)
        self.checkpoint(final=self.plan.upto)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _send(self, dl: DeadLetter, item: Planned) -> None:
        key, value, headers = (parked_message(dl, self.opts.max_replays, self.job) if item.parked
                               else replay_message(dl))
        future = self.producer.send(item.target, key=key, value=value, headers=headers)
        self.window.add(item.partition, item.offset, future, f"{dl.where} to {item.target}")
        self.report.sent += 1
        self.report.parked += item.parked
        self.report.by_reason[item.reason] += 1
        self.report.by_target[item.target] += 1
        self.on_progress(self.report.sent, len(self.plan.items))

    def checkpoint(self, final: dict[int, int] | None = None) -> None:
        """Flush, then commit past what was acknowledged (``final``: the job's whole range)."""
        self.producer.flush(timeout=60)
        upto, failure = self.window.acknowledged()
        if not self.lock.valid():
            raise LockLost("the replay lock's lease ran out (the control topic could not be written for "
                           f"{self.lock.lease_s:.0f} s): stopped; run the replay again")
        if failure is None and final is not None:
            upto = final
        self._commit(upto)
        self.window = Window()
        if failure is not None:
            raise UserError(f"a target refused a record ({failure}); what was acknowledged before it is "
                            "committed; run the replay again once the cause is fixed")

    def _commit(self, upto: dict[int, int]) -> None:
        offsets = {TopicPartition(self.plan.dlq, p): OffsetAndMetadata(o, self.job, -1) for p, o in upto.items()}
        if offsets:
            self.consumer.commit(offsets)
            self.committed.update(upto)

    def close(self) -> None:
        self.producer.close(10)
        self.consumer.close(autocommit=False)


def refusal(plan: Plan) -> str | None:
    """Why the plan may not run (selected dead letters whose target is not allowed), or None."""
    if not plan.refused:
        return None
    where = ", ".join(f"{t} ({n})" for t, n in plan.refused.most_common())
    return (f"refused: selected dead letters would go to topics not on the replay allow-list: {where}; add them "
            "with --replay-topics, choose --to, or narrow the filters; nothing sent")


def _prepare_targets(settings: Settings, plan: Plan) -> None:
    """The parking topic made if the plan parks; UserError when a target is refused or missing (a
    replay creates no other topic)."""
    why = refusal(plan)
    if why is not None:
        raise UserError(why)
    admin = kafka_clients.admin(settings, kafka_clients.resolve_bootstrap(settings))
    try:
        parking = parked_topic(settings)
        if plan.parked:
            spec = kafka_clients.topic_specs(settings)[settings.dlq_topic]
            kafka_clients.ensure_topics(admin, {parking: {**spec, "num_partitions": len(plan.upto) or 1}})
        missing = sorted(set(plan.by_target()) - set(admin.list_topics()))
    finally:
        admin.close()
    if missing:
        raise UserError(f"refused: no topic {', '.join(missing)} on the cluster; nothing sent")


def _write_job(settings: Settings, record: JobRecord) -> None:
    producer = kafka_clients.producer(settings, kafka_clients.resolve_bootstrap(settings), max_block_ms=10_000)
    try:
        producer.send(settings.control_topic, key=record.key, value=record.model_dump_json().encode()).get(timeout=30)
    finally:
        producer.close(10)


def run_replay(settings: Settings, opts: ReplayOptions,
               on_progress: Callable[[int, int], None] | None = None,
               on_plan: Callable[[Plan], None] | None = None) -> Report:
    """One replay job (module docstring). ReplayBusy when another holds the lock; UserError (one
    line) for a refusal or a failure; its audit record says which."""
    check_options(settings, opts)
    kafka_clients.ensure_topics_exist(settings, kafka_clients.control_topic_spec(settings))
    job = new_job_id()
    lock = ReplayLock(settings, job)
    lock.acquire()
    try:
        jobs = _settle_interrupted(settings, job)
        plan = plan_replay(settings, opts, jobs)
        _prepare_targets(settings, plan)
        if on_plan is not None:
            on_plan(plan)
        return _run_job(settings, opts, plan, job, lock, on_progress)
    finally:
        lock.release()


def _settle_interrupted(settings: Settings, job: str) -> list[JobRecord]:
    """The ledger, with each job that was killed while running rewritten as ``interrupted``."""
    records = control_records(settings)
    jobs = read_jobs(records, settings.dlq_topic)
    before = {j.job: j.status for j in jobs}
    if "running" not in before.values():
        return jobs
    jobs = with_progress(jobs, committed_progress(settings), current_holder(settings, records))
    for j in jobs:
        if before[j.job] == "running" and j.status == "interrupted":
            _write_job(settings, j)
    return [j for j in jobs if j.job != job]


def _run_job(settings: Settings, opts: ReplayOptions, plan: Plan, job: str, lock: ReplayLock,
             on_progress: Callable[[int, int], None] | None) -> Report:
    record = JobRecord(job=job, dlq=settings.dlq_topic, who=who(), host=socket.gethostname(), pid=os.getpid(),
                       started=time.time(), filters=opts.filter.to_json(), to=opts.to, max_replays=opts.max_replays,
                       rate=opts.rate, max=opts.max_records)
    _write_job(settings, record)
    sender = Sender(settings, plan, opts, job, lock, on_progress)
    status, error = "failed", None
    try:
        report = sender.run()
        status = "done"
        return report
    except KeyboardInterrupt:
        status, error = "interrupted", "stopped by a signal"
        with contextlib.suppress(Exception):
            sender.checkpoint()  # what the target acknowledged is done: the next job skips it
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        sender.close()
        r = sender.report
        _write_job(settings, record.model_copy(update={
            "status": status, "finished": time.time(), "error": error, "upto": {str(p): o for p, o in
                                                                                 sender.committed.items()},
            "by_reason": dict(r.by_reason), "by_target": dict(r.by_target), "replayed": r.sent - r.parked,
            "parked": r.parked}))
