"""A record that kills its worker is dead-lettered by the group (worker/quarantine.py), with real
process deaths on the real broker: a record that hangs its worker inside onnxruntime
(tests/hanging_bundle.py) under ``sentistream worker --processes 2``. At-least-once: the
supervisor kills the hung child after ``stall_timeout_s``. Exactly-once: the test SIGKILLs
whichever child is stuck, each time it holds the record. Either way the partition passes from
process to process, the record ends in the DLQ as ``crashed_worker`` after ``max_record_attempts``
deaths, every other record is classified (exactly-once: once), and the supervisor keeps running."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from sentistream.bench.scrape import scrape
from tests.cluster import ForeignRecord
from tests.hanging_bundle import HANG_WORD, build
from tests.workers import WorkerProcess

pytestmark = pytest.mark.kafka
GOOD, POISON_AT = 120, 37
ATTEMPTS = 3


def records() -> list[ForeignRecord]:
    out = [ForeignRecord(json.dumps({"id": f"g{i}", "text": f"A fine film, take {i}."}).encode(), key=b"k",
                         partition=i % 2) for i in range(GOOD)]
    poison = ForeignRecord(json.dumps({"id": "poison", "text": f"The {HANG_WORD} scene."}).encode(), partition=0)
    out.insert(POISON_AT, poison)
    return out


def hung_children(w: WorkerProcess, longer_than: float) -> list[int]:
    """Children (pids) whose loop has not turned for ``longer_than`` seconds (the supervisor's
    /metrics carries each child's monotonic last turn; one host, one monotonic clock) and that
    spin a core meanwhile: the hanging model, not a rebalance that holds the loop in poll()."""
    snapshot = scrape(w.url("/metrics"))
    now = time.monotonic()
    stuck = [int(labels["pid"]) for name, labels, value in snapshot.samples
             if name == "sentistream_loop_last_turn_monotonic_seconds" and now - value > longer_than]
    before = {pid: cpu_seconds(pid) for pid in stuck}
    time.sleep(0.5)
    return [pid for pid in stuck if cpu_seconds(pid) - before[pid] > 0.3]


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone already
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_record_that_kills_every_worker_holding_it_is_dead_lettered_and_the_group_goes_on(
        kafka, topics, tmp_path, delivery) -> None:
    s = topics(partitions=2)
    bundle = build(tmp_path / "hang-bundle")
    sent = records()
    poison_offset = sum(r.partition == 0 for r in sent[:POISON_AT])
    kafka.produce_foreign(s.input_topic, sent)
    killer = delivery == "exactly-once"  # else the supervisor's stall check ends the hung child
    args = ["--processes", "2", "--bundle", str(bundle), "--delivery", delivery,
            "--max-record-attempts", str(ATTEMPTS), "--stall-timeout-s", "60" if killer else "4"]
    w = WorkerProcess(s, args).start(tmp_path)
    kills = 0
    try:
        w.wait_ready(path="/healthz")
        deadline = time.monotonic() + 240
        dlq: list = []
        while not dlq and time.monotonic() < deadline:
            assert w.proc.poll() is None, f"the supervisor exited:\n{w.log()}"
            if killer:
                for pid in hung_children(w, longer_than=2.0):
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
            dlq = kafka.collect([s.dlq_topic], 1, timeout=1)
        out = kafka.collect([s.output_topic], 0, timeout=90,
                            until=lambda got: {f"g{i}" for i in range(GOOD)} <= {json.loads(r.value)["id"] for r in got})
        assert kafka.wait_committed_to_end(s.group_id, s.input_topic, timeout=60) == {0: 0, 1: 0}
        restarts = scrape(w.url("/metrics")).total("sentistream_worker_restarts_total")
        assert w.proc.poll() is None, w.log()
    finally:
        code = w.stop()
    assert code == 0, w.log()
    assert len(dlq) == 1, [dict(r.headers) for r in dlq]
    headers = dict(dlq[0].headers)
    assert headers["sentistream-dlq-reason"] == b"crashed_worker"
    source = (headers["sentistream-source-partition"], headers["sentistream-source-offset"])
    assert source == (b"0", str(poison_offset).encode())
    assert json.loads(dlq[0].value)["id"] == "poison"
    ids = Counter(json.loads(r.value)["id"] for r in out)
    assert set(ids) == {f"g{i}" for i in range(GOOD)}
    if delivery == "exactly-once":
        assert max(ids.values()) == 1, f"duplicates under exactly-once: {[i for i, n in ids.items() if n > 1]}"
    print(f"\n{delivery}: dead-lettered after {ATTEMPTS} deaths ({restarts:.0f} restarts, {kills} SIGKILLs by the "
          f"test); {len(out)} results for {GOOD} records")
    assert restarts == ATTEMPTS
