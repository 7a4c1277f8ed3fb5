"""How fast ``sentistream console``'s page loads with 8 workers reporting: 8 synthetic workers'
status records (worker/status.py, built as a worker builds them) go to a status topic of this run,
republished every interval; the console serves in this process on a free port; Debian's chromium
(Playwright, nothing downloaded) loads ``#workers`` N times, each in a fresh context (cold cache),
and the time from the navigation's start to the ``load`` event and to the workers table showing
8 rows is printed, with median and max. Without ``--bootstrap`` a local broker of its own is
started (as ``bench`` does) and wiped at the end.
``python -m sentistream.bench.console_load [--bootstrap HOST:PORT] [-n 5]``"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

from sentistream.bench.soak import soak_broker
from sentistream.bench.status_cost import fake_worker
from sentistream.bench.worker_process import settings_command
from sentistream.broker.local import free_port
from sentistream.worker import kafka_clients
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.settings import Settings
from sentistream.worker.status import WorkerStatus
from sentistream.worker.status_publisher import StatusPublisher, status_topic_spec

WORKERS = 8
CHROMIUM = Path("/usr/bin/chromium")


def fleet(settings: Settings, now: float) -> list[WorkerStatus]:
    """WORKERS records as a worker builds them (traffic, a shadow), each its own host/pid and partition."""
    record = StatusPublisher(settings, lambda *_: None, fake_worker(WorkerMetrics(CollectorRegistry()))).build(now)
    return [record.model_copy(update={"worker": f"bench-host-{i}/{1000 + i}", "host": f"bench-host-{i}",
                                      "pid": 1000 + i, "partitions": [i]}) for i in range(WORKERS)]


class Reporter(threading.Thread):
    """Publishes the fleet's records every status interval until stopped."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings, self.stop = settings, threading.Event()
        self.producer = kafka_clients.producer(settings, settings.bootstrap_servers)

    def publish(self) -> None:
        for record in fleet(self.settings, time.time()):
            self.producer.send(self.settings.status_topic, key=record.worker.encode(),
                               value=record.model_dump_json().encode())
        self.producer.flush(10)

    def run(self) -> None:
        while not self.stop.wait(self.settings.status_interval_s):
            self.publish()
        self.producer.close(5)


def load_times(url: str, n: int) -> list[tuple[float, float]]:
    """(to the load event, to 8 rows in the workers table), in seconds, for each of ``n`` loads."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        for _ in range(n):
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            page = context.new_page()
            start = time.perf_counter()
            page.goto(url + "#workers", wait_until="load")
            loaded = time.perf_counter()
            page.wait_for_function(f"document.querySelectorAll('#workers tbody tr').length === {WORKERS}",
                                   timeout=30_000)
            times.append((loaded - start, time.perf_counter() - start))
            context.close()
        browser.close()
    return times


def _wait_for_workers(url: str, console: subprocess.Popen, timeout: float = 60) -> None:
    """Until the console (``sentistream console``, a process of its own) lists every worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if console.poll() is not None:
            raise SystemExit(f"sentistream console exited {console.returncode}: {console.stderr.read()[-2000:]}")
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url + "api/workers", timeout=2) as answer:
            if len(json.load(answer)["workers"]) >= WORKERS:
                return
        time.sleep(0.2)
    raise SystemExit(f"the console did not list {WORKERS} workers within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap")
    parser.add_argument("-n", type=int, default=5, help="page loads")
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    base = Settings(bootstrap_servers=args.bootstrap, status_interval_s=5.0, status_topic=f"console-load-{run}.status",
                    control_topic=f"console-load-{run}.control", input_topic=f"console-load-{run}.in",
                    group_id=f"console-load-{run}")
    with soak_broker(base, "console-load-broker") as settings:
        admin = kafka_clients.admin(settings, settings.bootstrap_servers)
        kafka_clients.ensure_topics(admin, status_topic_spec(settings))
        reporter = Reporter(settings)
        reporter.publish()
        reporter.start()
        port = free_port()
        console = subprocess.Popen(settings_command("console", settings, "--port", str(port)),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_for_workers(url, console)
            times = load_times(url, args.n)
        finally:
            console.terminate()
            console.wait(10)
            reporter.stop.set()
            with contextlib.suppress(Exception):
                admin.delete_topics([settings.status_topic, settings.control_topic])
            admin.close()
    for i, (loaded, rows) in enumerate(times, 1):
        print(f"load {i}: load event {loaded * 1000:.0f} ms, {WORKERS} worker rows {rows * 1000:.0f} ms")
    for name, values in (("load event", [t[0] for t in times]), (f"{WORKERS} worker rows", [t[1] for t in times])):
        print(f"{name}: median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
