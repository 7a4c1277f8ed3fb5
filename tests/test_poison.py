"""No record stops a partition: hostile records written by foreign clients (kcat, confluent-kafka)
on the real broker end in the output or the dead-letter topic, and the records behind them on the
same partition are classified and committed."""

from __future__ import annotations

import json
import random
import time

import pytest
from kafka import TopicPartition

from tests.cluster import ForeignRecord
from tests.workers import WorkerProcess

pytestmark = pytest.mark.kafka
MODES = ["at-least-once", "exactly-once"]


def good(i: int) -> bytes:
    return json.dumps({"id": f"g{i}", "text": "A warm, funny and clever film."}).encode()


def reason_of(record) -> str:
    return dict(record.headers)["sentistream-dlq-reason"].decode()


def result_ids(records) -> set[str]:
    return {json.loads(r.value)["id"].split("#")[0] for r in records}


@pytest.mark.parametrize("delivery", MODES)
def test_every_poison_row_is_dead_lettered_and_the_partition_moves_on(kafka, topics, tmp_path, delivery) -> None:
    s = topics(partitions=1)
    t = s.input_topic
    kafka.produce_kcat(t, 0, good(0), [])
    kafka.produce_kcat(t, 0, b'{"id": "nullhdr", "text": "A header with a null value."}', ["name"])
    kafka.produce_kcat(t, 0, b'{"id": "badkey", "text": "A header key that is not UTF-8."}', [b"\xff\xfe=v"])
    kafka.produce_foreign(t, [
        # 60 KB of control characters (6 bytes each once JSON-escaped) + a 700 KB header: a ~1 MB result
        ForeignRecord(b"\x01" * 60_000 + b" big", headers=[("h", b"x" * 700_000)], partition=0),
        ForeignRecord(json.dumps({"id": "bomb", "text": "a. " * 21_000}).encode(), partition=0),
        *[ForeignRecord(good(i), headers=[("n", None)], partition=0) for i in range(1, 6)],
    ])
    w = WorkerProcess(s, ["--split-sentences", "--delivery", delivery]).start(tmp_path)
    try:
        w.wait_ready()
        out = kafka.collect([s.output_topic], 0, until=lambda got: {"g0", "g5", "nullhdr"} <= result_ids(got))
        dlq = kafka.collect([s.dlq_topic], 3)
        assert kafka.wait_committed_to_end(s.group_id, t) == {0: 0}, "the partition's offset did not reach its end"
        assert w.proc.poll() is None, w.log()
    finally:
        assert w.stop() == 0, w.log()
    assert result_ids(out) == {"g0", "g1", "g2", "g3", "g4", "g5", "nullhdr"}
    kinds = [json.loads(r.value)["kind"] for r in out]  # split: each record also yields a review result
    assert kinds.count("sentence") == 7 and kinds.count("review") == 7, f"a duplicate or a stray result: {kinds}"
    nullhdr = next(r for r in out if json.loads(r.value)["id"].startswith("nullhdr"))
    assert dict(nullhdr.headers)["name"] == b""  # carried, as empty
    assert [(r.offset if r.topic == t else None, reason_of(r)) for r in dlq] and \
        sorted(reason_of(r) for r in dlq) == ["result_too_large", "too_many_sentences", "unreadable_record"]
    unreadable = next(r for r in dlq if reason_of(r) == "unreadable_record")
    assert dict(unreadable.headers)["sentistream-source-offset"] == b"2"


@pytest.mark.parametrize("delivery", MODES)
def test_an_unwritable_dead_letter_topic_pauses_only_that_partition_until_it_works(kafka, topics, tmp_path,
                                                                                  delivery) -> None:
    s = topics(partitions=2)
    kafka.deny_writes(s.dlq_topic)
    try:
        # partition 0: good, bad, good...; partition 1: good only
        kafka.produce_foreign(s.input_topic, [ForeignRecord(good(0), partition=0), ForeignRecord(b"{not json", partition=0),
                                              *[ForeignRecord(good(i), partition=0) for i in range(1, 5)],
                                              *[ForeignRecord(good(i), partition=1) for i in range(100, 110)]])
        w = WorkerProcess(s, ["--delivery", delivery]).start(tmp_path)
        try:
            w.wait_ready(path="/healthz")
            out = kafka.collect([s.output_topic], 0, until=lambda got: {f"g{i}" for i in range(100, 110)} <= result_ids(got))
            assert {f"g{i}" for i in range(100, 110)} <= result_ids(out)  # the other partition flows
            assert not {"g1", "g2", "g3", "g4"} & result_ids(out) or delivery == "at-least-once"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and w.get("/readyz")[0] == 200:
                time.sleep(0.3)
            code, body = w.get("/readyz")
            assert code == 503 and "publish_blocked" in body and s.dlq_topic in body, body
            assert w.metric("sentistream_publish_blocked_total") >= 1
            offsets = kafka.committed(s.group_id, s.input_topic)
            assert offsets.get(0, 0) <= 1, "committed past the stuck record"
        finally:
            kafka.allow_writes(s.dlq_topic)
        dlq = kafka.collect([s.dlq_topic], 1, timeout=60)
        out = kafka.collect([s.output_topic], 0, until=lambda got: {"g0", "g1", "g4", "g109"} <= result_ids(got))
        assert [reason_of(r) for r in dlq] == ["invalid_json"]
        assert kafka.wait_committed_to_end(s.group_id, s.input_topic) == {0: 0, 1: 0}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and w.get("/readyz")[0] != 200:
            time.sleep(0.3)
        assert w.get("/readyz")[0] == 200
    finally:
        assert w.stop() == 0, w.log()
    assert {f"g{i}" for i in [0, 1, 2, 3, 4, *range(100, 110)]} <= result_ids(out)


