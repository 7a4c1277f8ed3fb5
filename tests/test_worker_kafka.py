"""The worker on the real broker: nothing lost, bad input dead-lettered, clean stops, metrics."""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict

import pytest
from kafka import TopicPartition

from tests.cluster import KafkaCluster
from tests.workers import WorkerProcess, json_items

pytestmark = pytest.mark.kafka


def _ids(records) -> list[str]:
    return [json.loads(r.value)["id"] for r in records]


def test_every_input_accounted_for_in_order_per_key(kafka, topics, tmp_path) -> None:
    s = topics()
    items = json_items(300, keys=6)
    bad = [(b"bad", b"\xff\xfe"), (b"bad", b"{nope"), (b"bad", b'{"id": "x"}'), (b"bad", b'{"text": ""}')]
    kafka.produce(s.input_topic, items + bad, headers=[("trace", b"t-1")])
    w = WorkerProcess(s).start(tmp_path)
    try:
        w.wait_ready()
        out = kafka.collect([s.output_topic], 300)
        dlq = kafka.collect([s.dlq_topic], 4)
        assert sorted(_ids(out)) == sorted(f"m{i}" for i in range(300))
        by_key = defaultdict(list)
        for r in sorted(out, key=lambda r: (r.partition, r.offset)):
            by_key[r.key].append(int(json.loads(r.value)["id"][1:]))
        assert all(v == sorted(v) for v in by_key.values()), "results out of order within a key"
        first = json.loads(out[0].value)
        assert first["model"]["name"] and first["label"] in first["scores"]
        assert dict(out[0].headers)["trace"] == b"t-1"
        reasons = sorted(dict(r.headers)["sentistream-dlq-reason"].decode() for r in dlq)
        assert reasons == ["empty_text", "invalid_json", "invalid_utf8", "missing_text"]
        # metrics: counters say what happened; lag drops to 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and w.metric("sentistream_consumer_lag") != 0:
            time.sleep(0.5)
        assert w.metric("sentistream_messages_consumed_total") == 304
        assert w.metric("sentistream_messages_classified_total") == 300
        assert w.metric("sentistream_messages_dead_lettered_total") == 4
        assert w.metric("sentistream_end_to_end_seconds_count") == 300
        assert w.metric("sentistream_consumer_lag") == 0
        assert w.get("/healthz")[0] == 200
    finally:
        assert w.stop() == 0, w.log()


def test_oversized_and_megabyte_records_go_to_the_dead_letter_topic(kafka, topics, tmp_path) -> None:
    s = topics()
    big = b"a" * 1_000_000
    kafka.produce(s.input_topic, [(b"k", b"x" * 70_000), (b"k", big), (b"k", b"fine text")])
    w = WorkerProcess(s).start(tmp_path)
    try:
        w.wait_ready()
        dlq = kafka.collect([s.dlq_topic], 2)
        out = kafka.collect([s.output_topic], 1)
    finally:
        assert w.stop() == 0, w.log()
    assert [dict(r.headers)["sentistream-dlq-reason"] for r in dlq] == [b"too_large", b"too_large"]
    assert [len(r.value) for r in dlq] == [70_000, 1_000_000]  # the original bytes, untouched
    assert dict(dlq[1].headers)["sentistream-source-offset"] == b"1"
    assert _ids(out) == [f"{s.input_topic}/{out[0].partition}/2"]


def test_sentence_splitting_publishes_one_result_per_sentence(kafka, topics, tmp_path) -> None:
    s = topics()
    review = json.dumps({"id": "rev1", "text": "Great cast. Dull plot! Would I watch it again? No."})
    kafka.produce(s.input_topic, [(b"rev1", review.encode())])
    w = WorkerProcess(s, ["--split-sentences"]).start(tmp_path)
    try:
        w.wait_ready()
        out = [json.loads(r.value) for r in kafka.collect([s.output_topic], 5)]
    finally:
        assert w.stop() == 0, w.log()
    reviews = [o for o in out if o["kind"] == "review"]
    assert [(o["id"], o["sentences"]) for o in reviews] == [("rev1", 4)], "one review result after its sentences"
    assert out[-1]["kind"] == "review"
    assert [(o["doc_id"], o["sentence_index"], o["text"]) for o in out if o["kind"] == "sentence"] == [
        ("rev1", 0, "Great cast."), ("rev1", 1, "Dull plot!"),
        ("rev1", 2, "Would I watch it again?"), ("rev1", 3, "No."),
    ]


def _kill_repeatedly(kafka: KafkaCluster, s, tmp_path, args, kills: int, n: int) -> WorkerProcess:
    """Start a worker, SIGKILL it once output is flowing, ``kills`` times; then let one finish."""
    kafka.produce(s.input_topic, json_items(n, keys=8))
    probe = kafka.consumer(s.output_topic, isolation_level="read_uncommitted")
    seen = 0
    for _ in range(kills):
        w = WorkerProcess(s, args).start(tmp_path)
        w.wait_ready()
        target = seen + 40
        deadline = time.monotonic() + 60
        while seen < target and time.monotonic() < deadline:
            seen += sum(len(v) for v in probe.poll(timeout_ms=50).values())
        w.kill()  # SIGKILL: no goodbye, no commit
    probe.close()
    last = WorkerProcess(s, args).start(tmp_path)
    last.wait_ready()
    return last


