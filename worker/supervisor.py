"""``--processes N``: N worker processes in one consumer group, supervised.

The supervisor waits on its children's process sentinels and a wake-up pipe (never a blind sleep):
a child that exits is restarted at a deadline after a back-off (1, 2, 5, 10, 30 s; back to 1 s once
it had run for STABLE_AFTER_S). More than ``max_restarts`` restarts of one worker slot within
``restart_window_s`` is a crash loop, and it gives up (exit 3); slots are counted apart, so one
event that makes every child exit once (a broker restart) is never a crash loop, however many
children run. SIGTERM/SIGINT are passed on at once; every child gets STOP_GRACE_S to finish its
batch, then SIGKILL.

The children share a Prometheus multiprocess directory, so one scrape of the supervisor's port sees
all of them. The supervisor reads the children's gauges there to answer ``/readyz`` per worker and
to SIGKILL (then restart, as a crash) a child whose loop has not turned within ``start_timeout_s``
of its start (a hang while loading the bundle or connecting to Kafka) or stopped turning for
``stall_timeout_s``. Both compare monotonic times: the child reports ``time.monotonic()`` of its
last turn, one system-wide clock on Linux, so a step of the wall clock (NTP) neither kills a
healthy child nor hides a stalled one. Consumer lag is measured by the supervisor (worker/lag.py),
so it stays right while a child is down.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from sentistream.worker.exits import EXIT_CONFIG, EXIT_CRASH_LOOP, EXIT_FAILED, EXIT_OK
from sentistream.worker.settings import Settings

if TYPE_CHECKING:
    from sentistream.worker.bundle import Bundle
    from sentistream.worker.metrics import SupervisorMetrics

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
STABLE_AFTER_S = 60.0  # a child that ran this long before exiting starts its back-off over
STOP_GRACE_S = 60.0
CHECK_EVERY_S = 1.0  # the loop turns at least this often (stall checks, /healthz)
GIL_SWITCH_S = 0.0005

# The children's gauges the supervisor reads (defined in worker/metrics.py, multiprocess mode liveall).
READY_GAUGE = "sentistream_worker_ready"
PROBLEM_GAUGE = "sentistream_worker_problem"
TURNED_AT_GAUGE = "sentistream_loop_last_turn_monotonic_seconds"

Clock = Callable[[], float]


# -- one worker in this process -------------------------------------------------------------------
def run_worker_process(settings: Settings, index: int = 0, serve_http: bool = True,
                       bundle: Bundle | None = None) -> int:
    """One worker in this process (the child's body, and the whole thing when N = 1); ``bundle``:
    one already loaded. A supervisor's child serves no HTTP and reports no lag."""
    stop_event = threading.Event()
    stop_on_signals(stop_event)  # first: a SIGTERM while the bundle loads is kept, not lost
    one_core_each(settings)
    from prometheus_client import CollectorRegistry

    from sentistream.worker.bundle import BundleError
    from sentistream.worker.loop import Worker
    from sentistream.worker.metrics import WorkerMetrics, serve

    registry = CollectorRegistry() if serve_http else None
    metrics = WorkerMetrics(registry)
    try:
        worker = Worker(settings, metrics, process_index=index, bundle=bundle, report_lag=serve_http,
                        stop_event=stop_event)
    except BundleError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    # What start-up made (modules, the bundle, the clients) lives as long as the process: out of
    # the collector's way, a full collection no longer walks it (one took 30 ms of the loop).
    gc.freeze()
    server = None
    if serve_http and settings.metrics_port:
        server = serve(settings.metrics_host, settings.metrics_port, registry, worker.health.live,
                       worker.health.ready)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.shutdown()


def one_core_each(settings: Settings) -> None:
    """Process-wide knobs of a worker that owns ``settings.threads`` cores: the tokenizer's own
    thread pool only when that is more than one, and the GIL handed between the loop and the Kafka
    clients' I/O threads every GIL_SWITCH_S instead of Python's 5 ms (docs/performance.md)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if settings.threads > 1 else "false")
    sys.setswitchinterval(GIL_SWITCH_S)


def stop_on_signals(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT set ``stop_event``; the worker's loop ends when it sees it."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_event.set())


def _child(settings: Settings, index: int) -> None:
    from sentistream.worker.logs import setup_logging

    setup_logging(settings.log_level, f"worker-{index}")
    raise SystemExit(run_worker_process(settings, index, serve_http=False))


# -- restart policy (pure) ------------------------------------------------------------------------
class RestartPolicy:
    """When to restart a child that exited, and when to give up; the clock is injected.

    A child's back-off climbs ``backoff`` with each exit and starts over when it had run for
    ``stable_after_s``. More than ``max_restarts`` restarts of one child slot within ``window_s`` is
    a crash loop: :meth:`after_exit` answers None. Each slot is counted apart: N children that each
    exit once (one cluster-wide event) are N first restarts, not a crash loop."""

    def __init__(self, max_restarts: int, window_s: float, clock: Clock = time.monotonic,
                 backoff: Sequence[float] = RESTART_BACKOFF_S, stable_after_s: float = STABLE_AFTER_S) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.clock = clock
        self.backoff = tuple(backoff)
        self.stable_after_s = stable_after_s
        self._streak: dict[int, int] = {}
        self._restarts: dict[int, deque[float]] = {}

    def after_exit(self, index: int, started_at: float) -> float | None:
        """Child ``index``, started at ``started_at``, exited now: seconds until its restart, or
        None when that restart would be one too many for its slot."""
        now = self.clock()
        restarts = self._within_window(index, now)
        if len(restarts) >= self.max_restarts:
            return None
        restarts.append(now)
        streak = 0 if now - started_at >= self.stable_after_s else self._streak.get(index, 0)
        self._streak[index] = streak + 1
        return self.backoff[min(streak, len(self.backoff) - 1)]

    def recent(self, index: int) -> tuple[int, float]:
        """Slot ``index``'s restarts within the window, and the seconds since the oldest of them."""
        now = self.clock()
        restarts = self._within_window(index, now)
        return len(restarts), (now - restarts[0]) if restarts else 0.0

    def _within_window(self, index: int, now: float) -> deque[float]:
        """Slot ``index``'s restart times, those that left the window dropped."""
        restarts = self._restarts.setdefault(index, deque())
        while restarts and restarts[0] <= now - self.window_s:
            restarts.popleft()
        return restarts


# -- what the children report (pure) --------------------------------------------------------------
@dataclass(frozen=True)
class ChildReport:
    """One child's own view, from its liveall gauges (keyed by pid)."""

    ready: bool = False
    problems: tuple[str, ...] = ()
    turned_at: float = 0.0  # time.monotonic() of the loop's last turn (system-wide on Linux); 0: not yet


def child_reports(samples: Iterable[tuple[str, Mapping[str, str], float]]) -> dict[int, ChildReport]:
    """Per pid, from ``(name, labels, value)`` samples of the multiprocess directory."""
    ready: dict[int, bool] = {}
    problems: dict[int, list[str]] = {}
    turned: dict[int, float] = {}
    for name, labels, value in samples:
        pid_label = labels.get("pid", "")
        if not pid_label.isdigit():
            continue
        pid = int(pid_label)
        if name == READY_GAUGE:
            ready[pid] = value == 1
        elif name == PROBLEM_GAUGE:
            held = problems.setdefault(pid, [])
            if value == 1:
                held.append(labels.get("problem", "unknown"))
        elif name == TURNED_AT_GAUGE:
            turned[pid] = value
    return {pid: ChildReport(ready.get(pid, False), tuple(sorted(problems.get(pid, ()))), turned.get(pid, 0.0))
            for pid in {*ready, *problems, *turned}}


def read_child_samples(prom_dir: str) -> list[tuple[str, Mapping[str, str], float]]:
    """The liveall gauges of every live process in ``prom_dir`` (the children's own files)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = glob.glob(os.path.join(prom_dir, "gauge_liveall_*.db"))
    return [(s.name, s.labels, s.value)
            for family in MultiProcessCollector.merge(files, accumulate=False) for s in family.samples]


@dataclass(frozen=True)
class SlotView:
    """What ``/readyz`` needs of one worker slot (an immutable copy for the HTTP thread)."""

    index: int
    pid: int | None  # None: no child running
    last_pid: int | None = None
    restart_at: float | None = None  # monotonic deadline of a scheduled restart


def readiness(slots: Sequence[SlotView], reports: Mapping[int, ChildReport], now: float) -> tuple[bool, str]:
    """Ready when every slot's child runs and reports itself ready; else which are not, and why."""
    not_ready = []
    for slot in slots:
        if slot.pid is None:
            why = "not running"
            if slot.last_pid is not None:
                why += f" (pid {slot.last_pid} exited"
                why += f"; restarting in {max(0.0, slot.restart_at - now):.0f} s)" if slot.restart_at is not None else ")"
            not_ready.append(f"worker {slot.index}: {why}")
            continue
        report = reports.get(slot.pid)
        if report is None:
            why = "starting (no report yet)"
        elif report.ready:
            continue
        else:
            why = "not ready: " + (", ".join(report.problems) or "no problem named")
        not_ready.append(f"worker {slot.index} (pid {slot.pid}): {why}")
    if not_ready:
        return False, "; ".join(not_ready)
    return True, f"ready: {len(slots)} of {len(slots)} workers"


@dataclass(frozen=True)
class Hang:
    """Why a child is killed: the line logged then, and how its exit is told afterwards."""

    reason: str
    how: str


def hang_of(report: ChildReport | None, started_at: float, now: float, start_timeout_s: float,
            stall_timeout_s: float) -> Hang | None:
    """Whether a child started at ``started_at`` hangs at ``now`` (all monotonic): its loop has not
    turned within ``start_timeout_s`` of its start, or not for ``stall_timeout_s`` since its last
    turn. No report yet counts as not turned."""
    turned_at = report.turned_at if report is not None else 0.0
    if turned_at <= 0:
        waited = now - started_at
        if waited < start_timeout_s:
            return None
        return Hang(f"its loop has not turned in the {waited:.0f} s since it started (start_timeout_s "
                    f"{start_timeout_s:g}; stuck loading the bundle or connecting to Kafka?)",
                    f"was killed after its loop had not turned in {waited:.0f} s since its start")
    idle = now - turned_at
    if idle <= stall_timeout_s:
        return None
    return Hang(f"its loop has not turned for {idle:.0f} s (stall_timeout_s {stall_timeout_s:g})",
                f"was killed after its loop stalled for {idle:.0f} s")


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


# -- the supervisor -------------------------------------------------------------------------------
@dataclass
class _Slot:
    index: int
    proc: BaseProcess | None = None
    pid: int | None = None
    last_pid: int | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    killed: Hang | None = None  # set when the supervisor killed it for not turning

    def view(self) -> SlotView:
        return SlotView(self.index, self.pid, self.last_pid, self.restart_at)


class Supervisor:
    """Runs ``settings.processes`` children made by ``spawn(index)`` (started processes) until
    :meth:`request_stop` (safe in a signal handler), a configuration error or a crash loop.

    ``reports()`` reads the children's gauges (pid → :class:`ChildReport`); ``forget(pid)`` drops a
    dead child's live gauges."""

    def __init__(self, settings: Settings, spawn: Callable[[int], BaseProcess],
                 reports: Callable[[], Mapping[int, ChildReport]], metrics: SupervisorMetrics,
                 forget: Callable[[int], None] = lambda _pid: None, policy: RestartPolicy | None = None,
                 clock: Clock = time.monotonic, grace_s: float = STOP_GRACE_S) -> None:
        self.settings = settings
        self.spawn = spawn
        self.reports = reports
        self.metrics = metrics
        self.forget = forget
        self.clock = clock
        self.grace_s = grace_s
        self.policy = policy or RestartPolicy(settings.max_restarts, settings.restart_window_s, clock)
        self.slots = [_Slot(i) for i in range(settings.processes)]
        self.stopping = False
        self.exit_code = EXIT_OK
        self.last_turn = clock()
        self._views: tuple[SlotView, ...] = tuple(slot.view() for slot in self.slots)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- control ----------------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):  # a full pipe already wakes the loop
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    def run(self) -> int:
        try:
            for slot in self.slots:
                self._start(slot)
            while not self.stopping:
                self._turn()
        finally:
            self._stop_children()
        return self.exit_code

    # -- probes (HTTP thread) ---------------------------------------------------------------------
    def live(self) -> tuple[bool, str]:
        idle = self.clock() - self.last_turn
        limit = self.settings.stall_timeout_s
        if idle > limit:
            return False, f"supervisor loop has not turned for {idle:.0f} s (limit {limit:.0f} s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        try:
            reports = self.reports()
        except Exception as exc:  # an unreadable file is an answer too
            return False, f"cannot read the workers' state: {type(exc).__name__}: {exc}"
        return readiness(self._views, reports, self.clock())

    # -- the loop ---------------------------------------------------------------------------------
    def _turn(self) -> None:
        self.last_turn = self.clock()
        woken = wait([*self._sentinels(), self._wake_r], timeout=self._wait_s())
        if self._wake_r in woken:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        if self.stopping:
            return
        for slot in self.slots:
            if slot.proc is not None and slot.proc.exitcode is not None:
                self._exited(slot)
                if self.stopping:
                    return
        self._restart_due()
        self._check_stalls()
        self._publish()

    def _sentinels(self) -> list[int]:
        return [slot.proc.sentinel for slot in self.slots if slot.proc is not None]

    def _wait_s(self) -> float:
        deadlines = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        until_restart = min(deadlines, default=float("inf")) - self.clock()
        return max(0.0, min(CHECK_EVERY_S, until_restart))

    def _start(self, slot: _Slot) -> None:
        proc = self.spawn(slot.index)
        slot.proc, slot.pid, slot.started_at = proc, proc.pid, self.clock()
        slot.restart_at = slot.killed = None
        log.info("started worker %d (pid %d)", slot.index, proc.pid)
        self._publish()

    def _reap(self, slot: _Slot) -> int | None:
        """Collect an exited child; its exit code."""
        proc, pid = slot.proc, slot.pid
        assert proc is not None and pid is not None
        proc.join()
        code = proc.exitcode
        proc.close()
        self.forget(pid)
        slot.proc, slot.pid, slot.last_pid = None, None, pid
        return code

    def _exited(self, slot: _Slot) -> None:
        pid = slot.pid
        code = self._reap(slot)
        if code == EXIT_CONFIG:
            log.error("worker %d (pid %d) cannot run: configuration error (exit code %d); stopping all workers",
                      slot.index, pid, code)
            self._give_up(EXIT_CONFIG)
            return
        how = slot.killed.how if slot.killed is not None else f"exited ({describe_exit(code)})"
        delay = self.policy.after_exit(slot.index, slot.started_at)
        if delay is None:
            count, span = self.policy.recent(slot.index)
            log.error("crash loop: worker %d (pid %d) %s after %d restarts in the last %.0f s (max_restarts %d "
                      "within %.0f s); giving up, stopping all workers (exit %d)", slot.index, pid, how, count, span,
                      self.policy.max_restarts, self.policy.window_s, EXIT_CRASH_LOOP)
            self._give_up(EXIT_CRASH_LOOP)
            return
        slot.restart_at = self.clock() + delay
        log.warning("worker %d (pid %d) %s; restarting in %g s", slot.index, pid, how, delay)
        self._publish()

    def _give_up(self, code: int) -> None:
        self.exit_code = code
        self.stopping = True

    def _restart_due(self) -> None:
        now = self.clock()
        for slot in self.slots:
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
                self.metrics.restarts.inc()

    def _check_stalls(self) -> None:
        """SIGKILL a child whose loop has not turned within ``start_timeout_s`` of its start, or not
        for ``stall_timeout_s`` since its last turn (:func:`hang_of`); its exit is then handled as a
        crash."""
        s = self.settings
        now = self.clock()
        due = [slot for slot in self.slots if slot.proc is not None and slot.killed is None
               and now - slot.started_at >= min(s.start_timeout_s, s.stall_timeout_s)]
        if not due:
            return
        try:
            reports = self.reports()
        except Exception as exc:  # next turn tries again
            log.debug("cannot read the workers' gauges: %s", exc)
            return
        for slot in due:
            hang = hang_of(reports.get(slot.pid or 0), slot.started_at, now, s.start_timeout_s, s.stall_timeout_s)
            if hang is not None and slot.proc is not None:
                log.error("worker %d (pid %d): %s; killing it", slot.index, slot.pid, hang.reason)
                slot.killed = hang
                slot.proc.kill()

    def _publish(self) -> None:
        self._views = tuple(slot.view() for slot in self.slots)

    # -- stopping ---------------------------------------------------------------------------------
    def _stop_children(self) -> None:
        """SIGTERM to every child at once, up to ``grace_s`` for all of them, then SIGKILL."""
        running = [slot for slot in self.slots if slot.proc is not None]
        for slot in self.slots:
            slot.restart_at = None
            if slot.proc is not None:
                slot.proc.terminate()
        if running:
            log.info("stopping %d worker(s); up to %g s to finish", len(running), self.grace_s)
        deadline = self.clock() + self.grace_s
        while self._sentinels() and self.clock() < deadline:
            self.last_turn = self.clock()
            wait(self._sentinels(), timeout=max(0.0, min(CHECK_EVERY_S, deadline - self.clock())))
            for slot in running:
                if slot.proc is not None and slot.proc.exitcode is not None:
                    self._stopped(slot)
        for slot in running:
            if slot.proc is not None:
                log.error("worker %d (pid %d) did not stop within %g s; killing it", slot.index, slot.pid,
                          self.grace_s)
                slot.proc.kill()
                self._stopped(slot)
        self._publish()

    def _stopped(self, slot: _Slot) -> None:
        index, pid = slot.index, slot.pid
        code = self._reap(slot)
        if code == -signal.SIGTERM:  # ended by the signal itself: it had not installed its handler, done nothing
            log.info("worker %d (pid %d) stopped before it had started", index, pid)
        elif code != 0:
            log.warning("worker %d (pid %d) did not stop cleanly (%s)", index, pid, describe_exit(code))
            if self.exit_code == EXIT_OK:
                self.exit_code = EXIT_FAILED


