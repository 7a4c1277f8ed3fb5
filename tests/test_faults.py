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
import json
import logging
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient

from sentistream.cli.local_kafka import LocalCluster, live_broker_ids
from sentistream.worker import kafka_clients
from sentistream.worker.settings import Settings, default_home
from tests.cluster import KafkaCluster
from tests.workers import WorkerProcess

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

MODES = ("at-least-once", "exactly-once")
NODES = (1, 2, 3)
RATE = 150  # input records per second, per stream
WARMUP_RESULTS = 300  # results seen before the fault: the pipeline is flowing
TAIL_S = 3.0  # input keeps coming this long after the repair
OUTAGE_S = 35.0  # full outage; the worker's producer gives a send up after delivery_timeout_ms
PRODUCER_DELIVERY_TIMEOUT_S = 120  # kafka-python's default: worker/kafka_clients.py sets none, no flag does
POLL_BATCHES = 8  # worker/loop.py: one poll takes up to this many batches of records
LIVENESS_PERIOD_S, LIVENESS_FAILURES = 10.0, 3  # deploy/k8s/deployment.yaml's livenessProbe
FRESH_TIMEOUT_S = 180  # a stalled worker: stall_timeout_s (60 s) + the probes (30 s) + a restart
KAFKA_CHATTER = re.compile(r" kafka\.[\w.]+: ")
TEXTS = ["The acting is superb.", "A dull, lifeless film.", "It is a movie.",
         "Not bad at all, though the ending drags.", "An instant classic!"]


