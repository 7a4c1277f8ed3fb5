"""The dead-letter breaker (worker/breaker.py): a stream that turns bad stops being dead-lettered
within the window; ordinary bad records never open it; resume closes it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import namedtuple

import pytest
from kafka import TopicPartition

from sentistream.worker.breaker import Breaker
from sentistream.worker.contract import Reason, Rejection
from sentistream.worker.outgoing import Handled
from tests.cluster import ForeignRecord
from tests.workers import WorkerProcess

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")


def outcomes(pattern: str, start: int = 0) -> list[Handled]:
    """'g' a result, 'd' a dead letter, one per offset."""
    out = []
    for i, c in enumerate(pattern):
        r = Rec("in", 0, start + i, 0, None, b"x", [])
        out.append(Handled(r, [], Rejection(r, Reason.INVALID_JSON, "x") if c == "d" else None))
    return out


def test_a_stream_that_turns_bad_opens_the_breaker_after_max_consecutive_and_holds_the_rest() -> None:
    b = Breaker(max_ratio=0.5, window=100, max_consecutive=20)
    admitted, tripped = b.admit(outcomes("g" * 50 + "d" * 40))
    assert sum(h.rejection is not None for h in admitted) == 19
    assert [(t.partition, t.offset) for t in tripped] == [(TopicPartition("in", 0), 69)]
    assert b.admit(outcomes("g", start=90)) == ([], [])  # open: nothing more


def test_a_full_window_over_the_ratio_opens_it_and_scattered_bad_records_never_do() -> None:
    b = Breaker(max_ratio=0.5, window=10, max_consecutive=0)
    _, tripped = b.admit(outcomes("gd" * 50))
    assert tripped and tripped[0].offset == 9  # 5 of the last 10
    calm = Breaker(max_ratio=0.5, window=1000, max_consecutive=500)
    _, tripped = calm.admit(outcomes(("g" * 19 + "d") * 500))  # 5 % bad
    assert not tripped


def test_reset_closes_it_and_window_zero_turns_it_off() -> None:
    b = Breaker(max_ratio=0.5, window=10, max_consecutive=3)
    b.admit(outcomes("ddd"))
    assert b.reset() == [TopicPartition("in", 0)]
    assert len(b.admit(outcomes("dd", start=3))[0]) == 2
    off = Breaker(max_ratio=0.5, window=0, max_consecutive=3)
    assert not off.admit(outcomes("d" * 100))[1]


@pytest.mark.kafka
def test_on_the_real_broker_a_bad_stream_trips_it_and_dlq_resume_resumes(kafka, topics, tmp_path) -> None:
    s = topics(partitions=1)
    w = WorkerProcess(s, ["--dlq-window", "50", "--dlq-max-consecutive", "20"]).start(tmp_path)
    try:
        w.wait_ready()
        kafka.produce_foreign(s.input_topic, [ForeignRecord(b"{bad", partition=0) for _ in range(200)])
        deadline = time.monotonic() + 30
        while w.get("/readyz")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        started = time.monotonic()
        code, body = w.get("/readyz")
        assert code == 503 and "dlq_breaker" in body, body
        dlq = kafka.collect([s.dlq_topic], 0, timeout=3)
        assert len(dlq) == 19, "dead letters beyond the breaker's cap"
        assert w.metric("sentistream_dlq_breaker_open_partitions") == 1
        resume = subprocess.run([sys.executable, "-m", "sentistream.cli", "dlq", "resume", "--bootstrap",
                                 kafka.bootstrap, "--control-topic", s.control_topic],
                                capture_output=True, text=True, timeout=60, check=False)
        assert resume.returncode == 0, resume.stderr
        while w.get("/readyz")[0] != 200 and time.monotonic() - started < 30:
            time.sleep(0.2)
        reopened = kafka.collect([s.dlq_topic], 0, timeout=5)
        assert len(reopened) == 38  # resumed: the next 19, then it opens again
    finally:
        assert w.stop() == 0, w.log()