def hostile(rng: random.Random, n: int) -> list[ForeignRecord]:
    """n records a broker accepts and the worker cannot classify as they are."""
    kinds = [
        lambda: rng.randbytes(rng.randint(1, 300)),                                    # random bytes
        lambda: b"null", lambda: b"[1, 2]", lambda: b"42",                             # JSON non-objects
        lambda: b'{"text": ' + b"[" * 3000 + b"]" * 3000 + b"}",                       # deep JSON
        lambda: b'{"id": true, "text": "x"}', lambda: b'{"id": "x"}', lambda: b"  ",  # fields, empty
        lambda: json.dumps({"id": "b", "text": "a. " * 21_000}).encode(),              # split bomb
        lambda: b"x" * 70_000,                                                         # over the input limit
    ]
    out = []
    for i in range(n):
        headers = rng.choice([[], [("n", None)], [("k", rng.randbytes(20))], [("\u00e9\u00e8", b"")]])
        value = b"\x01" * 60_000 + b" huge" if i % 1000 == 7 else rng.choice(kinds)()
        if i % 1000 == 7:
            headers = [("big", b"x" * 700_000)]  # a result over the output topic's 1 MB
        out.append(ForeignRecord(value, headers=headers, partition=rng.randrange(4)))
    return out


def source_of(record) -> tuple[int, int]:
    """The input (partition, offset) a result or a dead letter accounts for."""
    if record.topic.endswith("dlq") or "sentistream-dlq-reason" in dict(record.headers):
        h = dict(record.headers)
        return int(h["sentistream-source-partition"]), int(h["sentistream-source-offset"])
    source = json.loads(record.value)["source"]
    return source["partition"], source["offset"]


def test_a_hostile_stream_loses_no_good_record_and_stops_no_partition(kafka, topics, tmp_path) -> None:
    n = 10_000
    s = topics(partitions=4)
    rng = random.Random(7)
    bad = hostile(rng, n)
    good_records = [ForeignRecord(good(i), partition=rng.randrange(4)) for i in range(n)]
    mixed = [r for pair in zip(bad, good_records, strict=True) for r in pair]
    w = WorkerProcess(s, ["--split-sentences"]).start(tmp_path)
    try:
        started = time.monotonic()
        kafka.produce_foreign(s.input_topic, mixed)
        for p in range(4):  # plus records kafka-python cannot parse at all
            kafka.produce_kcat(s.input_topic, p, b"unreadable", [b"\xff=v"])
        reader = kafka.consumer(isolation_level="read_uncommitted")
        ends = reader.end_offsets([TopicPartition(s.input_topic, p) for p in range(4)])
        reader.close()
        every_input = {(tp.partition, o) for tp, end in ends.items() for o in range(end)}
        w.wait_ready()
        got = kafka.collect([s.output_topic, s.dlq_topic], 0, timeout=600,
                            until=lambda got: every_input <= {source_of(r) for r in got})
        elapsed = time.monotonic() - started
        assert kafka.wait_committed_to_end(s.group_id, s.input_topic, timeout=120) == {0: 0, 1: 0, 2: 0, 3: 0}
        assert w.proc.poll() is None, w.log()
    finally:
        assert w.stop() == 0, w.log()
    out = [r for r in got if r.topic == s.output_topic]
    dlq = [r for r in got if r.topic == s.dlq_topic]
    missing = every_input - {source_of(r) for r in got}
    assert not missing, f"{len(missing)} input records neither classified nor dead-lettered"
    assert {f"g{i}" for i in range(n)} <= result_ids(out)
    reasons: dict[str, int] = {}
    for r in dlq:
        reasons[reason_of(r)] = reasons.get(reason_of(r), 0) + 1
    print(f"\nhostile stream: {n} bad + {n} good + 4 unreadable records, all accounted for in {elapsed:.0f} s; "
          f"{len(out)} results, {len(dlq)} dead letters {dict(sorted(reasons.items()))}")
    assert reasons["unreadable_record"] == 4 and reasons["result_too_large"] == n // 1000
    assert len(dlq) >= n - 20  # a few random byte strings are valid UTF-8 text, and are classified
