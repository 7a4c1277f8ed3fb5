"""Broker faults under a steady stream, on a 3-node cluster of this module's own.

Each test runs the worker as users do (``python -m sentistream.cli worker ...``), feeds its input topic at
a steady rate (acks=all), breaks something while results flow, repairs it, and reconciles: every
acknowledged input id comes out on the output or the dead-letter topic, as a read_committed
consumer sees them. The cluster replicates everything 3 times with min.insync.replicas 2 (the
offsets and transaction logs too), so one crashed node loses no acknowledged write.

The broker faults hit two streams at once, one per delivery mode (each its own topics, group and
worker): one fault, both modes, half the time. Topics are laid out by hand and groups picked by
the offsets partition they hash to, so that a killed node plays only the role the test names.

Worker processes are kept running as deploy/k8s/deployment.yaml would: one that exits is started
again, and one whose ``/healthz`` fails 3 probes 10 s apart (its loop stalled) is killed and
started again; both are counted. Each test prints its figures (``pytest -s``): inputs, results,
lost, duplicates, recovery (from the fault to the first result of an input sent after it, as the
monitoring consumer saw it arrive) and the longest gap between results.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from sentistream.broker.local import live_broker_ids
from sentistream.worker import kafka_clients
from sentistream.worker.settings import Settings
from tests.cluster import KafkaCluster, own_cluster
from tests.streams import FRESH_TIMEOUT_S, PRODUCER_DELIVERY_TIMEOUT_S, Figures, Keeper, Stream, finish

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

MODES = ("at-least-once", "exactly-once")
NODES = (1, 2, 3)
OUTAGE_S = 35.0  # full outage; the worker's producer gives a send up after delivery_timeout_ms


# -- where things sit on the cluster ----------------------------------------------------------
# The module's cluster is an own_cluster of 3 nodes (its ``local``); its topics are not deleted one
# by one: the whole cluster is wiped at the end of the module.
def _admin(cluster: KafkaCluster) -> KafkaAdminClient:
    """A short request timeout: nodes of this cluster go down on purpose."""
    return cluster.admin(request_timeout_ms=10_000)


def partitions(cluster: KafkaCluster, topic: str) -> list[dict]:
    admin = _admin(cluster)
    try:
        return admin.describe_topics([topic])[0]["partitions"]
    finally:
        admin.close()


def leader(cluster: KafkaCluster, topic: str, partition: int) -> int:
    """The partition's leader; -1 while there is none (or the topic is not known yet)."""
    return next((p["leader_id"] for p in partitions(cluster, topic) if p["partition_index"] == partition), -1)


def group_coordinator(cluster: KafkaCluster, group: str) -> int:
    """The node leading the __consumer_offsets partition the group hashes to, as Kafka places
    it: ``Utils.abs(group.hashCode()) % partitions``."""
    offsets = partitions(cluster, "__consumer_offsets")
    return leader(cluster, "__consumer_offsets", (_java_hash(group) & 0x7FFFFFFF) % len(offsets))


def name_on(cluster: KafkaCluster, internal_topic: str, wanted: Callable[[int], bool], prefix: str,
            suffix: str = "") -> str:
    """A fresh name (a group id, a transactional id) whose coordinator node satisfies ``wanted``:
    the leader of the ``internal_topic`` partition that ``name + suffix`` hashes to."""
    leaders = {p["partition_index"]: p["leader_id"] for p in partitions(cluster, internal_topic)}
    while True:
        name = f"{prefix}{uuid.uuid4().hex[:10]}"
        if wanted(leaders[(_java_hash(name + suffix) & 0x7FFFFFFF) % len(leaders)]):
            return name


def transaction_coordinators(cluster: KafkaCluster, prefix: str) -> set[int]:
    admin = _admin(cluster)
    try:
        listing = admin.list_transactions()
    finally:
        admin.close()
    return {node for node, txns in listing.items() if any(t.transactional_id.startswith(prefix) for t in txns)}