# -- wiring ---------------------------------------------------------------------------------------
def run_supervised(settings: Settings) -> int:
    prom_dir = tempfile.mkdtemp(prefix="sentistream-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir  # before prometheus_client is imported here
    try:
        return _supervise(settings, prom_dir)
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(prom_dir, ignore_errors=True)


def _supervise(settings: Settings, prom_dir: str) -> int:
    from prometheus_client import multiprocess, values

    from sentistream.worker.lag import LagMonitor
    from sentistream.worker.metrics import SupervisorMetrics, multiprocess_registry, serve

    if values.ValueClass is values.MutexValue:
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
                           "the supervisor's own metrics would not reach /metrics")
    ctx = mp.get_context("spawn")

    def spawn(index: int) -> BaseProcess:
        proc = ctx.Process(target=_child, args=(settings, index), name=f"sentistream-worker-{index}")
        proc.start()
        return proc

    metrics = SupervisorMetrics(None)  # values live in prom_dir, beside the children's
    supervisor = Supervisor(settings, spawn, lambda: child_reports(read_child_samples(prom_dir)), metrics,
                            forget=lambda pid: multiprocess.mark_process_dead(pid, prom_dir))
    previous: dict[int, Any] = {sig: signal.signal(sig, supervisor.request_stop)
                                for sig in (signal.SIGTERM, signal.SIGINT)}
    server = None
    if settings.metrics_port:
        server = serve(settings.metrics_host, settings.metrics_port, multiprocess_registry(), supervisor.live,
                       supervisor.ready)
    lag = LagMonitor(settings, metrics.lag).start()
    log.info("supervising %d workers of group %s on %s", settings.processes, settings.group_id, settings.input_topic)
    try:
        code = supervisor.run()
    finally:
        lag.stop()
        if server is not None:
            server.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        supervisor.close()
    log.info("supervisor stopped (exit %d)", code)
    return code
