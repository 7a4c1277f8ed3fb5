"""A worker host cut off from the network while records flow, and back.

Two worker "hosts" are Linux network namespaces, each joined by a veth pair to a bridge in this
namespace, where a broker of this module's own listens on the bridge's address (the feeder and
the monitor run here too). Cutting a host sets its veth link down: its TCP connections go silent
(no reset), as when a machine's network fails. The cut lasts longer than the group's session
timeout, so the group gives the host's partitions to the other host; then the link comes back.
The returning worker finds itself expelled (partitions lost, not committed; exactly-once: its
open transaction is aborted by the coordinator, and its producer fenced) and joins again.

Both delivery modes at once, each with its own topics, group and two workers, one per host. Every
acknowledged input id must come out; no duplicate visible to read_committed under exactly-once.

Needs root (network namespaces) and iproute2: CI has both; elsewhere the module is skipped with
that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentistream.worker.settings import Settings
from tests.cluster import KafkaCluster, own_cluster
from tests.streams import FRESH_TIMEOUT_S, Figures, Keeper, Stream, finish

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="network namespaces need root and iproute2 (`ip`)"),
]

MODES = ("at-least-once", "exactly-once")
HOSTS = (1, 2)
RATE = 60  # records per second per stream
CUT_S = 25.0  # longer than the worker's session timeout (10 s, worker/kafka_clients.py)
REJOIN_TIMEOUT_S = 120.0


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Network:
    """A bridge ``10.231.<n>.1/24`` here; host ``i`` is namespace ``ss<tag>h<i>`` at ``.1<i>``."""

    tag: str
    subnet: str

    @property
    def bridge(self) -> str:
        return f"ss{self.tag}br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def namespace(self, host: int) -> str:
        return f"ss{self.tag}h{host}"

    def address(self, host: int) -> str:
        return f"{self.subnet}.{10 + host}"

    def link(self, host: int) -> str:
        return f"ss{self.tag}v{host}"  # this side of the host's veth pair

    def where(self, host: int) -> dict:
        """How :class:`tests.workers.WorkerProcess` runs on ``host`` and reaches its metrics."""
        return {"prefix": ["ip", "netns", "exec", self.namespace(host)], "host": self.address(host)}

    def up(self) -> None:
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in HOSTS:
            ns, peer = self.namespace(host), f"ss{self.tag}p{host}"
            _ip("netns", "add", ns)
            _ip("link", "add", self.link(host), "type", "veth", "peer", "name", peer)
            _ip("link", "set", self.link(host), "master", self.bridge)
            _ip("link", "set", self.link(host), "up")
            _ip("link", "set", peer, "netns", ns)
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for host in HOSTS:
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", self.namespace(host))  # takes its end of the veth pair along
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", self.bridge)

    def cut(self, host: int) -> None:
        _ip("link", "set", self.link(host), "down")

    def restore(self, host: int) -> None:
        _ip("link", "set", self.link(host), "up")


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    pid = os.getpid()
    net = Network(tag=f"{pid % 10000}", subnet=f"10.231.{pid % 250}")
    try:
        net.up()
        yield net
    finally:
        net.down()


@pytest.fixture(scope="module")
def cluster(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One broker listening on the bridge's address, where both hosts reach it."""
    with own_cluster(tmp_path_factory.mktemp("kafka-netns"), host=network.gateway) as cluster:
        yield cluster


def _owned(w) -> int:
    with contextlib.suppress(OSError):
        return int(w.metric("sentistream_assigned_partitions"))
    return -1


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_a_worker_host_cut_off_longer_than_the_session_timeout(network: Network, cluster: KafkaCluster,
                                                                tmp_path: Path) -> None:
    batch: list[Stream] = []
    try:
        for mode in MODES:
            tag = f"{'alo' if mode == 'at-least-once' else 'eos'}-{network.tag}-{time.monotonic_ns() % 10**6}"
            s = Settings(bootstrap_servers=cluster.bootstrap, group_id=f"g-{tag}", input_topic=f"in-{tag}",
                         output_topic=f"out-{tag}", dlq_topic=f"dlq-{tag}", partitions=4, metrics_port=0,
                         home=tmp_path / "home")
            cluster.create_topics(s)
            batch.append(Stream(cluster, s, mode, Keeper(tmp_path, probe=False), f"tx-{tag}"))
        for st in batch:
            for host in HOSTS:
                st.worker(f"h{host}", **network.where(host))
        for st in batch:
            st.feed(RATE)
        for st in batch:
            st.flowing()

        scenario = f"worker host 1 cut off for {CUT_S:.0f} s (session timeout 10 s)"
        figures = {st.mode: Figures(scenario, st.mode) for st in batch}
        cut, deadline = time.time(), time.monotonic() + FRESH_TIMEOUT_S
        network.cut(1)
        try:
            for st in batch:  # the group moves host 1's partitions to host 2
                took = _wait(lambda st=st: _owned(st.keeper.workers["h2"]) == 4, CUT_S)
                figures[st.mode].notes.append(f"host 2 owned all 4 partitions {time.time() - cut:.1f} s after the cut"
                                              if took else "host 2 did not get all partitions during the cut")
                figures[st.mode].recovery_s = st.recovery(cut, deadline)
            time.sleep(max(0.0, cut + CUT_S - time.time()))  # the rest of the cut: a duration
        finally:
            network.restore(1)
        back = time.time()
        for st in batch:  # host 1 joins again and gets partitions back
            rejoined = _wait(lambda st=st: _owned(st.keeper.workers["h1"]) > 0, REJOIN_TIMEOUT_S)
            figures[st.mode].notes.append(f"host 1 owns partitions again {time.time() - back:.1f} s after the link "
                                          "came back" if rejoined else "host 1 did not rejoin")
            assert rejoined, f"{st.mode}: host 1's worker did not get partitions again within {REJOIN_TIMEOUT_S} s"
            restarts = st.keeper.workers["h1"].metric("sentistream_worker_restarts_total")
            figures[st.mode].notes.append(f"host 1's worker process restarted its child {restarts:.0f} time(s)")
        for st in batch:  # which path kafka-python took (expelled: lost; or a revoke whose commit fails)
            log = st.keeper.log_text("h1")
            figures[st.mode].notes.append(f"host 1 logged 'partitions lost' {log.count('partitions lost')}x, "
                                          f"'partitions revoked' {log.count('partitions revoked')}x, "
                                          f"gave aborted work back {log.count('current owners')}x")
        finish(scenario, batch, figures)
        for st in batch:
            assert "host 2 owned all 4" in figures[st.mode].notes[0], f"{st.mode}: {figures[st.mode].notes[0]}"
    finally:
        for st in batch:
            st.close()