def heal(cluster: KafkaCluster, timeout: float = 120) -> None:
    """Start any node a failed test left down; wait until every node is live and every
    partition's replicas are in sync; give each partition back to its preferred leader (a
    restarted node leads nothing until then)."""
    stopped = cluster.local.stopped_nodes()
    if stopped:
        cluster.local.start_nodes(stopped, timeout=timeout)
    deadline = time.monotonic() + timeout
    while not (live_broker_ids(cluster.bootstrap) == set(NODES) and _fully_replicated(cluster)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the cluster did not heal in {timeout} s")
        time.sleep(0.5)
    admin = _admin(cluster)
    try:
        admin.elect_leaders(0, raise_errors=False)  # 0: preferred; "not needed" errors are fine
    finally:
        admin.close()


def create_led_topics(cluster: KafkaCluster, s: Settings, leaders: list[int]) -> None:
    """The stream's topics, 3 replicas each; partition p led by ``leaders[p]``."""
    assignments = {p: [n, *(m for m in NODES if m != n)] for p, n in enumerate(leaders)}
    specs = {name: {"assignments": assignments, **({"configs": spec["configs"]} if "configs" in spec else {})}
             for name, spec in kafka_clients.topic_specs(s).items()}
    cluster.create_topics(s, specs)
    deadline = time.monotonic() + 30
    while [leader(cluster, s.input_topic, p) for p in range(len(leaders))] != leaders:
        assert time.monotonic() < deadline, "the new topics did not get their leaders"
        time.sleep(0.2)


def create_internal_topics(cluster: KafkaCluster, timeout: float = 60) -> None:
    """Kafka creates __consumer_offsets on the first group coordinator lookup and
    __transaction_state on the first transactional producer: make both happen."""
    producer = cluster.producer(transactional_id="sentistream-probe")
    producer.init_transactions()
    producer.close()
    deadline = time.monotonic() + timeout
    while len(partitions(cluster, "__consumer_offsets")) == 0:
        assert time.monotonic() < deadline, "__consumer_offsets was not created"
        admin = _admin(cluster)
        with contextlib.suppress(Exception):  # coordinator not available until the topic exists
            admin.describe_groups(["sentistream-probe"])
        admin.close()
        time.sleep(0.5)


def _fully_replicated(cluster: KafkaCluster) -> bool:
    admin = _admin(cluster)
    try:
        return all(sorted(p["isr_nodes"]) == sorted(p["replica_nodes"]) and p["leader_id"] >= 0
                   for t in admin.describe_topics() for p in t["partitions"])
    except Exception:  # a node just restarted: metadata may still be refused
        return False
    finally:
        admin.close()


def _java_hash(text: str) -> int:
    """Java's String.hashCode (over UTF-16 code units), as a signed 32-bit int."""
    h = 0
    units = text.encode("utf-16-be")
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


@pytest.fixture(scope="module", autouse=True)
def quiet_kafka() -> Iterator[None]:
    """kafka-python logs every refused connection at ERROR: in these tests that is the point."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with own_cluster(tmp_path_factory.mktemp("kafka3"), nodes=len(NODES), timeout=180) as cluster:
        create_internal_topics(cluster)
        yield cluster


# -- streams on this cluster ----------------------------------------------------------------
def roles(st: Stream, node: int) -> str:
    """What ``node`` does for the stream: partitions it leads, coordinators it is."""
    s, cluster = st.settings, st.cluster
    roles = [f"{t.split('-')[0]} p{p['partition_index']} leader"
             for t in (s.input_topic, s.output_topic) for p in partitions(cluster, t) if p["leader_id"] == node]
    if group_coordinator(cluster, s.group_id) == node:
        roles.append("group coordinator")
    if node in transaction_coordinators(cluster, st.transactional_id):
        roles.append("transaction coordinator")
    return f"node {node}: " + ", ".join(roles or ["no role"])


@pytest.fixture
def streams(cluster: KafkaCluster, tmp_path: Path) -> Iterator[Callable[..., list[Stream]]]:
    """``make(modes, leaders, group_on, transactions_on)``: one stream per mode on a healed
    cluster, with topics whose partition p is led by ``leaders[p]``, a group whose coordinator
    node satisfies ``group_on`` and a transactional id whose coordinator satisfies
    ``transactions_on``; each stream's worker started and fed."""
    made: list[Stream] = []

    def anywhere(_node: int) -> bool:
        return True

    def make(modes: tuple[str, ...] = MODES, leaders: tuple[int, ...] = (1, 2, 3),
             group_on: Callable[[int], bool] = anywhere, transactions_on: Callable[[int], bool] = anywhere,
             args: tuple[str, ...] = ()) -> list[Stream]:
        heal(cluster)
        for mode in modes:
            group = name_on(cluster, "__consumer_offsets", group_on, "g-")
            transactional_id = name_on(cluster, "__transaction_state", transactions_on, "tx-", suffix="-0")
            s = Settings(bootstrap_servers=cluster.bootstrap, group_id=group, input_topic=f"in-{group}",
                         output_topic=f"out-{group}", dlq_topic=f"dlq-{group}", partitions=len(leaders),
                         metrics_port=0, home=tmp_path / "home")
            create_led_topics(cluster, s, list(leaders))
            made.append(Stream(cluster, s, mode, Keeper(tmp_path), transactional_id))
        batch = made[-len(modes):]
        for st in batch:
            st.worker("w", *args)
        for st in batch:
            st.feed()
        for st in batch:
            st.flowing()
        return batch

    yield make
    for st in made:
        st.close()




def kill_and_restart(scenario: str, batch: list[Stream], node: int) -> None:
    """SIGKILL ``node`` while both streams flow; once each has results of fresh input again,
    start the node again; reconcile."""
    figures = {st.mode: Figures(scenario, st.mode, notes=[roles(st, node)]) for st in batch}
    print("\n" + "\n".join(f"{scenario} [{m}]: killing {f.notes[0]}" for m, f in figures.items()))
    fault, deadline = time.time(), time.monotonic() + FRESH_TIMEOUT_S
    batch[0].cluster.local.stop_node(node - 1, hard=True)
    try:
        for st in batch:
            figures[st.mode].recovery_s = st.recovery(fault, deadline)
    finally:
        batch[0].cluster.local.start_node(node - 1, timeout=90)
    for f in figures.values():
        f.notes.append(f"node {node} back after {time.time() - fault:.1f} s")
    finish(scenario, batch, figures)


# -- the faults ------------------------------------------------------------------------------
def test_sigkill_the_input_partition_leader(streams) -> None:
    """Node 1 leads partition 0 of each input (and output) topic, and coordinates nothing."""
    batch = streams(leaders=(1, 2, 3), group_on=lambda n: n != 1, transactions_on=lambda n: n != 1)
    kill_and_restart("SIGKILL input p0 leader", batch, 1)


def test_sigkill_the_group_coordinator(streams) -> None:
    """Node 1 coordinates both groups, leads no partition of their topics, coordinates no
    transaction."""
    batch = streams(leaders=(2, 3, 2), group_on=lambda n: n == 1, transactions_on=lambda n: n != 1)
    kill_and_restart("SIGKILL group coordinator", batch, 1)


def test_full_outage(streams) -> None:
    """Every node SIGKILLed for OUTAGE_S (shorter than the worker producer's delivery timeout,
    which no setting shortens), then all started again."""
    batch = streams()
    scenario = f"all 3 nodes SIGKILLed for {OUTAGE_S:.0f} s"
    cluster = batch[0].cluster
    fault = time.time()
    cluster.local.stop_nodes([0, 1, 2], hard=True)
    try:
        time.sleep(OUTAGE_S)  # the outage itself: nothing to wait for
    finally:
        cluster.local.start_nodes([0, 1, 2], timeout=120)
    back, deadline = time.time(), time.monotonic() + FRESH_TIMEOUT_S
    figures = {}
    for st in batch:
        fresh = st.recovery(back, deadline)
        figures[st.mode] = Figures(scenario, st.mode, recovery_s=None if fresh is None else back + fresh - fault, notes=[
            f"cluster back after {back - fault:.1f} s, first fresh result "
            + ("never" if fresh is None else f"{fresh:.1f} s later")
            + f"; worker producer delivery timeout {PRODUCER_DELIVERY_TIMEOUT_S} s"])
    finish(scenario, batch, figures)


def test_exactly_once_two_processes_through_rebalances(streams) -> None:
    """``--processes 2``; a second worker joins midway (rebalance), then the first gets SIGTERM
    (rebalance): read_committed sees every id once."""
    (st,) = streams(modes=("exactly-once",), leaders=(1, 2, 3, 1), args=("--processes", "2"))
    scenario = "exactly-once --processes 2: a second worker joins, then the first gets SIGTERM"
    figures = Figures(scenario, st.mode)
    joined = time.time()
    st.worker("b")
    figures.notes.append(f"second worker ready after {time.time() - joined:.1f} s")
    left = time.time()
    figures.notes.append(f"first worker exited {st.keeper.stop('w')} after {time.time() - left:.1f} s")
    figures.recovery_s = st.recovery(left, time.monotonic() + FRESH_TIMEOUT_S)
    finish(scenario, [st], {st.mode: figures})
