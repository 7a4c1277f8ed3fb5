"""``--processes N``: N worker processes in one consumer group, supervised.

A crashed child is logged and restarted (with a short back-off); SIGTERM/SIGINT are passed on
and every child gets to finish its batch. The children share a Prometheus multiprocess
directory, so one scrape of the supervisor's port sees all of them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import tempfile
import time
from typing import TYPE_CHECKING

from worker.settings import Settings

if TYPE_CHECKING:
    from worker.bundle import Bundle

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
STOP_GRACE_S = 60.0


def run_one(settings: Settings, index: int = 0, serve_http: bool = True, bundle: Bundle | None = None) -> int:
    """One worker in this process (the child's body, and the whole thing when N = 1); ``bundle``:
    one already loaded."""
    from prometheus_client import CollectorRegistry

    from worker.bundle import BundleError
    from worker.loop import Worker, install_signal_handlers
    from worker.metrics import WorkerMetrics, serve

    registry = CollectorRegistry() if serve_http else None
    metrics = WorkerMetrics(registry)
    try:
        worker = Worker(settings, metrics, process_index=index, bundle=bundle)
    except BundleError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    install_signal_handlers(worker)
    server = None
    if serve_http and settings.metrics_port:
        server = serve(settings.metrics_host, settings.metrics_port, registry, worker.is_ready)
    try:
        return worker.run()
    finally:
        if server is not None:
            server.shutdown()


def _child(settings: Settings, index: int) -> None:
    from worker.logs import setup_logging

    setup_logging(settings.log_level, f"worker-{index}")
    raise SystemExit(run_one(settings, index, serve_http=False))


def _ready_count(registry) -> float:
    total = 0.0
    for family in registry.collect():
        if family.name == "sentistream_worker_ready":
            total += sum(s.value for s in family.samples)
    return total


def run_supervised(settings: Settings) -> int:
    from prometheus_client import multiprocess

    n = settings.processes
    prom_dir = tempfile.mkdtemp(prefix="sentistream-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    from worker.metrics import multiprocess_registry, serve

    ctx = mp.get_context("spawn")
    registry = multiprocess_registry()
    server = None
    if settings.metrics_port:
        server = serve(settings.metrics_host, settings.metrics_port, registry,
                       lambda: _ready_count(registry) >= 1)
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def start(index: int) -> mp.Process:
        proc = ctx.Process(target=_child, args=(settings, index), name=f"sentistream-worker-{index}")
        proc.start()
        log.info("started worker %d (pid %d)", index, proc.pid)
        return proc

    children = {i: start(i) for i in range(n)}
    restarts = dict.fromkeys(range(n), 0)
    exit_code = 0
    while not stopping:
        time.sleep(0.2)
        for i, proc in list(children.items()):
            if proc.is_alive() or stopping:
                continue
            multiprocess.mark_process_dead(proc.pid)
            if proc.exitcode == EXIT_CONFIG:
                log.error("worker %d cannot start (configuration); stopping all", i)
                stopping, exit_code = True, EXIT_CONFIG
                break
            delay = RESTART_BACKOFF_S[min(restarts[i], len(RESTART_BACKOFF_S) - 1)]
            log.warning("worker %d (pid %d) exited with %s; restarting in %d s", i, proc.pid,
                        proc.exitcode, delay)
            restarts[i] += 1
            time.sleep(delay)
            children[i] = start(i)

    for proc in children.values():
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for i, proc in children.items():
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            log.error("worker %d did not stop in %.0f s; killing it", i, STOP_GRACE_S)
            proc.kill()
            proc.join()
        if proc.exitcode not in (0, None) and exit_code == 0:
            exit_code = 1
        multiprocess.mark_process_dead(proc.pid)
    if server is not None:
        server.shutdown()
    log.info("supervisor stopped (exit %d)", exit_code)
    return exit_code
