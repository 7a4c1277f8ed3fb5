"""``sentistream dlq stats|browse|replay``: filters and time parsing, the replay lock and ledger as
pure functions; then on the real broker: counts, filters, dry runs, refusals, a second replay
refused, a killed replay resumed, the replay rate, and the whole way round with real workers in
both delivery modes (dead-lettered as too_large, replayed once the limit is raised; records that
keep failing parked after --max-replays)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from kafka import TopicPartition

from sentistream.cli.app import main
from sentistream.cli.dlq import DeadLetter, Filter, RunningStats, counts_afresh, make_filter, parse_when, scan
from sentistream.cli.dlq_jobs import Holder, JobRecord, lock_holder, lock_key, with_progress
from sentistream.cli.dlq_replay import Pace, ReplayOptions, committed_progress, make_plan, replay_message
from sentistream.worker.errors import UserError
from tests.cluster import ForeignRecord
from tests.polling import wait_for
from tests.workers import REPO, WorkerProcess

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


# -- unit: time, filters, messages, pacing -------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("2h", NOW - timedelta(hours=2)), ("30m", NOW - timedelta(minutes=30)), ("1d", NOW - timedelta(days=1)),
    ("90s", NOW - timedelta(seconds=90)), ("1.5h", NOW - timedelta(minutes=90)), ("1w", NOW - timedelta(days=7)),
    ("2026-12-03T10:00Z", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("2026-12-03T11:00:00+01:00", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("2026-12-03", datetime(2026, 12, 3).astimezone()),  # no zone: local time
])
def test_times_are_iso_8601_or_back_from_now(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == int(expected.timestamp() * 1000)


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "12/03/2026", "", "2x"])
def test_a_bad_time_is_one_line(text: str) -> None:
    with pytest.raises(UserError, match="--until") as err:
        parse_when(text, "--until", now=NOW)
    assert "\n" not in str(err.value)


def test_bad_filter_flags_are_refused() -> None:
    with pytest.raises(UserError, match="unknown reason; one of: invalid_utf8"):
        make_filter(["too_large", "nope"])
    with pytest.raises(UserError, match="is not before"):
        make_filter(since="1h", until="2h", now=NOW)


def dl(reason: str = "too_large", offset: int = 0, partition: int = 0, value: bytes | None = b'{"id": "a1", "text": "x"}',
       key: bytes | None = b"k1", timestamp: int = NOW_MS, count: int = 0, headers=(), source: str = "in") -> DeadLetter:
    return DeadLetter("dlq", partition, offset, timestamp, key, value, [
        *headers, ("sentistream-dlq-reason", reason.encode()), ("sentistream-dlq-detail", b"why"),
        ("sentistream-source-topic", source.encode()), ("sentistream-source-partition", b"2"),
        ("sentistream-source-offset", str(40 + offset).encode()), ("sentistream-replay-count", str(count).encode()),
        ("sentistream-contract", b"1.4")])


def test_filters_select_by_reason_time_id_key_and_text() -> None:
    d = dl()
    assert Filter().matches(d)
    assert Filter(reasons=("invalid_json", "too_large")).matches(d)
    assert not Filter(reasons=("invalid_json",)).matches(d)
    assert Filter(since_ms=NOW_MS).matches(d) and not Filter(since_ms=NOW_MS + 1).matches(d)
    assert Filter(until_ms=NOW_MS + 1).matches(d) and not Filter(until_ms=NOW_MS).matches(d)  # until: exclusive
    assert Filter(ids=("a1",)).matches(d) and Filter(ids=("in/2/40",)).matches(d)  # JSON id, or derived
    assert not Filter(ids=("a2",)).matches(d)
    assert Filter(ids=("7",)).matches(dl(value=b'{"id": 7, "text": "x"}'))
    assert Filter(ids=("in/2/40",)).matches(dl(value=b"plain text"))
    assert Filter(keys=("k1", "k9")).matches(d) and not Filter(keys=("k2",)).matches(d)
    assert not Filter(keys=("k1",)).matches(dl(key=None))
    assert Filter(contains='"text": "x"').matches(d) and not Filter(contains="absent").matches(d)
    assert not Filter(contains="x").matches(dl(value=None))
    both = Filter(reasons=("too_large",), keys=("k1",), contains="text")
    assert both.matches(d) and not both.matches(dl(reason="empty_text"))
    assert Filter.from_json(both.to_json()) == both
    assert make_filter(["too_large"], "2h", None, ["a1"], [], None, now=NOW).since_ms == NOW_MS - 7_200_000


def test_a_replayed_record_keeps_its_own_headers_and_counts_one_more() -> None:
    d = dl(count=1, headers=[("trace", b"t1"), ("empty", None)])
    key, value, headers = replay_message(d)
    assert (key, value) == (d.key, d.value)
    assert headers == [("trace", b"t1"), ("empty", b""), ("sentistream-replay-count", b"2")]
    assert not dl(value=None).replayable and not dl(reason="unreadable_record").replayable
    assert not dl(headers=[("sentistream-dlq-stub", b"1")]).replayable


def test_running_stats_count_afresh_when_the_topic_no_longer_holds_what_they_counted() -> None:
    a, b = TopicPartition("dlq", 0), TopicPartition("dlq", 1)
    began, counted = {a: 0, b: 5}, {a: 10, b: 7}
    assert not counts_afresh(began, counted, {a: 0, b: 5}, {a: 12, b: 7})  # only more: read the rest
    assert counts_afresh(began, counted, {a: 3, b: 5}, {a: 12, b: 7})  # retention deleted some
    assert counts_afresh(began, counted, {a: 0, b: 0}, {a: 2, b: 0})  # recreated
    assert counts_afresh(began, counted, {a: 0}, {a: 12})  # other partitions


def test_pace_spaces_records_evenly() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pace = Pace(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(9):
        pace.wait()
    assert now[0] == pytest.approx(2.0) and len(slept) == 8  # 9 records at 4/s: 2 s


# -- unit: the lock and the ledger ---------------------------------------------------------------
class Rec:
    def __init__(self, key: bytes, value: bytes | None) -> None:
        self.key, self.value = key, value


def hold(job: str, at: float, host: str = "h1", pid: int = 10, lease: float = 30) -> Rec:
    h = Holder(job, "dlq", "u@" + host, host, "ns", pid, "100", at, at, at + lease)
    return Rec(lock_key("dlq", job), h.to_json())


def release(job: str) -> Rec:
    return Rec(lock_key("dlq", job), None)


def holder_of(records: list[Rec], now: float, host: str = "h9", alive=lambda pid: "100") -> str | None:
    h = lock_holder(records, "dlq", now, host, "ns", started=alive)
    return h and h.job


def test_the_first_hold_wins_until_released_or_expired() -> None:
    assert holder_of([], 0) is None
    assert holder_of([hold("a", 0), hold("b", 1)], 2) == "a"  # b asked while a held it
    assert holder_of([hold("a", 0), hold("b", 1), release("b")], 2) == "a"
    assert holder_of([hold("a", 0), hold("b", 1), release("a")], 2) is None  # b's hold came too early
    assert holder_of([hold("a", 0), release("a"), hold("b", 1)], 2) == "b"
    assert holder_of([hold("a", 0), hold("a", 20), hold("b", 40)], 41) == "a"  # renewed: lease until 50
    assert holder_of([hold("a", 0), hold("b", 31)], 32) == "b"  # a's lease ran out at 30
    assert holder_of([hold("a", 0)], 31) is None
    other = Rec(b"audit:dlq-replay-lock:other-dlq:z", hold("z", 0).value)
    assert holder_of([other], 1) is None  # another topic's lock


def test_a_holder_process_gone_from_this_host_loses_the_lock() -> None:
    records = [hold("a", 0, host="h1", pid=10), hold("b", 1, host="h1", pid=11)]
    assert holder_of(records, 2, host="h1", alive=lambda pid: None if pid == 10 else "100") == "b"
    assert holder_of(records, 2, host="h1", alive=lambda pid: "999" if pid == 10 else "100") == "b"  # pid reused
    assert holder_of(records, 2, host="h2", alive=lambda pid: None) == "a"  # another host cannot tell: lease


def test_jobs_cover_what_their_filter_selects_below_their_progress() -> None:
    job = JobRecord(job="j1", dlq="dlq", filters={"reasons": ["too_large"]}, upto={"0": 5}, status="done")
    assert job.covers(dl(offset=4)) and not job.covers(dl(offset=5)) and not job.covers(dl(offset=1, partition=1))
    assert not job.covers(dl(reason="empty_text", offset=1))
    running = JobRecord(job="j2", dlq="dlq", status="running")
    progressed = with_progress([job, running], {0: (7, "j2"), 1: (3, "j1")}, holder=None)
    assert progressed[0] == job and progressed[1].upto == {"0": 7} and progressed[1].status == "interrupted"


def test_a_plan_skips_what_earlier_jobs_did_parks_the_tired_and_keeps_a_prefix_per_partition() -> None:
    letters = [dl(offset=o, partition=p, timestamp=NOW_MS + 10 * o + p, count=1 if o == 3 else 0)
               for p in (0, 1) for o in range(5)]
    letters.append(dl(offset=5, partition=0, value=None))  # a stub: nothing to replay
    earlier = JobRecord(job="j0", dlq="dlq", upto={"0": 2}, status="done")
    opts = ReplayOptions(Filter(), allowed=("in",), max_replays=1, max_records=6)
    plan = make_plan(letters, "dlq", {0: 6, 1: 5}, opts, [earlier], "dlq.parked")
    assert (plan.matched, plan.already, plan.unreplayable, plan.beyond_max) == (11, 2, 1, 2)
    assert [(i.partition, i.offset) for i in plan.items] == [(1, 0), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    assert [i.target for i in plan.items if i.parked] == ["dlq.parked", "dlq.parked"]  # replayed once already
    assert plan.upto == {0: 4, 1: 4}  # the first offset each partition leaves for later
    refused = make_plan([dl(source="legacy")], "dlq", {0: 1}, ReplayOptions(allowed=("in",)), [], "p")
    assert refused.refused == {"legacy": 1}


# -- the real broker -------------------------------------------------------------------------------
@pytest.fixture
def dlq_topics(topics, kafka, unique):
    """``topics`` with this test's own control topic; that and the parking topic are deleted after."""
    made: list[str] = []

    def make(**overrides):
        s = topics(control_topic=f"ctl-{unique}", **overrides)
        made.extend([s.control_topic, f"{s.dlq_topic}.parked"])
        return s

    yield make
    admin = kafka.admin()
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    kafka.delete_topics([t for t in made if t in existing])