# -- the cluster -----------------------------------------------------------------------------
class FaultCluster(KafkaCluster):
    """The module's 3-node cluster: :class:`KafkaCluster`'s clients and helpers, plus its nodes
    (``local``) and where partitions and coordinators sit. Its topics are not deleted one by one:
    the whole cluster is wiped at the end of the module."""

    def __init__(self, local: LocalCluster, bootstrap: str) -> None:
        super().__init__(bootstrap)
        self.local = local

    def admin(self, **config: Any) -> KafkaAdminClient:
        """A short request timeout: nodes of this cluster go down on purpose."""
        return super().admin(**{"request_timeout_ms": 10_000, **config})

    def partitions(self, topic: str) -> list[dict]:
        admin = self.admin()
        try:
            return admin.describe_topics([topic])[0]["partitions"]
        finally:
            admin.close()

    def leader(self, topic: str, partition: int) -> int:
        """The partition's leader; -1 while there is none (or the topic is not known yet)."""
        return next((p["leader_id"] for p in self.partitions(topic) if p["partition_index"] == partition), -1)

    def group_coordinator(self, group: str) -> int:
        """The node leading the __consumer_offsets partition the group hashes to, as Kafka
        places it: ``Utils.abs(group.hashCode()) % partitions``."""
        offsets = self.partitions("__consumer_offsets")
        return self.leader("__consumer_offsets", (_java_hash(group) & 0x7FFFFFFF) % len(offsets))

    def name_on(self, internal_topic: str, wanted: Callable[[int], bool], prefix: str, suffix: str = "") -> str:
        """A fresh name (a group id, a transactional id) whose coordinator node satisfies
        ``wanted``: the leader of the ``internal_topic`` partition that ``name + suffix`` hashes to."""
        leaders = {p["partition_index"]: p["leader_id"] for p in self.partitions(internal_topic)}
        while True:
            name = f"{prefix}{uuid.uuid4().hex[:10]}"
            if wanted(leaders[(_java_hash(name + suffix) & 0x7FFFFFFF) % len(leaders)]):
                return name

    def transaction_coordinators(self, prefix: str) -> set[int]:
        admin = self.admin()
        try:
            listing = admin.list_transactions()
        finally:
            admin.close()
        return {node for node, txns in listing.items() if any(t.transactional_id.startswith(prefix) for t in txns)}

    def heal(self, timeout: float = 120) -> None:
        """Start any node a failed test left down; wait until every node is live and every
        partition's replicas are in sync; give each partition back to its preferred leader (a
        restarted node leads nothing until then)."""
        stopped = self.local.stopped_nodes()
        if stopped:
            self.local.start_nodes(stopped, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not (live_broker_ids(self.bootstrap) == set(NODES) and self._fully_replicated()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not heal in {timeout} s")
            time.sleep(0.5)
        admin = self.admin()
        try:
            admin.elect_leaders(0, raise_errors=False)  # 0: preferred; "not needed" errors are fine
        finally:
            admin.close()

    def create_led_topics(self, s: Settings, leaders: list[int]) -> None:
        """The stream's topics, 3 replicas each; partition p led by ``leaders[p]``."""
        assignments = {p: [n, *(m for m in NODES if m != n)] for p, n in enumerate(leaders)}
        specs = {name: {"assignments": assignments, **({"configs": spec["configs"]} if "configs" in spec else {})}
                 for name, spec in kafka_clients.topic_specs(s).items()}
        self.create_topics(s, specs)
        deadline = time.monotonic() + 30
        while [self.leader(s.input_topic, p) for p in range(len(leaders))] != leaders:
            assert time.monotonic() < deadline, "the new topics did not get their leaders"
            time.sleep(0.2)

    def create_internal_topics(self, timeout: float = 60) -> None:
        """Kafka creates __consumer_offsets on the first group coordinator lookup and
        __transaction_state on the first transactional producer: make both happen."""
        producer = self.producer(transactional_id="sentistream-probe")
        producer.init_transactions()
        producer.close()
        deadline = time.monotonic() + timeout
        while len(self.partitions("__consumer_offsets")) == 0:
            assert time.monotonic() < deadline, "__consumer_offsets was not created"
            admin = self.admin()
            with contextlib.suppress(Exception):  # coordinator not available until the topic exists
                admin.describe_groups(["sentistream-probe"])
            admin.close()
            time.sleep(0.5)

    def _fully_replicated(self) -> bool:
        admin = self.admin()
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
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    local = LocalCluster(home=default_home(), data_dir=tmp_path_factory.mktemp("kafka3"))
    state = local.up(nodes=3, port=0, timeout=180)
    try:
        cluster = FaultCluster(local, state.bootstrap)
        cluster.create_internal_topics()
        yield cluster
    finally:
        local.down(wipe=True)


# -- the stream around the worker ------------------------------------------------------------
class Feeder:
    """Sends ``{"id", "text"}`` records at a steady rate (acks=all, 12 keys) until stopped;
    remembers when each id was sent and which ones the cluster acknowledged."""

    def __init__(self, cluster: KafkaCluster, topic: str, rate: int = RATE) -> None:
        self.topic, self.rate = topic, rate
        self.producer = cluster.producer(linger_ms=5)
        self.sent_at: dict[str, float] = {}
        self.acked: set[str] = set()
        self.failed: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending and wait for the acknowledgements of what was sent."""
        self._stop.set()
        self._thread.join()
        self.producer.flush(timeout=PRODUCER_DELIVERY_TIMEOUT_S + 30)
        self.producer.close(timeout=10)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            with contextlib.suppress(Exception):  # records still in flight: dropped
                self.producer.close(timeout=0)

    def _run(self) -> None:
        started, sent = time.monotonic(), 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            for i in range(sent, due):
                self._send(i)
            sent = max(sent, due)
            self._stop.wait(0.01)

    def _send(self, i: int) -> None:
        record_id = f"r{i}"
        value = json.dumps({"id": record_id, "text": TEXTS[i % len(TEXTS)]}).encode()
        self.sent_at[record_id] = time.time()
        future = self.producer.send(self.topic, key=f"k{i % 12}".encode(), value=value)
        future.add_callback(lambda _meta: self.acked.add(record_id))
        future.add_errback(lambda exc: self.failed.__setitem__(record_id, repr(exc)))


def _record_id(record) -> str | None:
    try:
        return json.loads(record.value)["id"]
    except (TypeError, ValueError, KeyError):
        return None


class Monitor:
    """A downstream consumer (read_committed) of the output and dead-letter topics: notes when
    each id first arrived."""

    def __init__(self, cluster: KafkaCluster, topics: list[str]) -> None:
        self.consumer = cluster.consumer(*topics)
        self.first_seen: dict[str | None, float] = {}
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.consumer.close()

    def close(self) -> None:
        if not self._stop.is_set():
            self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            polled = self.consumer.poll(timeout_ms=200)
            now = time.time()
            with self._lock:
                for records in polled.values():
                    for r in records:
                        self.first_seen.setdefault(_record_id(r), now)
                        self.arrivals.append(now)

    def seen(self) -> dict[str | None, float]:
        with self._lock:
            return dict(self.first_seen)

    def wait(self, done: Callable[[dict[str | None, float]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.seen()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.2)

    def first_fresh(self, since: float, sent_at: dict[str, float]) -> float | None:
        """Seconds from ``since`` until the first result of an input sent after ``since`` arrived."""
        fresh = [t for rid, t in self.seen().items() if sent_at.get(rid, 0.0) > since]
        return min(fresh) - since if fresh else None

    def longest_gap(self, start: float, end: float) -> float:
        with self._lock:
            times = [start] + [t for t in self.arrivals if start <= t <= end] + [end]
        return max(b - a for a, b in pairwise(times))


class Keeper:
    """Keeps worker processes running as deploy/k8s/deployment.yaml would: one that exits on its
    own is started again; one that fails LIVENESS_FAILURES ``/healthz`` probes in a row is
    SIGKILLed and started again. Each restart is noted with why."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: dict[str, WorkerProcess] = {}
        self.restarts: list[tuple[str, str]] = []  # (worker, "exit 1" | "liveness")
        self._logs: dict[str, list[Path]] = {}
        self._failed_probes: dict[str, int] = {}
        self._next_probe: dict[str, float] = {}
        self._stopping: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keeper", daemon=True)
        self._thread.start()

    def start(self, name: str, s: Settings, args: list[str], env: dict[str, str]) -> WorkerProcess:
        w = WorkerProcess(s, args, env=env)
        with self._lock:
            self.workers[name] = w
            self._launch(name)
        return w

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        with self._lock:
            self._stopping.add(name)
            w = self.workers[name]
        try:
            return w.stop(sig, timeout=90)
        except subprocess.TimeoutExpired:
            w.kill()
            return -signal.SIGKILL

    def stop_all(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return {name: self.stop(name) for name, w in self.workers.items() if w.proc.poll() is None}

    def close(self) -> None:
        if not self._stop.is_set():
            self.stop_all()

    def logs(self, lines: int = 40) -> str:
        """The workers' own log lines (kafka-python's connection chatter left out)."""
        out = []
        for name, paths in self._logs.items():
            text = "".join(p.read_text(errors="replace") for p in paths if p.exists())
            own = [line for line in text.splitlines() if not KAFKA_CHATTER.search(line)]
            out.append(f"--- worker {name} ({len(paths)} start(s)) ---\n" + "\n".join(own[-lines:]))
        return "\n".join(out)

    def _launch(self, name: str) -> None:
        w = self.workers[name].start(self.log_dir, name)
        self._logs.setdefault(name, []).append(w.log_path)
        self._failed_probes[name] = 0
        self._next_probe[name] = 0.0

    def _run(self) -> None:
        while not self._stop.wait(LIVENESS_PERIOD_S / 5):
            with self._lock:
                for name, w in self.workers.items():
                    if name in self._stopping:
                        continue
                    code = w.proc.poll()
                    if code is not None:
                        self.restarts.append((name, f"exit {code}"))
                        self._launch(name)
                    elif self._probe_failed(name, w) >= LIVENESS_FAILURES:
                        w.kill()
                        self.restarts.append((name, "liveness"))
                        self._launch(name)

    def _probe_failed(self, name: str, w: WorkerProcess) -> int:
        """Probe ``/healthz`` once per LIVENESS_PERIOD_S; the count of failures in a row."""
        now = time.monotonic()
        if now < self._next_probe[name]:
            return self._failed_probes[name]
        self._next_probe[name] = now + LIVENESS_PERIOD_S
        try:
            ok = w.get("/healthz")[0] == 200
        except OSError:
            ok = False
        self._failed_probes[name] = 0 if ok else self._failed_probes[name] + 1
        return self._failed_probes[name]


# -- one stream: feed, watch, reconcile ------------------------------------------------------
@dataclass
class Figures:
    scenario: str
    mode: str
    inputs: int = 0
    unacknowledged: int = 0
    results: int = 0
    dead_letters: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    recovery_s: float | None = None
    longest_gap_s: float = 0.0
    restarts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        recovery = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return (f"FAULT {self.scenario} [{self.mode}]: inputs {self.inputs} (unacknowledged {self.unacknowledged}), "
                f"results {self.results}, dead letters {self.dead_letters}, lost {len(self.lost)}, "
                f"duplicates {self.duplicates}, recovery {recovery}, longest gap {self.longest_gap_s:.1f} s, "
                f"worker restarts {self.restarts or 'none'}; " + "; ".join(self.notes))

    def problems(self) -> list[str]:
        """What the run got wrong: ids lost; duplicates under exactly-once, or more than
        :func:`at_least_once_bound` allows under at-least-once."""
        found = [f"{len(self.lost)} input(s) lost, e.g. {self.lost[:5]}"] if self.lost else []
        if self.recovery_s is None:
            found.append(f"no result of fresh input within {FRESH_TIMEOUT_S} s of the fault")
        bound = 0 if self.mode == "exactly-once" else at_least_once_bound(len(self.restarts))
        if self.duplicates > bound:
            found.append(f"{self.duplicates} duplicate(s), more than {bound}")
        return [f"{self.mode}: {p}" for p in found]


def at_least_once_bound(restarts: int) -> int:
    """Duplicates at-least-once may show: each time a worker starts over (restart or rebalance),
    what it had read but not committed comes again: at most the records in flight
    (max_in_flight_batches × batch_size × POLL_BATCHES) plus the poll window being collected
    (batch_size × POLL_BATCHES)."""
    s = Settings()
    return (1 + restarts) * (s.max_in_flight_batches + 1) * s.batch_size * POLL_BATCHES


@dataclass
class Stream:
    """One delivery mode's worker(s), with a feeder before and a monitor after."""

    cluster: FaultCluster
    settings: Settings
    mode: str
    keeper: Keeper
    transactional_id: str  # the worker appends "-<process index>"
    feeder: Feeder | None = None
    monitor: Monitor | None = None
    started: float = 0.0

    def worker(self, name: str, *args: str) -> WorkerProcess:
        base = self.transactional_id if name == "w" else f"{self.transactional_id}-{name}"
        env = {"SENTISTREAM_TRANSACTIONAL_ID": base}
        w = self.keeper.start(name, self.settings, ["--delivery", self.mode, *args], env)
        w.wait_ready(timeout=90)
        return w

    def feed(self) -> None:
        s = self.settings
        self.monitor = Monitor(self.cluster, [s.output_topic, s.dlq_topic]).start()
        self.feeder = Feeder(self.cluster, s.input_topic).start()
        self.started = time.time()

    def flowing(self) -> None:
        self.monitor.wait(lambda seen: len(seen) >= WARMUP_RESULTS, 90, f"{self.mode}: results did not start flowing")

    def recovery(self, since: float, deadline: float) -> float | None:
        """Seconds from ``since`` to the first result of an input sent after it; None if none
        came by ``deadline`` (a monotonic time)."""
        with contextlib.suppress(AssertionError):
            self.monitor.wait(lambda _: self.monitor.first_fresh(since, self.feeder.sent_at) is not None,
                              deadline - time.monotonic(), "fresh result")
        return self.monitor.first_fresh(since, self.feeder.sent_at)

    def stop_feeding(self) -> set[str]:
        self.feeder.stop()
        return set(self.feeder.acked)

    def reconcile(self, figures: Figures, expected: set[str]) -> Figures:
        """Wait for every acknowledged id (not long if the stream never recovered), stop the
        workers, count from a fresh read_committed read."""
        wait_s = 180 if figures.recovery_s is not None else 10
        with contextlib.suppress(AssertionError):  # what is missing is counted below
            self.monitor.wait(lambda seen: expected <= seen.keys(), wait_s, "not every input came out")
        end = time.time()
        self.monitor.stop()
        figures.restarts = list(self.keeper.restarts)
        figures.notes.append(f"stop exit codes {self.keeper.stop_all()}")
        s = self.settings
        got = self.cluster.collect([s.output_topic, s.dlq_topic], len(expected), timeout=60,
                                   until=lambda records: expected <= {_record_id(r) for r in records})
        ids = Counter(_record_id(r) for r in got)
        figures.inputs, figures.unacknowledged = len(expected), len(self.feeder.failed)
        figures.results = sum(1 for r in got if r.topic == s.output_topic)
        figures.dead_letters = sum(1 for r in got if r.topic == s.dlq_topic)
        figures.lost = sorted(expected - ids.keys())
        figures.duplicates = sum(n - 1 for n in ids.values())
        figures.longest_gap_s = self.monitor.longest_gap(self.started, end)
        if figures.dead_letters:
            reasons = Counter(dict(r.headers).get("sentistream-dlq-reason") for r in got if r.topic == s.dlq_topic)
            figures.notes.append(f"dead-letter reasons {dict(reasons)}")
        print("\n" + figures.report())
        return figures

    def roles(self, node: int) -> str:
        s = self.settings
        roles = [f"{t.split('-')[0]} p{p['partition_index']} leader"
                 for t in (s.input_topic, s.output_topic) for p in self.cluster.partitions(t) if p["leader_id"] == node]
        if self.cluster.group_coordinator(s.group_id) == node:
            roles.append("group coordinator")
        if node in self.cluster.transaction_coordinators(self.transactional_id):
            roles.append("transaction coordinator")
        return f"node {node}: " + ", ".join(roles or ["no role"])

    def close(self) -> None:
        """Stop whatever still runs (a test that failed midway); never raises."""
        for part in (self.feeder, self.monitor, self.keeper):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()


@pytest.fixture
def streams(cluster: FaultCluster, tmp_path: Path) -> Iterator[Callable[..., list[Stream]]]:
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
        cluster.heal()
        for mode in modes:
            group = cluster.name_on("__consumer_offsets", group_on, "g-")
            transactional_id = cluster.name_on("__transaction_state", transactions_on, "tx-", suffix="-0")
            s = Settings(bootstrap_servers=cluster.bootstrap, group_id=group, input_topic=f"in-{group}",
                         output_topic=f"out-{group}", dlq_topic=f"dlq-{group}", partitions=len(leaders),
                         metrics_port=0, home=tmp_path / "home")
            cluster.create_led_topics(s, list(leaders))
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


def finish(scenario: str, batch: list[Stream], figures: dict[str, Figures]) -> None:
    """Input goes on TAIL_S after the repair, then stops; reconcile each stream, then judge."""
    time.sleep(TAIL_S)  # steady input after the repair: a duration, not a condition
    expected = {st.mode: st.stop_feeding() for st in batch}
    problems = []
    for st in batch:
        problems += st.reconcile(figures[st.mode], expected[st.mode]).problems()
    logs = "\n".join(st.keeper.logs() for st in batch)
    assert not problems, f"{scenario}: {'; '.join(problems)}\n{logs}"


def kill_and_restart(scenario: str, batch: list[Stream], node: int) -> None:
    """SIGKILL ``node`` while both streams flow; once each has results of fresh input again,
    start the node again; reconcile."""
    figures = {st.mode: Figures(scenario, st.mode, notes=[st.roles(node)]) for st in batch}
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
