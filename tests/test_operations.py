"""What operators do while records flow, on the session's broker: scale the worker count out and
in, and roll every worker (a new version), in both delivery modes at once.

Each worker is its own ``sentistream worker`` process (one pod each), in one consumer group, with
the default rebalance protocol (eager); scaling runs with cooperative rebalancing (KIP-429) too.
Workers are added as a Deployment scales out (start, wait until ready), removed as it scales in
(SIGTERM, then the process finishes its work and leaves), and rolled as a Deployment with
maxSurge 1 / maxUnavailable 0 rolls: the replacement is started and ready before the old pod
gets SIGTERM. Replacements are new pods: new names, new transactional ids.

Every acknowledged input id must come out (output or dead-letter topic, read_committed): lost 0;
duplicates 0 under exactly-once and at most :func:`tests.streams.at_least_once_bound` under
at-least-once. Each test prints its figures (``pytest -s``), the longest gap in the output
included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import KafkaCluster
from tests.streams import Figures, Keeper, Stream, finish

pytestmark = pytest.mark.kafka

MODES = ("at-least-once", "exactly-once")
PARTITIONS = 8  # 4 workers own 2 each
RATE = 60  # records per second per stream: two streams and up to 8 worker processes on 2 cores
SETTLE_S = 4.0  # records keep flowing this long between two steps


@pytest.fixture
def streams(kafka: KafkaCluster, topics, unique: str, tmp_path: Path) -> Iterator[Callable[[], list[Stream]]]:
    """``make(rebalance)``: one stream per delivery mode, each with its own topics (8
    partitions), group and one running worker ``w``, fed at RATE and flowing."""
    made: list[Stream] = []

    def make(rebalance: str = "eager") -> list[Stream]:
        for mode in MODES:
            tag = f"{'alo' if mode == 'at-least-once' else 'eos'}-{unique}"
            s = topics(partitions=PARTITIONS, group_id=f"g-{tag}", input_topic=f"in-{tag}",
                       output_topic=f"out-{tag}", dlq_topic=f"dlq-{tag}")
            made.append(Stream(kafka, s, mode, Keeper(tmp_path), f"tx-{tag}", worker_args=("--rebalance", rebalance)))
        for st in made:
            st.worker("w")
        for st in made:
            st.feed(RATE)
        for st in made:
            st.flowing()
        return made

    yield make
    for st in made:
        st.close()


def _each(batch: list[Stream], step: Callable[[Stream], None]) -> None:
    for st in batch:
        step(st)


def _stop(st: Stream, name: str, figures: dict[str, Figures], exits: dict[str, list[int]]) -> None:
    """SIGTERM one worker and wait for it; note its exit code."""
    code = st.keeper.stop(name)
    exits.setdefault(st.mode, []).append(code)
    figures[st.mode].notes.append(f"{name} exit {code}")


def _owned(st: Stream, name: str) -> int:
    with contextlib.suppress(OSError):
        return int(st.keeper.workers[name].metric("sentistream_assigned_partitions"))
    return -1


@pytest.mark.parametrize("rebalance", ["cooperative", "eager"])
def test_scale_out_to_four_and_back_to_one(streams, rebalance: str) -> None:
    """Eager: a rebalance may hand a member's partitions straight back, with kafka-python's fetch
    position kept past the records the worker dropped on revoke (it seeks back; before it did,
    records were lost). Cooperative: only moving partitions are revoked, in two rounds."""
    batch = streams(rebalance)
    scenario = f"scale 1 -> 4 -> 1 worker processes ({rebalance} rebalancing)"
    figures = {st.mode: Figures(scenario, st.mode, fault=False) for st in batch}
    exits: dict[str, list[int]] = {}
    added = ("b", "c", "d")
    for name in added:  # scale out, one pod at a time
        _each(batch, lambda st, name=name: st.worker(name))
        time.sleep(SETTLE_S)  # steady input between steps: a duration, not a condition
    for st in batch:
        owned = {name: _owned(st, name) for name in ("w", *added)}
        figures[st.mode].notes.append(f"partitions owned at 4 workers {owned}")
        assert sorted(owned.values()) == [2, 2, 2, 2], f"{st.mode}: 4 workers should own 2 partitions each: {owned}"
    for name in reversed(added):  # scale in
        for st in batch:
            _stop(st, name, figures, exits)
        time.sleep(SETTLE_S)
    for st in batch:
        assert _owned(st, "w") == PARTITIONS, f"{st.mode}: the last worker should own every partition"
    finish(scenario, batch, figures)
    assert all(code == 0 for codes in exits.values() for code in codes), f"a worker did not stop cleanly: {exits}"


def test_rolling_restart_of_every_worker(streams) -> None:
    batch = streams()
    scenario = "rolling restart of 3 workers (maxSurge 1, maxUnavailable 0)"
    figures = {st.mode: Figures(scenario, st.mode, fault=False) for st in batch}
    exits: dict[str, list[int]] = {}
    for name in ("b", "c"):
        _each(batch, lambda st, name=name: st.worker(name))
    time.sleep(SETTLE_S)
    for old in ("w", "b", "c"):
        new = f"{old}2"
        _each(batch, lambda st, new=new: st.worker(new))  # the new pod is ready first
        for st in batch:
            _stop(st, old, figures, exits)
        time.sleep(SETTLE_S)
    for st in batch:
        owned = {name: _owned(st, name) for name in ("w2", "b2", "c2")}
        assert sum(owned.values()) == PARTITIONS, f"{st.mode}: the new workers should own every partition: {owned}"
    finish(scenario, batch, figures)
    assert all(code == 0 for codes in exits.values() for code in codes), f"a worker did not stop cleanly: {exits}"
