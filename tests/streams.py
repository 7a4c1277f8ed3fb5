"""A steady stream around worker processes, for the tests that break or change things while
records flow (tests/test_faults.py: broker faults; tests/test_operations.py: scaling, rolling
restarts, a host cut off): a :class:`Feeder` sends ``{"id", "text"}`` records at a steady rate,
a :class:`Keeper` runs the workers as Kubernetes would, a :class:`Monitor` reads the output and
dead-letter topics as a downstream read_committed consumer, and :meth:`Stream.reconcile` counts
every acknowledged id: lost, duplicated, the longest gap in the output.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentistream.bench.traffic import Feeder, Monitor, record_id
from sentistream.worker.loop import POLL_BATCHES
from sentistream.worker.settings import Settings
from tests.cluster import KafkaCluster
from tests.workers import WorkerProcess

RATE = 150  # input records per second, per stream
WARMUP_RESULTS = 300  # results seen before the fault: the pipeline is flowing
TAIL_S = 3.0  # input keeps coming this long after the repair
PRODUCER_DELIVERY_TIMEOUT_S = 120  # kafka-python's default: worker/kafka_clients.py sets none, no flag does
LIVENESS_PERIOD_S, LIVENESS_FAILURES = 10.0, 3  # deploy/k8s/deployment.yaml's livenessProbe
FRESH_TIMEOUT_S = 180  # a stalled worker: stall_timeout_s (60 s) + the probes (30 s) + a restart
KAFKA_CHATTER = re.compile(r" kafka\.[\w.]+: ")
TEXTS = ["The acting is superb.", "A dull, lifeless film.", "It is a movie.",
         "Not bad at all, though the ending drags.", "An instant classic!"]


class Keeper:
    """Keeps worker processes running as deploy/k8s/deployment.yaml would: one that exits on its
    own is started again; one that fails LIVENESS_FAILURES ``/healthz`` probes in a row is
    SIGKILLed and started again. Each restart is noted with why."""

    def __init__(self, log_dir: Path, probe: bool = True) -> None:
        self.log_dir = log_dir
        self.probe = probe  # False: no liveness probes (a probe from here cannot cross a cut link)
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

    def start(self, name: str, s: Settings, args: list[str], env: dict[str, str], **where: Any) -> WorkerProcess:
        """Start worker ``name``; ``where``: :class:`WorkerProcess`'s ``prefix`` and ``host``."""
        w = WorkerProcess(s, args, env=env, **where)
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

    def log_text(self, name: str) -> str:
        """Everything worker ``name`` logged, every start of it."""
        return "".join(p.read_text(errors="replace") for p in self._logs.get(name, []) if p.exists())

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
                    elif self.probe and self._probe_failed(name, w) >= LIVENESS_FAILURES:
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
    fault: bool = True  # a fault: results of fresh input must come back after it (recovery_s)

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
        if self.recovery_s is None and self.fault:
            found.append(f"no result of fresh input within {FRESH_TIMEOUT_S} s of the fault")
        bound = 0 if self.mode == "exactly-once" else at_least_once_bound(len(self.restarts))
        if self.duplicates > bound:
            found.append(f"{self.duplicates} duplicate(s), more than {bound}")
        return [f"{self.mode}: {p}" for p in found]


def at_least_once_bound(restarts: int) -> int:
    """Duplicates at-least-once may show: each time a worker starts over (restart or rebalance),
    what it had read but not committed comes again: at most the records in flight
    (max_in_flight_batches × batch_size × POLL_BATCHES) plus the poll window being collected
    (batch_size × POLL_BATCHES), plus what was acknowledged in the last ``commit_interval_ms``
    and not committed yet (a worker expelled after a network cut commits nothing; counted at
    1,000 records/s, above one worker's measured peak)."""
    s = Settings()
    held = s.commit_interval_ms  # 1,000 records/s x the interval in seconds
    return (1 + restarts) * ((s.max_in_flight_batches + 1) * s.batch_size * POLL_BATCHES + held)


@dataclass
class Stream:
    """One delivery mode's worker(s), with a feeder before and a monitor after."""

    cluster: KafkaCluster
    settings: Settings
    mode: str
    keeper: Keeper
    transactional_id: str  # the worker appends "-<process index>"
    worker_args: tuple[str, ...] = ()  # flags every worker of the stream gets
    feeder: Feeder | None = None
    monitor: Monitor | None = None
    started: float = 0.0

    def worker(self, name: str, *args: str, **where: Any) -> WorkerProcess:
        base = self.transactional_id if name == "w" else f"{self.transactional_id}-{name}"
        env = {"SENTISTREAM_TRANSACTIONAL_ID": base}
        w = self.keeper.start(name, self.settings, ["--delivery", self.mode, *self.worker_args, *args], env,
                              **where)
        w.wait_ready(timeout=90)
        return w

    def feed(self, rate: int = RATE) -> None:
        s = self.settings
        self.monitor = Monitor(self.cluster.consumer(s.output_topic, s.dlq_topic)).start()
        self.feeder = Feeder(self.cluster.producer(linger_ms=5), s.input_topic, rate, TEXTS,
                             flush_timeout_s=PRODUCER_DELIVERY_TIMEOUT_S + 30).start()
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
                                   until=lambda records: expected <= {record_id(r.value) for r in records})
        ids = Counter(record_id(r.value) for r in got)
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

    def close(self) -> None:
        """Stop whatever still runs (a test that failed midway); never raises."""
        for part in (self.feeder, self.monitor, self.keeper):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()




def finish(scenario: str, batch: list[Stream], figures: dict[str, Figures]) -> None:
    """Input goes on TAIL_S after the repair, then stops; reconcile each stream, then judge."""
    time.sleep(TAIL_S)  # steady input after the repair: a duration, not a condition
    expected = {st.mode: st.stop_feeding() for st in batch}
    problems = []
    for st in batch:
        problems += st.reconcile(figures[st.mode], expected[st.mode]).problems()
    logs = "\n".join(st.keeper.logs() for st in batch)
    assert not problems, f"{scenario}: {'; '.join(problems)}\n{logs}"


