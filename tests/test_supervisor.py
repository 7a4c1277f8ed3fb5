"""The ``--processes N`` supervisor: restart policy, readiness, stalls, stopping, and lag from outside.

Most tests are pure or use tiny forked processes (no broker, no model); the last two, marked
``kafka``, run the lag monitor and a real supervisor against the session's broker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from sentistream.worker.exits import EXIT_CONFIG, EXIT_CRASH_LOOP, EXIT_FAILED, EXIT_OK
from sentistream.worker.lag import LagMonitor, partition_lag
from sentistream.worker.metrics import SupervisorMetrics
from sentistream.worker.settings import Settings
from sentistream.worker.supervisor import (
    ChildReport,
    RestartPolicy,
    SlotView,
    Supervisor,
    child_reports,
    hang_of,
    readiness,
)
from tests.polling import wait_for


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- restart policy -------------------------------------------------------------------------------
def test_back_off_climbs_per_child_and_starts_over_after_a_stable_run() -> None:
    clock = FakeClock()
    policy = RestartPolicy(max_restarts=100, window_s=300, clock=clock)
    delays = []
    for _ in range(6):
        delays.append(policy.after_exit(0, started_at=clock.now - 1))
        clock.now += 0.5
    assert delays == [1, 2, 5, 10, 30, 30]
    assert policy.after_exit(1, started_at=clock.now - 1) == 1  # another child has its own back-off
    assert policy.after_exit(0, started_at=clock.now - 60) == 1  # ran 60 s: back to the first step
    assert policy.after_exit(0, started_at=clock.now - 1) == 2


def test_more_than_max_restarts_of_one_slot_within_the_window_is_a_crash_loop() -> None:
    clock = FakeClock()
    policy = RestartPolicy(max_restarts=3, window_s=100, clock=clock)
    for _ in range(3):
        assert policy.after_exit(0, started_at=clock.now) is not None
        clock.now += 10
    assert policy.after_exit(0, started_at=clock.now) is None  # its 4th restart within 100 s
    assert policy.recent(0) == (3, 30.0)
    assert policy.recent(1) == (0, 0.0)
    clock.now += 71  # the first restart leaves the window
    assert policy.after_exit(0, started_at=clock.now) is not None
    assert RestartPolicy(max_restarts=0, window_s=100, clock=clock).after_exit(0, clock.now) is None


def test_the_crash_loop_cap_counts_each_slot_apart() -> None:
    """One event that makes every child exit at once (a broker restart) is one restart per slot,
    however many slots there are: 8 children, max_restarts 3."""
    clock = FakeClock()
    policy = RestartPolicy(max_restarts=3, window_s=300, clock=clock)
    for _ in range(3):  # three such events in a row: every slot at its cap, none past it
        assert all(policy.after_exit(i, started_at=clock.now - 5) is not None for i in range(8))
        clock.now += 40
    assert all(policy.recent(i)[0] == 3 for i in range(8))
    assert policy.after_exit(5, started_at=clock.now - 5) is None  # slot 5's 4th: a crash loop


# -- readiness ------------------------------------------------------------------------------------
def samples(pid: int, ready: float, turned: float = 0.0, wall: float = 0.0, **problems: float) -> list:
    """A child's liveall samples: ``turned``: time.monotonic() of its last turn, ``wall``: time.time()."""
    out = [("sentistream_worker_ready", {"pid": str(pid)}, ready),
           ("sentistream_loop_last_turn_monotonic_seconds", {"pid": str(pid)}, turned),
           ("sentistream_loop_last_turn_timestamp_seconds", {"pid": str(pid)}, wall)]
    out += [("sentistream_worker_problem", {"problem": p, "pid": str(pid)}, v) for p, v in problems.items()]
    return out


def test_child_reports_come_per_pid_from_the_liveall_samples() -> None:
    reports = child_reports(samples(11, 1, 123.5, wall=1.8e9, starting=0, stopping=0)
                            + samples(12, 0, 0.0, starting=0, broker_unreachable=1, publish_blocked=1)
                            + [("sentistream_worker_ready", {"pid": "supervisor"}, 1)])
    assert reports == {11: ChildReport(True, (), 123.5),
                       12: ChildReport(False, ("broker_unreachable", "publish_blocked"), 0.0)}