def test_sigkill_loses_nothing_at_least_once(kafka, topics, tmp_path) -> None:
    s = topics()
    n = 1500
    last = _kill_repeatedly(kafka, s, tmp_path, ["--batch-size", "16"], kills=3, n=n)
    try:
        expected = {f"m{i}" for i in range(n)}
        out = kafka.collect([s.output_topic], n, timeout=120,
                            until=lambda got: set(_ids(got)) >= expected)
        assert set(_ids(out)) == expected
    finally:
        assert last.stop() == 0, last.log()


def test_sigkill_exactly_once_read_committed_sees_each_id_once(kafka, topics, tmp_path) -> None:
    s = topics()
    n = 1500
    last = _kill_repeatedly(kafka, s, tmp_path, ["--batch-size", "16", "--delivery", "exactly-once"], kills=3, n=n)
    try:
        out = kafka.collect([s.output_topic], n, timeout=120)
        ids = _ids(out)
        assert len(ids) == n and set(ids) == {f"m{i}" for i in range(n)}
    finally:
        assert last.stop() == 0, last.log()


def test_two_workers_one_stops_partitions_move_nothing_lost(kafka, topics, tmp_path) -> None:
    s = topics()
    a = WorkerProcess(s).start(tmp_path, "a")
    b = WorkerProcess(s).start(tmp_path, "b")
    a.wait_ready()
    b.wait_ready()
    kafka.produce(s.input_topic, json_items(400, keys=8, prefix="x"))
    time.sleep(1)
    assert a.stop() == 0, a.log()  # its partitions move to b
    kafka.produce(s.input_topic, json_items(400, keys=8, prefix="y"))
    try:
        expected = {f"x{i}" for i in range(400)} | {f"y{i}" for i in range(400)}
        out = kafka.collect([s.output_topic], 800, timeout=120,
                            until=lambda got: set(_ids(got)) >= expected)
        assert expected <= set(_ids(out))
        assert b.metric("sentistream_assigned_partitions") == 4
    finally:
        assert b.stop() == 0, b.log()


def test_sigterm_mid_batch_publishes_commits_and_exits_cleanly(kafka, topics, tmp_path) -> None:
    s = topics(partitions=2)
    kafka.produce(s.input_topic, json_items(3000, keys=4))
    w = WorkerProcess(s, ["--batch-size", "64", "--max-wait-ms", "500"]).start(tmp_path)
    w.wait_ready()
    probe = kafka.consumer(s.output_topic, isolation_level="read_uncommitted")
    deadline = time.monotonic() + 60
    while not probe.poll(timeout_ms=50) and time.monotonic() < deadline:
        pass
    probe.close()
    assert w.stop(signal.SIGTERM) == 0, w.log()
    out = kafka.collect([s.output_topic], 1, timeout=10)
    done = defaultdict(set)
    for r in out:
        src = json.loads(r.value)["source"]
        done[src["partition"]].add(src["offset"])
    checker = kafka.consumer(group_id=s.group_id)
    for p in range(2):
        committed = checker.committed(TopicPartition(s.input_topic, p)) or 0
        # everything below the committed offset was published, and nothing beyond it
        assert done[p] == set(range(committed)), f"partition {p}: committed {committed}"
    checker.close()
    assert out, "nothing was published before the stop"


def _children(pid: int) -> list[int]:
    """Worker children of a supervisor (multiprocessing spawn), not its resource tracker."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(int(stat.parent.name))
    return out


def test_a_stop_requested_during_start_up_is_kept(kafka, topics) -> None:
    """SIGTERM can arrive while a (restarted) worker still connects; the loop must not start then."""
    import threading

    from prometheus_client import CollectorRegistry

    from sentistream.worker.loop import Worker
    from sentistream.worker.metrics import WorkerMetrics

    worker = Worker(topics(), WorkerMetrics(CollectorRegistry()))
    worker.stop()  # what the signal handler does, before run() has set anything up
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the worker ran on after a stop requested before its loop began"
    assert result == [0]


def test_supervisor_restarts_a_killed_child_and_one_scrape_sees_all(kafka, topics, tmp_path) -> None:
    import os

    s = topics()
    w = WorkerProcess(s, ["--processes", "2"]).start(tmp_path)
    try:
        w.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and w.metric("sentistream_worker_ready") < 2:
            time.sleep(0.3)
        assert w.metric("sentistream_worker_ready") == 2  # both children, one scrape
        victim = _children(w.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (victim in _children(w.proc.pid) or len(_children(w.proc.pid)) < 2):
            time.sleep(0.3)
        assert len(_children(w.proc.pid)) == 2 and victim not in _children(w.proc.pid)
        kafka.produce(s.input_topic, json_items(200, keys=8))
        out = kafka.collect([s.output_topic], 200)
        assert {f"m{i}" for i in range(200)} <= set(_ids(out))
        assert "restarting" in w.log()
    finally:
        assert w.stop() == 0, w.log()
