"""The ``--processes N`` supervisor: restart policy, readiness, stalls, stopping, and lag from outside.

Most tests are pure or use tiny forked processes (no broker, no model); the last two, marked
``kafka``, run the lag monitor and a real supervisor against the session's broker.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from sentistream.worker.lag import LagMonitor, partition_lag
from sentistream.worker.metrics import SupervisorMetrics
from sentistream.worker.settings import Settings
from sentistream.worker.supervisor import (
    EXIT_CONFIG,
    EXIT_CRASH_LOOP,
    EXIT_FAILED,
    EXIT_OK,
    ChildReport,
    RestartPolicy,
    SlotView,
    Supervisor,
    child_reports,
    readiness,
)


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


def test_more_than_max_restarts_within_the_window_is_a_crash_loop() -> None:
    clock = FakeClock()
    policy = RestartPolicy(max_restarts=3, window_s=100, clock=clock)
    for i in range(3):  # of any child
        assert policy.after_exit(i % 2, started_at=clock.now) is not None
        clock.now += 10
    assert policy.after_exit(0, started_at=clock.now) is None
    assert policy.recent() == (3, 30.0)
    clock.now += 71  # the first restart leaves the window
    assert policy.after_exit(0, started_at=clock.now) is not None
    assert RestartPolicy(max_restarts=0, window_s=100, clock=clock).after_exit(0, clock.now) is None


# -- readiness ------------------------------------------------------------------------------------
def samples(pid: int, ready: float, turned: float = 0.0, **problems: float) -> list:
    out = [("sentistream_worker_ready", {"pid": str(pid)}, ready),
           ("sentistream_loop_last_turn_timestamp_seconds", {"pid": str(pid)}, turned)]
    out += [("sentistream_worker_problem", {"problem": p, "pid": str(pid)}, v) for p, v in problems.items()]
    return out


def test_child_reports_come_per_pid_from_the_liveall_samples() -> None:
    reports = child_reports(samples(11, 1, 123.5, starting=0, stopping=0)
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


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


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
        return {pid: ChildReport(True, (), time.time() - (100 if pid in stalled else 0)) for pid in pids}

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
    from tests.workers import WorkerProcess, json_items

    s = topics()
    w = WorkerProcess(s, ["--processes", "2"]).start(tmp_path)
    stopped: list[int] = []
    try:
        w.wait_ready(90)
        assert w.get("/readyz") == (200, "ready: 2 of 2 workers\n")
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