def test_ready_only_when_every_child_runs_and_says_so() -> None:
    reports = child_reports(samples(11, 1) + samples(12, 1))
    both = [SlotView(0, 11), SlotView(1, 12)]
    assert readiness(both, reports, now=0) == (True, "ready: 2 of 2 workers")

    ok, why = readiness([SlotView(0, 11), SlotView(1, None, last_pid=9, restart_at=12.2)], reports, now=10)
    assert not ok and why == "worker 1: not running (pid 9 exited; restarting in 2 s)"

    reports = child_reports(samples(11, 1) + samples(12, 0, starting=1, stopping=0))
    ok, why = readiness([*both, SlotView(2, 13)], reports, now=0)
    assert not ok
    assert why == "worker 1 (pid 12): not ready: starting; worker 2 (pid 13): starting (no report yet)"


# -- the supervisor with tiny forked children -----------------------------------------------------
def _until_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(1)


def _sleep_forever() -> None:  # SIGTERM's default action: a child that has not installed its handler yet
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child inherits whatever an earlier test installed
    while True:
        time.sleep(1)


def _ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


def _exit_with(code: int) -> None:
    os._exit(code)


def spawner(target_for, log: list[int] | None = None):
    ctx = mp.get_context("fork")

    def spawn(index: int):
        target, args = target_for(index)
        proc = ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        if log is not None:
            log.append(proc.pid)
        return proc

    return spawn


def make_supervisor(tmp_path: Path, spawn, reports=dict, backoff=(0.05,), grace_s=5.0, **settings) -> Supervisor:
    s = Settings(home=tmp_path, processes=settings.pop("processes", 2), **settings)
    policy = RestartPolicy(s.max_restarts, s.restart_window_s, backoff=backoff)
    return Supervisor(s, spawn, reports, SupervisorMetrics(CollectorRegistry()), policy=policy, grace_s=grace_s)


def restarts(sup: Supervisor) -> float:
    return sup.metrics.restarts._value.get()


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
    thread.start()
    return thread, result



def test_a_stop_request_is_answered_at_once_even_during_a_long_back_off(tmp_path) -> None:
    pids: list[int] = []
    # worker 0 runs; worker 1 crashes and waits 30 s for its restart
    sup = make_supervisor(tmp_path, spawner(lambda i: (_until_sigterm, ()) if i == 0 else (_exit_with, (1,)), pids),
                          backoff=(30,))
    thread, result = run_in_thread(sup)
    try:
        wait_for(lambda: sup.slots[1].restart_at is not None)
        assert not sup.ready()[0] and "worker 1: not running" in sup.ready()[1]
        time.sleep(0.3)  # worker 0 has its SIGTERM handler by now
        asked = time.monotonic()
        sup.request_stop()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - asked < 1.0
    finally:
        sup.close()
    assert result == [EXIT_OK] and len(pids) == 2 and restarts(sup) == 0


def test_a_crash_loop_logs_one_error_and_exits_3(tmp_path, caplog) -> None:
    sup = make_supervisor(tmp_path, spawner(lambda i: (_exit_with, (1,))), processes=1, max_restarts=3)
    with caplog.at_level(logging.INFO, logger="sentistream.worker.supervisor"):
        assert sup.run() == EXIT_CRASH_LOOP
    sup.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert re.search(r"crash loop: worker 0 \(pid \d+\) exited \(exit code 1\) after 3 restarts in the last "
                     r"\d+ s \(max_restarts 3 within 300 s\)", errors[0]), errors[0]
    assert restarts(sup) == 3
    assert sum("restarting in 0.05 s" in r.getMessage() for r in caplog.records) == 3


def test_a_configuration_error_in_one_child_stops_them_all(tmp_path) -> None:
    started = time.monotonic()
    sup = make_supervisor(tmp_path, spawner(lambda i: (_exit_with, (EXIT_CONFIG,)) if i == 1 else (_until_sigterm, ())))
    assert sup.run() == EXIT_CONFIG
    sup.close()
    assert time.monotonic() - started < 3 and all(slot.proc is None for slot in sup.slots)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, caplog) -> None:
    sup = make_supervisor(tmp_path, spawner(lambda i: (_ignore_sigterm, ())), processes=1, grace_s=0.5)
    thread, result = run_in_thread(sup)
    time.sleep(0.3)
    sup.request_stop()
    thread.join(5)
    sup.close()
    assert result == [EXIT_FAILED]
    assert "worker 0 (pid " in caplog.text and "did not stop within 0.5 s; killing it" in caplog.text


