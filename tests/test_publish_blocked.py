"""A partition that cannot publish blocks only itself, and never stays paused once it can: a
dead-letter topic deleted under a running worker (its producer never re-creates a topic), and a
blocked partition that an eager rebalance hands straight back. Real broker, foreign producer."""

from __future__ import annotations

import json
import time

import pytest

from sentistream.worker import kafka_clients
from tests.cluster import ForeignRecord
from tests.polling import wait_for
from tests.workers import WorkerProcess

pytestmark = pytest.mark.kafka
MODES = ["at-least-once", "exactly-once"]


def good(i: int) -> ForeignRecord:
    return ForeignRecord(json.dumps({"id": f"g{i}", "text": "A warm, funny and clever film."}).encode(),
                         partition=0 if i < 100 else 1)


def ids(records) -> set[str]:
    return {json.loads(r.value)["id"] for r in records}


def topic_names(kafka) -> set[str]:
    admin = kafka.admin()
    try:
        return set(admin.list_topics())
    finally:
        admin.close()



@pytest.mark.parametrize("delivery", MODES)
def test_a_deleted_dead_letter_topic_blocks_only_its_partition_until_it_is_back(kafka, topics, tmp_path,
                                                                              delivery) -> None:
    s = topics(partitions=2)
    w = WorkerProcess(s, ["--delivery", delivery, "--publish-retry-max-s", "2"]).start(tmp_path)
    try:
        w.wait_ready()
        kafka.delete_topics([s.dlq_topic])
        wait_for(lambda: s.dlq_topic not in topic_names(kafka), 30, "the topic deleted")
        # partition 0: good, bad, good...; partition 1: good only
        kafka.produce_foreign(s.input_topic, [good(0), ForeignRecord(b"{not json", partition=0),
                                              *[good(i) for i in range(1, 5)], *[good(i) for i in range(100, 120)]])
        out = kafka.collect([s.output_topic], 0,
                            until=lambda got: {f"g{i}" for i in range(100, 120)} | {"g0"} <= ids(got))
        assert {f"g{i}" for i in range(100, 120)} | {"g0"} <= ids(out)  # the other partition flows
        wait_for(lambda: w.get("/readyz")[0] == 503, 20, "/readyz says publish_blocked")
        body = w.get("/readyz")[1]
        assert "publish_blocked" in body and s.dlq_topic in body, body
        assert s.dlq_topic not in topic_names(kafka), "the worker created the topic by publishing to it"
        kafka.create_topics(s, {s.dlq_topic: kafka_clients.topic_specs(s)[s.dlq_topic]})
        dlq = kafka.collect([s.dlq_topic], 1, timeout=60)
        out = kafka.collect([s.output_topic], 0, until=lambda got: {"g1", "g4"} <= ids(got))
        assert [dict(r.headers)["sentistream-dlq-reason"] for r in dlq] == [b"invalid_json"]
        assert {"g1", "g2", "g3", "g4"} <= ids(out)
        assert kafka.wait_committed_to_end(s.group_id, s.input_topic) == {0: 0, 1: 0}
        wait_for(lambda: w.get("/readyz")[0] == 200, 20, "/readyz ready again")
    finally:
        assert w.stop() == 0, w.log()


def test_a_blocked_partition_handed_straight_back_by_a_rebalance_resumes_once_publishing_works(
        kafka, topics, tmp_path) -> None:
    s = topics(partitions=2)
    kafka.deny_writes(s.dlq_topic)
    w = WorkerProcess(s, ["--rebalance", "eager", "--publish-retry-max-s", "2"]).start(tmp_path)
    try:
        w.wait_ready()
        kafka.produce_foreign(s.input_topic, [good(0), ForeignRecord(b"{not json", partition=0),
                                              *[good(i) for i in range(1, 5)], good(100)])
        wait_for(lambda: w.get("/readyz")[0] == 503, 30, "/readyz says publish_blocked")
        # A member of the same group that reads another topic: two eager rebalances (it joins,
        # it leaves), and the worker gets both partitions straight back each time.
        other = kafka.consumer(group_id=s.group_id, enable_auto_commit=False)
        other.subscribe([s.output_topic])
        deadline = time.monotonic() + 30
        while not other.assignment() and time.monotonic() < deadline:
            other.poll(timeout_ms=200)
        assert other.assignment(), "the second member never joined"
        other.close()
        kafka.allow_writes(s.dlq_topic)
        out = kafka.collect([s.output_topic], 0, timeout=60, until=lambda got: {"g1", "g4", "g100"} <= ids(got))
        assert {"g0", "g1", "g2", "g3", "g4", "g100"} <= ids(out)
        assert kafka.wait_committed_to_end(s.group_id, s.input_topic) == {0: 0, 1: 0}, w.log()[-6000:]
        wait_for(lambda: w.get("/readyz")[0] == 200, 30, "/readyz ready again")
        assert w.metric("sentistream_paused_partitions") == 0
    finally:
        kafka.allow_writes(s.dlq_topic)
        assert w.stop() == 0, w.log()
