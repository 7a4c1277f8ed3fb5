"""Prometheus metrics: defined once here, incremented where things happen; health endpoints.

With ``--processes N`` the children write to a shared multiprocess directory and the supervisor
serves one ``/metrics`` for all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from sentistream.worker.contract import Reason
from sentistream.worker.health import PROBLEMS

if TYPE_CHECKING:
    from sentistream.worker.bundle import Bundle

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def consumer_lag_gauge(registry: CollectorRegistry | None) -> Gauge:
    """Set by a single worker (``--processes 1``), else by the supervisor's lag monitor alone."""
    return Gauge("sentistream_consumer_lag", "Records not yet processed, per partition.",
                 ["topic", "partition"], registry=registry, multiprocess_mode="livesum")


class WorkerMetrics:
    """Every metric the worker exports. Names follow Prometheus conventions."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.consumed = Counter("sentistream_messages_consumed_total",
                                "Input records taken into a batch by this worker.", registry=r)
        self.classified = Counter("sentistream_messages_classified_total",
                                  "Sentences classified and published, by label.", ["label"], registry=r)
        self.dead_lettered = Counter("sentistream_messages_dead_lettered_total",
                                     "Input records sent to the dead-letter topic, by reason.",
                                     ["reason"], registry=r)
        self.batch_size = Histogram("sentistream_batch_size", "Sentences per inference batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "sentistream_inference_seconds",
            "Padding + onnxruntime time per batch (a poll's sentences are tokenized together first).",
            buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram(
            "sentistream_end_to_end_seconds",
            "Input record timestamp to result acknowledged by the broker.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.lag = consumer_lag_gauge(r)
        self.model_info = Gauge("sentistream_model_info", "The served model bundle (value 1), and the runtime "
                                "that runs it.", ["name", "version", "sha256", "runtime"], registry=r,
                                multiprocess_mode="livemax")
        self.ready = Gauge("sentistream_worker_ready", "1 while /readyz would answer 200 (see "
                           "sentistream_worker_problem for why not).", registry=r, multiprocess_mode="liveall")
        self.problem = Gauge("sentistream_worker_problem", "1 while a problem keeps the worker from being "
                             "ready.", ["problem"], registry=r, multiprocess_mode="liveall")
        self.loop_turned = Gauge("sentistream_loop_last_turn_timestamp_seconds",
                                 "Unix time of the run loop's last turn (a stuck loop stops it).",
                                 registry=r, multiprocess_mode="liveall")
        self.loop_turned_monotonic = Gauge(
            "sentistream_loop_last_turn_monotonic_seconds",
            "time.monotonic() of the run loop's last turn: one clock for all processes of a host (Linux), "
            "untouched by wall-clock steps; the supervisor's start-up and stall checks read it.",
            registry=r, multiprocess_mode="liveall")
        self.breaker_open = Gauge("sentistream_dlq_breaker_open_partitions", "Partitions paused by the dead-letter "
                                  "breaker (worker/breaker.py) until `sentistream dlq resume` or a new model.",
                                  registry=r, multiprocess_mode="livesum")
        self.breaker_trips = Counter("sentistream_dlq_breaker_trips_total", "Times the dead-letter breaker opened "
                                     "on a partition.", registry=r)
        self.tried_alone = Counter("sentistream_records_tried_alone_total", "Records processed one at a time "
                                   "because their partition came from a worker that died (worker/quarantine.py)",
                                   registry=r)
        self.publish_blocked = Counter("sentistream_publish_blocked_total",
                                       "Times a partition was paused and rewound because a result or dead "
                                       "letter could not be published (retried with back-off).", ["topic"],
                                       registry=r)
        self.paused = Gauge("sentistream_paused_partitions", "Partitions paused until a publish retry.",
                            registry=r, multiprocess_mode="livesum")
        self.assigned = Gauge("sentistream_assigned_partitions", "Partitions this worker owns.",
                              registry=r, multiprocess_mode="livesum")
        self.shadow_agreement = Gauge("sentistream_shadow_agreement_ratio", "Share of sentences on which the "
                                      "shadow (candidate) bundle agreed with the serving one, since it started.",
                                      registry=r, multiprocess_mode="liveall")
        self.shadow_confusion = Counter("sentistream_shadow_predictions_total", "Sentences classified by both the "
                                        "serving and the shadow bundle, by their two labels (the confusion "
                                        "between them).", ["serving", "shadow"], registry=r)
        self.shadow_inference_seconds = Histogram("sentistream_shadow_inference_seconds",
                                                  "Padding + onnxruntime time per batch of the shadow bundle.",
                                                  buckets=LATENCY_BUCKETS, registry=r)
        self.shadow_info = Gauge("sentistream_shadow_info", "The shadow (candidate) bundle running beside the "
                                 "serving one (value 1).", ["name", "version", "sha256"], registry=r,
                                 multiprocess_mode="livemax")
        self.shadow_dropped = Counter("sentistream_shadow_dropped_total", "Shadow bundles dropped because they "
                                      "failed to load or failed on a batch (serving went on).", ["reason"],
                                      registry=r)
        self.model_swaps = Counter("sentistream_model_swaps_total", "Times the serving bundle changed without a "
                                   "restart, by command (promote, rollback, auto).", ["command"], registry=r)
        self.control_refused = Counter("sentistream_control_refused_total", "Control-topic commands refused "
                                       "(nothing changed), by reason.", ["reason"], registry=r)
        for reason in ("load_failed", "crashed"):
            self.shadow_dropped.labels(reason)
        for command in ("promote", "rollback", "auto"):
            self.model_swaps.labels(command)
        for reason in ("unknown_bundle", "hash_mismatch", "label_change", "load_failed", "invalid_command"):
            self.control_refused.labels(reason)
        for reason in Reason:  # every series exists from the start, so rate() sees its first increase
            self.dead_lettered.labels(reason.value)
        for problem in PROBLEMS:
            self.problem.labels(problem)

    def problem_changed(self, problem: str, holds: bool) -> None:
        self.problem.labels(problem).set(1 if holds else 0)

    def serving(self, bundle: Bundle) -> None:
        """Announce the loaded bundle; its labels' counters start at 0 (see above)."""
        self.model_info.labels(*_model_labels(bundle)).set(1)
        for label in bundle.labels:
            self.classified.labels(label)

    def retired(self, bundle: Bundle) -> None:
        """The bundle no longer serves (swapped out without a restart)."""
        self.model_info.labels(*_model_labels(bundle)).set(0)


def _model_labels(bundle: Bundle) -> tuple[str, str, str, str]:
    m = bundle.manifest
    return m.name, m.version, m.files["model.onnx"], bundle.runtime


class SupervisorMetrics:
    """What the ``--processes N`` supervisor itself exports, beside its children's metrics."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.restarts = Counter("sentistream_worker_restarts_total",
                                "Worker processes the supervisor restarted after they exited or stalled "
                                "(its log says which and why).", registry=registry)
        self.lag = consumer_lag_gauge(registry)


def multiprocess_registry() -> CollectorRegistry:
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


Probe = Callable[[], tuple[bool, str]]


def serve(host: str, port: int, registry: CollectorRegistry, live: Probe, ready: Probe) -> ThreadingHTTPServer:
    """``/metrics``, ``/healthz`` (the loop turns) and ``/readyz`` (and nothing is wrong), in a
    daemon thread. A failing probe answers 503 with its reason as the body."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = (live if path == "/healthz" else ready)()
                self._send(200 if ok else 503, f"{why}\n".encode())
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