def test_a_child_ended_by_sigterm_before_it_had_a_handler_is_a_clean_stop(tmp_path, caplog) -> None:
    sup = make_supervisor(tmp_path, spawner(lambda i: (_sleep_forever, ())), processes=1)
    thread, result = run_in_thread(sup)
    wait_for(lambda: sup.slots[0].proc is not None)
    with caplog.at_level(logging.INFO, logger="sentistream.worker.supervisor"):
        sup.request_stop()
        thread.join(5)
    sup.close()
    assert result == [EXIT_OK]
    assert "worker 0 (pid " in caplog.text and "stopped before it had started" in caplog.text


def test_a_stalled_child_is_killed_restarted_and_counted(tmp_path, caplog) -> None:
    pids: list[int] = []
    stalled: set[int] = set()

    def reports() -> dict[int, ChildReport]:  # the first child's loop turned once, long ago
        return {pid: ChildReport(True, (), time.monotonic() - (100 if pid in stalled else 0)) for pid in pids}

    sup = make_supervisor(tmp_path, spawner(lambda i: (_until_sigterm, ()), pids), reports, processes=1,
                          stall_timeout_s=0.3)
    thread, result = run_in_thread(sup)
    try:
        wait_for(lambda: len(pids) == 1)
        stalled.add(pids[0])
        wait_for(lambda: len(pids) == 2 and sup.slots[0].pid == pids[1])
        assert sup.ready() == (True, "ready: 1 of 1 workers")
        time.sleep(0.2)
    finally:
        sup.request_stop()
        thread.join(5)
        sup.close()
    assert result == [EXIT_OK] and restarts(sup) == 1
    assert f"worker 0 (pid {pids[0]}): its loop has not turned for 100 s" in caplog.text
    assert f"worker 0 (pid {pids[0]}) was killed after its loop stalled for 100 s; restarting" in caplog.text


def test_a_child_whose_loop_never_turned_is_not_taken_for_stalled(tmp_path) -> None:
    pids: list[int] = []
    sup = make_supervisor(tmp_path, spawner(lambda i: (_until_sigterm, ()), pids),
                          lambda: {pid: ChildReport(False, ("starting",), 0.0) for pid in pids},
                          processes=1, stall_timeout_s=0.1)
    thread, result = run_in_thread(sup)
    time.sleep(1.0)  # several stall checks
    sup.request_stop()
    thread.join(5)
    sup.close()
    assert result == [EXIT_OK] and len(pids) == 1 and restarts(sup) == 0


# -- start-up hangs, stalls and per-slot restarts on an injected clock ----------------------------
def test_a_hang_is_no_turn_within_start_timeout_s_or_none_for_stall_timeout_s_all_monotonic() -> None:
    def hang(report, now):
        return hang_of(report, started_at=100.0, now=now, start_timeout_s=180, stall_timeout_s=60)

    assert hang(None, now=279) is None and hang(ChildReport(), now=279) is None  # still starting
    assert hang(None, now=281).reason.startswith("its loop has not turned in the 181 s since it started")
    assert hang(ChildReport(turned_at=250.0), now=1000) is not None  # turned once, then stopped for 750 s
    assert hang(ChildReport(turned_at=999.0), now=1000) is None  # turns: start_timeout_s no longer applies
    assert hang(ChildReport(turned_at=939.0), now=1000).how == "was killed after its loop stalled for 61 s"