def flags(s) -> list[str]:
    return ["--bootstrap", s.bootstrap_servers, "--input-topic", s.input_topic, "--output-topic", s.output_topic,
            "--dlq-topic", s.dlq_topic, "--control-topic", s.control_topic, "--group", s.group_id]


def dlq(capsys, s, *args: str) -> tuple[int, str, str]:
    """``sentistream dlq ARGS`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        main(["dlq", *args, *flags(s)])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def dead_letter(reason: str, source: str, partition: int, offset: int, value: bytes | None, key: bytes | None = None,
                count: int = 0, extra: tuple = ()) -> ForeignRecord:
    """A dead letter as the worker writes it (contract 1.4), on the dead-letter partition ``partition``."""
    return ForeignRecord(value, key, [*extra, ("sentistream-dlq-reason", reason.encode()),
                                      ("sentistream-dlq-detail", f"{reason} here".encode()),
                                      ("sentistream-source-topic", source.encode()),
                                      ("sentistream-source-partition", str(partition).encode()),
                                      ("sentistream-source-offset", str(offset).encode()),
                                      ("sentistream-source-timestamp", b"1"),
                                      ("sentistream-replay-count", str(count).encode()),
                                      ("sentistream-contract", b"1.4")], partition=partition)


def topic_records(kafka, topic: str) -> list:
    """Everything on ``topic`` now (read_committed: up to the last stable offset)."""
    reader = kafka.consumer()
    try:
        tps = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        return list(scan(reader, reader.beginning_offsets(tps), reader.end_offsets(tps))) if tps else []
    finally:
        reader.close()


def value_ids(records) -> Counter:
    return Counter(json.loads(r.value)["id"] for r in records)


def test_stats_browse_and_dry_run_on_the_real_broker(kafka, dlq_topics, capsys) -> None:
    s = dlq_topics(partitions=3)
    src = s.input_topic
    kafka.produce_foreign(s.dlq_topic, [
        *[dead_letter("too_large", src, 0, i, json.dumps({"id": f"L{i}", "text": "long " * 10}).encode(),
                      key=f"k{i}".encode()) for i in range(6)],
        *[dead_letter("invalid_json", src, 1, i, b"{not json " + str(i).encode()) for i in range(4)],
        *[dead_letter("empty_text", src, 2, i, b"  ", key=b"k-e") for i in range(3)],
        dead_letter("too_large", src, 0, 6, None, extra=(("sentistream-dlq-stub", b"too large for the DLQ"),)),
        *[dead_letter("too_large", src, 0, 7 + i, json.dumps({"id": f"T{i}", "text": "tired"}).encode(), count=3)
          for i in range(2)],
    ])
    old = int((datetime.now(UTC) - timedelta(hours=3)).timestamp() * 1000)
    producer = kafka.producer()
    for i in range(2):  # written three hours ago, by their timestamps
        rec = dead_letter("model_error", "legacy", 1, 100 + i, json.dumps({"id": f"M{i}", "text": "x"}).encode())
        producer.send(s.dlq_topic, value=rec.value, headers=rec.headers, partition=1, timestamp_ms=old)
    producer.flush()
    producer.close()

    code, out, err = dlq(capsys, s, "stats", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["total"]["count"] == 18
    assert {r: v["count"] for r, v in stats["by_reason"].items()} == {"too_large": 9, "invalid_json": 4,
                                                                      "empty_text": 3, "model_error": 2}
    assert stats["by_source"] == {f"{src}[0]": 9, f"{src}[1]": 4, f"{src}[2]": 3, "legacy[1]": 2}
    assert stats["by_reason"]["model_error"]["last"] < stats["by_reason"]["too_large"]["first"]
    assert stats["replayed_before"] == 2 and stats["jobs"] == [] and stats["parked"]["records"] is None
    code, out, _ = dlq(capsys, s, "stats")
    assert code == 0 and "too_large" in out and "no replay jobs" in out
    running = RunningStats(s)  # the console's: each call reads only what is new
    assert running.current().to_json() == {k: v for k, v in stats.items() if k not in ("jobs", "parked")}
    assert running.read == 18

    def browse(*args: str) -> list[dict]:
        code, out, err = dlq(capsys, s, "browse", "--json", *args)
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines()]

    assert len(browse()) == 18
    assert {d["reason"] for d in browse("--reason", "invalid_json", "--reason", "empty_text")} == {"invalid_json",
                                                                                                  "empty_text"}
    assert {d["id"] for d in browse("--reason", "model_error")} == {"M0", "M1"}
    assert len(browse("--since", "1h")) == 16 and len(browse("--until", "1h")) == 2
    assert [d["id"] for d in browse("--id", "L3")] == ["L3"]
    assert [d["value"] for d in browse("--id", f"{src}/1/2")] == ["{not json 2"]  # the derived id
    assert len(browse("--key", "k-e")) == 3 and len(browse("--contains", "not json", "--limit", "2")) == 2
    one = browse("--id", "L0")[0]
    assert one["source"] == {"topic": src, "partition": 0, "offset": 0, "timestamp_ms": 1} and one["key"] == "k0"
    assert ["sentistream-dlq-reason", "too_large"] in one["headers"] and one["replay_count"] == 0
    code, out, _ = dlq(capsys, s, "browse", "--id", "L1")
    assert code == 0 and "too_large: too_large here" in out and '"id": "L1"' in out  # pretty

    code, out, err = dlq(capsys, s, "replay", "--dry-run", "--json", "--reason", "too_large")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["matched"], plan["to_send"], plan["parked"], plan["unreplayable"]) == (9, 8, 2, 1)
    assert plan["by_target"] == {src: 6, f"{s.dlq_topic}.parked": 2} and plan["by_reason"] == {"too_large": 8}
    code, out, _ = dlq(capsys, s, "replay", "--dry-run", "--reason", "invalid_json", "--max", "3")
    assert code == 0 and "3 would go" in out and "1 left for later by --max" in out and "nothing written" in out

    for args, needle in [(["--to", "elsewhere"], "--to elsewhere: not on the replay allow-list"),
                         (["--reason", "model_error"], "legacy (2)"),  # their source topic is not allowed
                         (["--dry-run", "--reason", "model_error"], "not on the replay allow-list: legacy (2)"),
                         (["--since", "soon"], "--since 'soon': not a time"),
                         (["--reason", "bogus"], "unknown reason")]:
        code, out, err = dlq(capsys, s, "replay", *args)
        assert code == 2, (args, out, err)
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    admin = kafka.admin()
    try:  # the dry runs and refusals wrote nothing
        assert f"{s.dlq_topic}.parked" not in admin.list_topics()
    finally:
        admin.close()
    assert committed_progress(s) == {} and topic_records(kafka, s.input_topic) == []
    code, out, err = dlq(capsys, s, "replay", "--reason", "model_error", "--replay-topics", "legacy,other", "--dry-run")
    assert code == 0 and "by target: legacy 2" in out, err

    kafka.produce_foreign(s.dlq_topic, [dead_letter("empty_text", src, 2, 10 + i, b" ") for i in range(2)])
    assert running.current().by_reason["empty_text"].count == 5 and running.read == 2  # only the new ones read
    assert running.current().total.count == 20 and running.read == 0


def replay_command(s, *args: str) -> list[str]:
    return [sys.executable, "-m", "sentistream.cli", "dlq", "replay", *args, *flags(s)]


def count_on(kafka, topic: str) -> int:
    reader = kafka.consumer(isolation_level="read_uncommitted")
    try:
        tps = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        return sum(reader.end_offsets(tps).values())
    finally:
        reader.close()



def test_one_replay_at_a_time_and_a_killed_one_resumes_without_loss(kafka, dlq_topics, capsys, tmp_path) -> None:
    n = 200
    s = dlq_topics(partitions=4)
    kafka.produce_foreign(s.dlq_topic, [
        dead_letter("invalid_json", s.input_topic, i % 4, i // 4, json.dumps({"id": f"r{i}"}).encode()[:-1],
                    key=f"k{i}".encode(), extra=(("trace", f"t{i}".encode()),)) for i in range(n)])
    log = (tmp_path / "replay.log").open("wb")
    first = subprocess.Popen(replay_command(s, "--rate", "20"), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: count_on(kafka, s.input_topic) >= 40, 60, "the first replay to send 40 records")
        code, out, err = dlq(capsys, s, "replay")
        assert code == 75, (out, err)
        assert f"a replay of {s.dlq_topic} is already running" in err and f"pid {first.pid}" in err, err
        assert len(err.strip().splitlines()) == 1
        wait_for(lambda: count_on(kafka, s.input_topic) >= 80, 60, "80 records")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    sent_before = count_on(kafka, s.input_topic)
    code, out, err = dlq(capsys, s, "replay", "--rate", "1000", "--json")  # takes over the dead process's lock
    assert code == 0, err
    report = json.loads(out)
    replayed = topic_records(kafka, s.input_topic)
    ids = Counter(r.value.decode() for r in replayed)
    assert set(ids) == {json.dumps({"id": f"r{i}"})[:-1] for i in range(n)}, "a record was lost"
    duplicates = sum(ids.values()) - n
    with capsys.disabled():
        print(f"\nkilled replay at --rate 20: {sent_before} sent before SIGKILL, {report['sent']} by the resumed job, "
              f"{duplicates} duplicate(s) (the in-flight window)")
    assert duplicates <= 20 and report["sent"] == n - sent_before + duplicates
    assert report["already_handled"] == n - report["sent"]
    one = next(r for r in replayed if r.value == json.dumps({"id": "r7"}).encode()[:-1])
    assert one.key == b"k7" and one.headers == [("trace", b"t7"), ("sentistream-replay-count", b"1")]
    code, out, _ = dlq(capsys, s, "stats", "--json")
    jobs = json.loads(out)["jobs"]
    assert [j["status"] for j in jobs] == ["done", "interrupted"], jobs
    assert jobs[1]["pid"] == first.pid and sum(jobs[1]["upto"].values()) > 0
    code, out, _ = dlq(capsys, s, "replay", "--dry-run")
    assert code == 0 and f"{n} dead letter(s)" in out and "0 would go" in out and f"{n} already replayed" in out


def test_replay_rate_on_the_local_broker(kafka, dlq_topics, capsys) -> None:
    n = 5000
    s = dlq_topics(partitions=4)
    text = json.dumps({"id": "x", "text": "A warm, funny and clever film that runs a little long."})
    kafka.produce_foreign(s.dlq_topic, [dead_letter("model_error", s.input_topic, i % 4, i // 4, text.encode())
                                        for i in range(n)])
    started = time.monotonic()
    code, out, err = dlq(capsys, s, "replay", "--rate", "1000000", "--json")
    wall = time.monotonic() - started
    assert code == 0, err
    report = json.loads(out)
    with capsys.disabled():
        print(f"\nreplay rate: {n} records ({len(text)} B values) in {report['seconds']:.2f} s sending "
              f"({report['records_per_s']:.0f} records/s), {wall:.2f} s for the whole command")
    assert report["sent"] == n and count_on(kafka, s.input_topic) == n


# -- the whole way round, with real workers ---------------------------------------------------------
LONG = "A long and winding film that goes on. " * 8  # ~300 bytes: over --max-message-bytes 200


def source_of(record) -> tuple[int, int]:
    h = dict(record.headers)
    if "sentistream-dlq-reason" in h:
        return int(h["sentistream-source-partition"]), int(h["sentistream-source-offset"])
    source = json.loads(record.value)["source"]
    return source["partition"], source["offset"]


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_dead_letters_go_back_once_and_the_tired_are_parked(kafka, dlq_topics, capsys, tmp_path, delivery) -> None:
    s = dlq_topics(partitions=2)
    small = [ForeignRecord(json.dumps({"id": f"s{i}", "text": "The acting is superb."}).encode(), f"s{i}".encode(),
                           partition=i % 2) for i in range(30)]
    large = [ForeignRecord(json.dumps({"id": f"{p}{i}", "text": f"{tag} {LONG}"}).encode(), f"{p}{i}".encode(),
                           [("trace", f"t-{p}{i}".encode())], partition=i % 2)
             for p, tag in (("L", "keep"), ("P", "park-me")) for i in range(10)]
    kafka.produce_foreign(s.input_topic, [r for pair in zip(small[:20], large, strict=True) for r in pair] + small[20:])
    low = WorkerProcess(s, ["--delivery", delivery, "--max-message-bytes", "200"]).start(tmp_path, "low")
    try:
        low.wait_ready()
        kafka.collect([s.dlq_topic], 20)
        # records that fail again come back as dead letters; one more replay and they are parked
        for _ in range(2):
            code, out, err = dlq(capsys, s, "replay", "--contains", "park-me", "--max-replays", "1", "--rate", "1000",
                                 "--json")
            assert code == 0, err
            assert len(kafka.collect([s.dlq_topic], 30, timeout=60)) == 30  # the replayed ones dead-lettered again
        second = json.loads(out)
        assert (second["replayed"], second["parked"], second["already_handled"]) == (0, 10, 10), second
        assert kafka.wait_committed_to_end(s.group_id, s.input_topic) == {0: 0, 1: 0}
        assert low.proc.poll() is None, low.log()
    finally:
        assert low.stop() == 0, low.log()
    high = WorkerProcess(s, ["--delivery", delivery]).start(tmp_path, "high")  # the limit raised (64 KiB)
    try:
        high.wait_ready()
        code, out, err = dlq(capsys, s, "replay", "--reason", "too_large", "--rate", "1000", "--json")
        assert code == 0, err
        report = json.loads(out)
        assert (report["replayed"], report["parked"], report["already_handled"]) == (10, 0, 20), report
        assert kafka.wait_committed_to_end(s.group_id, s.input_topic) == {0: 0, 1: 0}
    finally:
        assert high.stop() == 0, high.log()

    inputs, outputs = topic_records(kafka, s.input_topic), topic_records(kafka, s.output_topic)
    dead, parked = topic_records(kafka, s.dlq_topic), topic_records(kafka, f"{s.dlq_topic}.parked")
    out_ids = value_ids(outputs)
    assert set(out_ids) == {f"s{i}" for i in range(30)} | {f"L{i}" for i in range(10)}, "lost or strays"
    if delivery == "exactly-once":
        assert set(out_ids.values()) == {1}, f"duplicates: {out_ids}"
    assert sorted(value_ids(parked).elements()) == sorted(f"P{i}" for i in range(10))
    assert all(dict(r.headers)["sentistream-replay-count"] == b"1" for r in parked)
    assert len(dead) == 30 and len(inputs) == 30 + 20 + 10 + 10  # originals, P replayed once, L replayed once
    unaccounted = {(r.partition, r.offset) for r in inputs} - {source_of(r) for r in outputs + dead}
    assert not unaccounted, f"input records neither classified nor dead-lettered: {sorted(unaccounted)}"
    again = [r for r in inputs if ("sentistream-replay-count", b"1") in r.headers]
    assert len(again) == 20 and all(h[0] in ("trace", "sentistream-replay-count") for r in again for h in r.headers)
    l1 = next(r for r in outputs if json.loads(r.value)["id"] == "L1")
    assert ("trace", b"t-L1") in l1.headers
    code, out, _ = dlq(capsys, s, "stats", "--json")
    jobs = json.loads(out)["jobs"]
    assert [(j["status"], j["replayed"], j["parked"]) for j in jobs] == [("done", 10, 0), ("done", 0, 10),
                                                                         ("done", 10, 0)]
    assert all(j["who"] and j["kind"] == "dlq-replay" for j in jobs)