class FakeProc:
    """A child for the injected-clock tests: runs until told to exit or killed; its sentinel is
    always readable, so a turn of the supervisor never waits for it."""

    next_pid = 1000

    def __init__(self) -> None:
        FakeProc.next_pid += 1
        self.pid = FakeProc.next_pid
        self.exitcode: int | None = None
        self.sentinel, self._w = os.pipe()
        os.write(self._w, b"x")

    def kill(self) -> None:
        self.exitcode = -signal.SIGKILL

    def terminate(self) -> None:
        self.exitcode = 0

    def join(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        os.close(self.sentinel)
        os.close(self._w)


def fake_supervisor(tmp_path: Path, clock: FakeClock, reports, **settings) -> tuple[Supervisor, list[FakeProc]]:
    """A supervisor of fake children on ``clock``, its children started; drive it with ``_turn()``."""
    procs: list[FakeProc] = []

    def spawn(_index: int) -> FakeProc:
        procs.append(FakeProc())
        return procs[-1]

    sup = Supervisor(Settings(home=tmp_path, **settings), spawn, reports, SupervisorMetrics(CollectorRegistry()),
                     clock=clock)
    for slot in sup.slots:
        sup._start(slot)
    return sup, procs


def finish(sup: Supervisor) -> None:
    sup._stop_children()
    sup.close()


def test_a_child_whose_loop_never_turns_is_killed_at_start_timeout_s_and_restarted(tmp_path, caplog) -> None:
    clock = FakeClock()
    sup, procs = fake_supervisor(tmp_path, clock, dict, processes=1, start_timeout_s=180, stall_timeout_s=60)
    try:
        clock.now += 179  # no report at all: past stall_timeout_s, still within start_timeout_s
        sup._turn()
        assert procs[0].exitcode is None
        clock.now += 2
        sup._turn()
        assert procs[0].exitcode == -signal.SIGKILL
        sup._turn()  # its exit: a crash, restarted after the first back-off
        assert sup.slots[0].restart_at == clock.now + 1 and restarts(sup) == 0
        clock.now += 1
        sup._turn()
        assert [p.pid for p in procs] == [procs[0].pid, sup.slots[0].pid] and restarts(sup) == 1
        assert not sup.stopping
    finally:
        finish(sup)
    pid = procs[0].pid
    assert (f"worker 0 (pid {pid}): its loop has not turned in the 181 s since it started (start_timeout_s 180; "
            "stuck loading the bundle or connecting to Kafka?); killing it") in caplog.text
    assert f"worker 0 (pid {pid}) was killed after its loop had not turned in 181 s since its start; restarting in 1 s" \
        in caplog.text


def test_every_child_exiting_at_once_is_no_crash_loop_but_one_slot_past_max_restarts_is(tmp_path, caplog) -> None:
    clock = FakeClock()
    sup, procs = fake_supervisor(tmp_path, clock, dict, processes=8, max_restarts=3)
    try:
        for proc in procs:  # e.g. a broker restart: every child exits once
            proc.exitcode = 1
        sup._turn()
        clock.now += 1
        sup._turn()
        assert not sup.stopping and restarts(sup) == 8 and all(slot.proc is not None for slot in sup.slots)
        for delay in (2, 5):  # slot 0 keeps failing: its 2nd and 3rd restart
            sup.slots[0].proc.exitcode = 1
            sup._turn()
            clock.now += delay
            sup._turn()
        assert not sup.stopping and restarts(sup) == 10
        sup.slots[0].proc.exitcode = 1
        sup._turn()  # its 4th within restart_window_s: more than max_restarts
        assert sup.stopping and sup.exit_code == EXIT_CRASH_LOOP
    finally:
        finish(sup)
    assert re.search(r"crash loop: worker 0 \(pid \d+\) exited \(exit code 1\) after 3 restarts in the last 8 s "
                     r"\(max_restarts 3 within 300 s\)", caplog.text), caplog.text


def test_a_wall_clock_step_neither_kills_a_turning_child_nor_hides_a_stalled_one(tmp_path) -> None:
    clock = FakeClock()  # the supervisor's monotonic clock
    turned: dict[int, float] = {}  # pid -> the child's monotonic last turn
    wall_offset = {"s": 0.0}

    def reports() -> dict[int, ChildReport]:  # through the gauges, both of them, as the children set them
        return child_reports([sample for pid, at in turned.items()
                              for sample in samples(pid, 1, turned=at, wall=time.time() + wall_offset["s"])])

    sup, procs = fake_supervisor(tmp_path, clock, reports, processes=2, stall_timeout_s=60)
    try:
        clock.now += 1000
        wall_offset["s"] = -3600  # both children's wall gauges are an hour behind (the clock stepped forward)
        turned.update({procs[0].pid: clock.now - 1, procs[1].pid: clock.now - 1})
        sup._turn()
        assert procs[0].exitcode is None and procs[1].exitcode is None
        wall_offset["s"] = 3600  # stepped back: child 1's wall gauge looks fresh, but it has not turned for 100 s
        clock.now += 100
        turned[procs[0].pid] = clock.now - 1
        sup._turn()
        assert procs[0].exitcode is None and procs[1].exitcode == -signal.SIGKILL
    finally:
        finish(sup)


def test_the_supervisor_is_live_while_its_loop_turns(tmp_path) -> None:
    clock = FakeClock()
    sup = Supervisor(Settings(home=tmp_path, processes=1, stall_timeout_s=10), spawner(lambda i: (_exit_with, (0,))),
                     dict, SupervisorMetrics(CollectorRegistry()), clock=clock)
    assert sup.live() == (True, "ok")
    clock.now += 11
    assert sup.live() == (False, "supervisor loop has not turned for 11 s (limit 10 s)")
    sup.close()


# -- lag ------------------------------------------------------------------------------------------
def test_lag_counts_from_the_commit_else_from_the_first_offset() -> None:
    ends = {0: 10, 1: 5, 2: 7, 3: 0}
    beginnings = {0: 0, 1: 2, 2: 4, 3: 0}
    committed = {0: 3, 2: 1}  # 2: below what retention kept
    assert partition_lag(ends, beginnings, committed) == {0: 7, 1: 3, 2: 3, 3: 0}


def test_the_lag_monitor_logs_errors_once_a_minute_and_keeps_going(tmp_path, caplog) -> None:
    clock = FakeClock()
    monitor = LagMonitor(Settings(home=tmp_path, bootstrap_servers="127.0.0.1:1"), gauge=None, every_s=0.01,
                         clock=clock)
    calls = []

    def failing() -> None:
        calls.append(1)
        clock.now += 20
        raise ConnectionError("no broker")

    monitor._clients = failing  # type: ignore[method-assign]
    monitor.start()
    wait_for(lambda: len(calls) >= 7)
    monitor.stop()
    assert not monitor._thread.is_alive()
    warnings = [r for r in caplog.records if "lag monitor: cannot read the lag" in r.getMessage()]
    assert 2 <= len(warnings) <= len(calls) // 3 + 1
    assert "ConnectionError: no broker" in warnings[0].getMessage()


def retrying(call, timeout: float = 30.0):
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.kafka
def test_the_lag_monitor_reads_end_and_committed_offsets(kafka, topics) -> None:
    from kafka import OffsetAndMetadata, TopicPartition

    from sentistream.worker import kafka_clients

    s = topics()
    kafka.produce(s.input_topic, [(b"k", b"x")] * 3)  # one key: one partition
    admin = kafka_clients.admin(s, s.bootstrap_servers)
    parts = kafka_clients.consumer(s, s.bootstrap_servers, group_id=None)
    end = parts.end_offsets([TopicPartition(s.input_topic, p) for p in range(s.partitions)])
    busy = next(tp for tp, n in end.items() if n == 3)
    # a fresh broker creates its offsets topic on the first group request: retry until it answers
    retrying(lambda: admin.alter_group_offsets(s.group_id, {busy: OffsetAndMetadata(1, "", -1)}))
    admin.close()
    parts.close()
    gauge = Gauge("lag", "lag", ["topic", "partition"], registry=CollectorRegistry())
    monitor = LagMonitor(s, gauge)
    try:
        lag = retrying(monitor.measure)  # nobody consumes: lag is what the offsets say
    finally:
        monitor._close()
    assert lag == {p: (2 if p == busy.partition else 0) for p in range(s.partitions)}
    assert gauge.labels(s.input_topic, str(busy.partition))._value.get() == 2


@pytest.mark.kafka
def test_supervisor_readiness_names_a_killed_worker_and_lag_counts_while_workers_are_down(kafka, topics, tmp_path) -> None:
    from sentistream.bench.scrape import scrape
    from tests.workers import WorkerProcess, json_items

    s = topics()
    w = WorkerProcess(s, ["--processes", "2"]).start(tmp_path)
    stopped: list[int] = []
    try:
        w.wait_ready(90)
        assert w.get("/readyz") == (200, "ready: 2 of 2 workers\n")
        # each child's monotonic last turn, on the one clock of this host, is fresh
        turns = scrape(w.url("/metrics")).by_label("sentistream_loop_last_turn_monotonic_seconds", "pid")
        assert len(turns) == 2 and all(0 <= time.monotonic() - t < 5 for t in turns.values()), turns
        started = dict(re.findall(r"started worker (\d) \(pid (\d+)\)", w.log_path.read_text()))
        index, victim = next(iter(started.items()))
        os.kill(int(victim), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (status := w.get("/readyz"))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status[0] == 503 and f"worker {index}" in status[1], status
        w.wait_ready(90)
        assert w.metric("sentistream_worker_restarts_total") == 1
        assert f"worker {index} (pid {victim}) exited (killed by SIGKILL); restarting in 1 s" in w.log_path.read_text()

        # every worker frozen: the lag still counts what they have not done
        children = dict(re.findall(r"started worker (\d) \(pid (\d+)\)", w.log_path.read_text()))
        for pid in children.values():
            os.kill(int(pid), signal.SIGSTOP)
            stopped.append(int(pid))
        kafka.produce(s.input_topic, json_items(40, keys=8))
        deadline = time.monotonic() + 15
        while w.metric("sentistream_consumer_lag") < 40 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert w.metric("sentistream_consumer_lag") == 40
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    try:
        deadline = time.monotonic() + 30
        while w.metric("sentistream_consumer_lag") > 0 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert w.metric("sentistream_consumer_lag") == 0
    finally:
        assert w.stop() == 0, w.log()


# -- a real start-up hang -------------------------------------------------------------------------
@contextlib.contextmanager
def silent_broker() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP port that accepts connections and never answers. kafka-python's KafkaConsumer
    bootstraps in its constructor, before the worker's loop first turns, and waits there for an
    answer to its ApiVersions request until bootstrap_timeout_ms (30 s) runs out."""
    server = socket.create_server(("127.0.0.1", 0), backlog=32)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listening socket closed: done
            while True:
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        server.close()
        thread.join(5)
        for conn in accepted:
            conn.close()


def started_children(log_text: str) -> list[tuple[int, int]]:
    """(worker index, pid) of every child the supervisor started, in order."""
    return [(int(i), int(pid)) for i, pid in re.findall(r"started worker (\d+) \(pid (\d+)\)", log_text)]


def kill_supervisor_and_children(proc, children: list[tuple[int, int]]) -> None:
    """SIGKILL a supervisor and its running children. Stopped first, it cannot reap a child, so
    each child's pid stays its own (a zombie at worst) until the supervisor is gone."""
    latest = dict(children)  # index -> the pid started last
    os.kill(proc.pid, signal.SIGSTOP)
    for pid in latest.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait(10)


def test_a_worker_that_hangs_before_its_loop_first_turns_is_killed_after_start_timeout_s_and_restarted(
        tmp_path) -> None:
    from tests.workers import WorkerProcess

    timeout_s = 10
    with silent_broker() as (address, accepted):
        s = Settings(home=tmp_path / "home", bootstrap_servers=address, processes=2, start_timeout_s=timeout_s)
        w = WorkerProcess(s).start(tmp_path)
        try:
            wait_for(lambda: len(started_children(w.log_path.read_text())) == 2, timeout=30)
            first = started_children(w.log_path.read_text())
            # both children and the supervisor's lag monitor wait on the silent port
            wait_for(lambda: len(accepted) >= 3, timeout=timeout_s)
            wait_for(lambda: len(started_children(w.log_path.read_text())) == 4, timeout=timeout_s + 15)
            text = w.log_path.read_text()
            assert w.proc.poll() is None, w.log()
        finally:
            kill_supervisor_and_children(w.proc, started_children(w.log_path.read_text()))
    for index, pid in first:
        killed = re.search(rf"worker {index} \(pid {pid}\): its loop has not turned in the (\d+) s since it started "
                           rf"\(start_timeout_s {timeout_s}; stuck loading the bundle or connecting to Kafka\?\); "
                           "killing it", text)
        assert killed and int(killed[1]) >= timeout_s, text
        assert re.search(rf"worker {index} \(pid {pid}\) was killed after its loop had not turned in \d+ s since its "
                         "start; restarting in 1 s", text), text
    assert sorted(i for i, _ in started_children(text)[2:]) == [0, 1]
