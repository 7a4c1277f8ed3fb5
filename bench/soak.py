"""The soak (`sentistream bench --soak MINUTES`): steady load for a long time, with a worker
restarted every few minutes; does memory creep, does latency drift, is anything lost?

Two worker processes share one consumer group on topics of their own. Worker A runs the whole
time: its memory is the verdict (with ``--processes 1`` the worker process itself holds the model;
there is no supervisor). Worker B gets SIGTERM and is started again every ``restart_every``
seconds, half a period out of step (at ½, 1½, 2½ … periods), so A goes through two rebalances
each time and each third of the run gets as many restarts as the others when the period divides
it. The offered rate defaults to half of one worker's measured peak, so A alone keeps up while B
is away.

In this process: a feeder thread sends ``{"id", "text"}`` at the rate and notes each id's send
time; a monitor thread reads the output and dead-letter topics (read_committed, from the start,
no group) and notes each id's first arrival and how often it came; a sampler thread reads
``/proc`` (RSS, open files, threads) of A and B and the group's lag every ``SAMPLE_EVERY_S``.
At the end every acknowledged id is reconciled (lost must be 0) and the verdict rules below are
applied; ``soak.csv``, ``soak-latency.csv``, ``soak.md`` and ``soak.png`` go to the out folder.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from sentistream.bench.scrape import wait_ready
from sentistream.bench.texts import example_reviews
from sentistream.bench.traffic import Feeder, Monitor
from sentistream.bench.worker_process import worker_command
from sentistream.broker.local import free_port
from sentistream.worker import kafka_clients
from sentistream.worker.lag import LagMonitor
from sentistream.worker.settings import Settings

SAMPLE_EVERY_S = 5.0
WINDOW_S = 30.0  # latency percentiles per window
WARMUP_SHARE, WARMUP_MAX_S = 0.25, 180.0  # RSS slope: after min(25 % of the run, 3 min)
RSS_BAR_MB_PER_10MIN = 1.0  # the bar, for runs of 10 minutes or more
# Under 10 minutes a slope is noise-dominated (2-minute runs measured +1.3, +8.1 and, with the static int8
# bundle whose arena grows with each new batch shape, +38 MB per 10 min while the first allocations
# settle): this bar only catches gross leaks, e.g. 4 kB per record at 40 msgs/s.
SHORT_RUN_BAR_MB_PER_10MIN = 100.0
# "p99 flat": the steady records' p99 in the last third ≤ 2 × the first third's + 20 ms (+ 100 ms under
# 10 minutes: a third's p99 is then its ~13th-worst record, at the mercy of a neighbour's burst on a shared
# machine). Steady: sent outside a restart (from B's SIGTERM until the new B is ready + SETTLE_S). The
# restarts' own pauses are reported beside it: they are rebalances, not a drift, and would make the rule
# a coin toss.
P99_FACTOR, P99_SLACK_S, SHORT_RUN_P99_SLACK_S = 2.0, 0.020, 0.100
SETTLE_S = 5.0
TARGET_PERIOD_S = 180.0
DRAIN_TIMEOUT_S = 120.0  # after the feed stops, for the last results to arrive
STOP_TIMEOUT_S = 60.0


def default_restart_every(minutes: float) -> float:
    """About every 3 minutes, but a whole number of periods per third of the run (so the thirds
    compare alike): 200 s for 30 minutes; a short run restarts 3 times (40 s for 2 minutes)."""
    third = minutes * 60 / 3
    return max(10.0, third / max(1, round(third / TARGET_PERIOD_S)))


def warmup_s(duration_s: float) -> float:
    return min(WARMUP_SHARE * duration_s, WARMUP_MAX_S)


def rss_bar(minutes: float) -> float:
    return RSS_BAR_MB_PER_10MIN if minutes >= 10 else SHORT_RUN_BAR_MB_PER_10MIN


def p99_slack(minutes: float) -> float:
    return P99_SLACK_S if minutes >= 10 else SHORT_RUN_P99_SLACK_S


# -- measurements ------------------------------------------------------------------------------
def proc_stats(pid: int | None) -> tuple[float, int, int] | None:
    """(RSS in MB, open file descriptors, threads) of ``pid`` from /proc; None once it is gone."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, fds, int(fields["Threads"])


def slope_per_10min(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per 10 minutes; 0 for < 2 points."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * 600


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of exact values (no histogram buckets)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class _LagGauge:
    """Stands in for the Prometheus gauge :class:`LagMonitor` sets: keeps the latest per partition."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def labels(self, _topic: str, partition: str) -> _LagGauge._Child:
        return _LagGauge._Child(self.values, partition)

    @dataclass
    class _Child:
        values: dict[str, float]
        partition: str

        def set(self, value: float) -> None:
            self.values[self.partition] = value

    def total(self) -> float | None:
        return sum(self.values.values()) if self.values else None


# -- the moving parts ---------------------------------------------------------------------------
@dataclass
class SoakWorker:
    """One ``sentistream worker`` process (1 process × 1 thread), its log appended to ``log``."""

    settings: Settings
    log: Path
    proc: subprocess.Popen | None = None
    port: int = 0
    starts: int = 0

    def start(self) -> SoakWorker:
        self.port = free_port()
        cmd = worker_command(self.settings, metrics_port=self.port, processes=1, threads=1, log_level="WARNING")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def ready(self) -> bool:
        """Its /readyz answers 200: model loaded, partitions assigned, nothing wrong."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        wait_ready(f"http://127.0.0.1:{self.port}/metrics", timeout=timeout, proc=self.proc)

    def stop(self) -> int | None:
        """SIGTERM: the worker finishes its batch, commits and leaves the group."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


class Sampler:
    """Every ``SAMPLE_EVERY_S``: /proc figures of A and B and the group's lag, as rows."""

    COLUMNS = ("t_s", "a_pid", "a_rss_mb", "a_fds", "a_threads", "b_pid", "b_rss_mb", "b_fds", "b_threads", "lag")

    def __init__(self, settings: Settings, a: SoakWorker, b: SoakWorker, started: float) -> None:
        self.a, self.b, self.started = a, b, started
        self.lag = _LagGauge()
        self.lag_monitor = LagMonitor(settings, self.lag, every_s=SAMPLE_EVERY_S)
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self.lag_monitor.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.lag_monitor.stop()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.rows.append(self.sample())

    def sample(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t_s": round(time.time() - self.started, 1), "lag": self.lag.total()}
        for name, w in (("a", self.a), ("b", self.b)):
            pid = w.pid
            stats = proc_stats(pid)
            row[f"{name}_pid"] = pid
            row[f"{name}_rss_mb"], row[f"{name}_fds"], row[f"{name}_threads"] = (
                (round(stats[0], 2), stats[1], stats[2]) if stats else (None, None, None))
        return row


# -- figures and verdict -----------------------------------------------------------------------
@dataclass
class Figures:
    minutes: float
    rate: float
    peak: float | None
    restart_every: float
    bootstrap: str
    restarts: list[tuple[float, float | None]] = field(default_factory=list)  # (SIGTERM, new B ready), s
    sent: int = 0
    acked: int = 0
    unacknowledged: int = 0
    lost: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    warmup_s: float = 0.0
    rss_start: float | None = None  # A, first sample
    rss_after_warmup: float | None = None
    rss_end: float | None = None
    rss_slope: float = 0.0  # MB per 10 minutes, after warm-up
    rss_bar: float = RSS_BAR_MB_PER_10MIN
    fds: tuple[int, int] | None = None  # A: min, max
    threads: tuple[int, int] | None = None
    b_rss_max: float | None = None
    lag_max: float | None = None
    thirds: list[tuple[int, float | None, float | None]] = field(default_factory=list)  # (n, p50, p99) in s
    steady_thirds: list[tuple[int, float | None, float | None]] = field(default_factory=list)
    restart_worst: float | None = None  # the worst latency of a record sent during a restart
    p50: float | None = None
    p99: float | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def latency_rows(sent_at: dict[str, float], first_seen: dict[str, float]) -> list[tuple[float, float]]:
    """(send time, first arrival − send time) per id that came out, in send order."""
    return sorted((t, first_seen[rid] - t) for rid, t in sent_at.items() if rid in first_seen)


def windows(rows: list[tuple[float, float]], start: float, width: float) -> list[tuple[float, int, float, float]]:
    """(window start in s from ``start``, n, p50, p99) per ``width`` seconds of send time."""
    buckets: dict[int, list[float]] = {}
    for t, lat in rows:
        buckets.setdefault(int((t - start) // width), []).append(lat)
    return [(k * width, len(v), percentile(v, 0.5), percentile(v, 0.99)) for k, v in sorted(buckets.items())]


def by_thirds(rows: list[tuple[float, float]], start: float, end: float) -> list[tuple[int, float | None, float | None]]:
    span = (end - start) / 3
    parts: list[list[float]] = [[], [], []]
    for t, lat in rows:
        parts[min(2, max(0, int((t - start) // span)))].append(lat)
    return [(len(p), percentile(p, 0.5), percentile(p, 0.99)) for p in parts]


def judge(fig: Figures, samples: list[dict[str, Any]], rows: list[tuple[float, float]], start: float,
          end: float) -> None:
    """Fill in the memory and latency figures and the failures (the verdict rules above)."""
    a = [(r["t_s"], r["a_rss_mb"]) for r in samples if r["a_rss_mb"] is not None]
    fig.warmup_s = warmup_s(end - start)
    steady = [(t, y) for t, y in a if t >= fig.warmup_s]
    if a:
        fig.rss_start, fig.rss_end = a[0][1], a[-1][1]
    if steady:
        fig.rss_after_warmup = steady[0][1]
        fig.rss_slope = slope_per_10min([t for t, _ in steady], [y for _, y in steady])
    fig.rss_bar = rss_bar(fig.minutes)
    for attr, col in (("fds", "a_fds"), ("threads", "a_threads")):
        values = [r[col] for r in samples if r[col] is not None]
        setattr(fig, attr, (min(values), max(values)) if values else None)
    b = [r["b_rss_mb"] for r in samples if r["b_rss_mb"] is not None]
    fig.b_rss_max = max(b) if b else None
    lags = [r["lag"] for r in samples if r["lag"] is not None]
    fig.lag_max = max(lags) if lags else None
    lats = [lat for _, lat in rows]
    fig.p50, fig.p99 = percentile(lats, 0.5), percentile(lats, 0.99)
    fig.thirds = by_thirds(rows, start, end)
    disturbed = [(start + at, start + (ready if ready is not None else end - start) + SETTLE_S)
                 for at, ready in fig.restarts]

    def during_restart(t: float) -> bool:
        return any(lo <= t <= hi for lo, hi in disturbed)

    fig.steady_thirds = by_thirds([r for r in rows if not during_restart(r[0])], start, end)
    fig.restart_worst = max((lat for t, lat in rows if during_restart(t)), default=None)
    if fig.lost:
        fig.failures.append(f"{fig.lost} acknowledged record(s) lost")
    if len(steady) < 3:
        fig.failures.append("too few memory samples after warm-up for a slope")
    elif fig.rss_slope > fig.rss_bar:
        fig.failures.append(f"worker A's RSS grew {fig.rss_slope:.2f} MB per 10 min after warm-up "
                            f"(bar {fig.rss_bar:g})")
    first, last, slack = fig.steady_thirds[0][2], fig.steady_thirds[2][2], p99_slack(fig.minutes)
    if first is not None and last is not None and last > P99_FACTOR * first + slack:
        fig.failures.append(f"p99 not flat: steady records' last third {last * 1000:.0f} ms > {P99_FACTOR:g} × "
                            f"first third {first * 1000:.0f} ms + {slack * 1000:.0f} ms")


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def _spans(restarts: list[tuple[float, float | None]]) -> str:
    spans = [ready - at for at, ready in restarts if ready is not None]
    if not spans:
        return "n/a"
    never = len(restarts) - len(spans)
    return f"mean {sum(spans) / len(spans):.1f} s, max {max(spans):.1f} s" + (f", {never} never ready" if never else "")


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MB"


def report(fig: Figures) -> str:
    """The figures as a Markdown table (soak.md, and what the command prints)."""
    peak = f" (half of one worker's measured peak, {fig.peak:.0f} msgs/s)" if fig.peak else " (given)"
    rows = [
        ("duration", f"{fig.minutes:g} min of steady load"),
        ("offered rate", f"{fig.rate:.1f} msgs/s{peak}"),
        ("workers", "A: runs throughout; B: SIGTERM + start again; 1 process × 1 thread each, one group, 4 partitions"),
        ("restarts of B", f"{len(fig.restarts)} (every {fig.restart_every:.0f} s, from {fig.restart_every / 2:.0f} s); "
                          f"SIGTERM → new B ready: {_spans(fig.restarts)}"),
        ("records", f"{fig.sent:,} sent, {fig.acked:,} acknowledged, {fig.unacknowledged} not acknowledged"),
        ("lost", f"{fig.lost}"),
        ("duplicates", f"{fig.duplicates}"),
        ("dead letters", f"{fig.dead_letters}"),
        ("A RSS: first sample / after warm-up / end", f"{_mb(fig.rss_start)} / {_mb(fig.rss_after_warmup)} / "
                                                      f"{_mb(fig.rss_end)}"),
        ("A RSS slope after warm-up", f"{fig.rss_slope:+.2f} MB per 10 min (warm-up {fig.warmup_s:.0f} s; "
                                      f"bar {fig.rss_bar:g} MB per 10 min)"),
        ("A open files (min–max)", "n/a" if fig.fds is None else f"{fig.fds[0]}–{fig.fds[1]}"),
        ("A threads (min–max)", "n/a" if fig.threads is None else f"{fig.threads[0]}–{fig.threads[1]}"),
        ("B RSS (max, any life)", _mb(fig.b_rss_max)),
        ("consumer lag (max sampled)", "n/a" if fig.lag_max is None else f"{fig.lag_max:.0f}"),
        ("end to end p50 / p99 (whole run)", f"{_ms(fig.p50)} / {_ms(fig.p99)}"),
    ]
    for name, (n, p50, p99), (sn, sp50, sp99) in zip(("first", "middle", "last"), fig.thirds, fig.steady_thirds,
                                                      strict=False):
        rows.append((f"end to end, {name} third: p50 / p99 of all records; of steady records",
                     f"{_ms(p50)} / {_ms(p99)} ({n:,}); {_ms(sp50)} / {_ms(sp99)} ({sn:,})"))
    rows.append(("worst end to end of a record sent during a restart", _ms(fig.restart_worst)))
    rows.append(("p99 rule", f"steady last third ≤ {P99_FACTOR:g} × steady first third + "
                             f"{p99_slack(fig.minutes) * 1000:.0f} ms (steady: not sent from a SIGTERM of B "
                             f"until the new B is ready + {SETTLE_S:.0f} s)"))
    rows.append(("verdict", "PASS" if not fig.failures else "FAIL: " + "; ".join(fig.failures)))
    lines = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join([*lines, "", *fig.notes])


# -- output files -------------------------------------------------------------------------------
def write_csv(path: Path, columns: tuple[str, ...] | list[str], rows: list) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(columns)
        for row in rows:
            out.writerow([row[c] for c in columns] if isinstance(row, dict) else row)


def plot(samples: list[dict[str, Any]], lat_windows: list[tuple[float, int, float, float]],
         fig: Figures, path: Path) -> bool:
    """Four panels over time; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def col(name: str) -> tuple[list[float], list[float]]:
        pts = [(r["t_s"] / 60, r[name]) for r in samples if r[name] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    figure, ax = plt.subplots(2, 2, figsize=(13, 7.5), sharex=True)
    ax[0][0].plot(*col("a_rss_mb"), label="A (runs throughout)")
    ax[0][0].plot(*col("b_rss_mb"), label="B (restarted)", alpha=0.6)
    ax[0][0].axvspan(0, fig.warmup_s / 60, color="grey", alpha=0.08, label="warm-up")
    ax[0][0].set_ylabel("RSS (MB)")
    ax[0][0].set_title(f"Memory: A's slope after warm-up {fig.rss_slope:+.2f} MB / 10 min")
    ax[0][1].plot([w[0] / 60 for w in lat_windows], [w[3] * 1000 for w in lat_windows], label="p99")
    ax[0][1].plot([w[0] / 60 for w in lat_windows], [w[2] * 1000 for w in lat_windows], label="p50")
    ax[0][1].set_yscale("log")
    ax[0][1].set_ylabel(f"end to end (ms, per {WINDOW_S:.0f} s of sends)")
    ax[0][1].set_title("Latency")
    ax[1][0].plot(*col("a_fds"), label="A open files")
    ax[1][0].plot(*col("a_threads"), label="A threads")
    ax[1][0].set_ylabel("count")
    ax[1][0].set_title("Open files and threads of A")
    ax[1][1].plot(*col("lag"), label="lag")
    ax[1][1].set_ylabel("records")
    ax[1][1].set_title("Consumer-group lag")
    for a in ax.flat:
        for t, _ in fig.restarts:
            a.axvline(t / 60, color="grey", alpha=0.3, linewidth=0.8)
        a.legend(loc="upper left", fontsize=8)
    for a in ax[1]:
        a.set_xlabel("minutes (grey: B restarted)")
    figure.suptitle(f"sentistream soak: {fig.minutes:g} min at {fig.rate:.0f} msgs/s, {len(fig.restarts)} restarts, "
                    f"lost {fig.lost}")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


# -- the run ------------------------------------------------------------------------------------
@contextlib.contextmanager
def soak_broker(settings: Settings, folder: str = "soak-broker") -> Iterator[Settings]:
    """``settings`` as they are when they name a cluster; else (as ``bench`` does) a broker of the
    run's own under ``home/<folder>`` on a free port, stopped and wiped at the end."""
    from sentistream.broker.local import LocalCluster

    if settings.bootstrap_servers:
        yield settings
        return
    cluster = LocalCluster(settings.home, data_dir=settings.home / folder)
    cluster.down()  # one left by an interrupted run goes first
    state = cluster.up(nodes=1, port=0)
    try:
        yield settings.model_copy(update={"bootstrap_servers": state.bootstrap})
    finally:
        cluster.down()


def soak_settings(settings: Settings, bootstrap: str) -> Settings:
    """Topics and group of this run only (never mixed with other data; deleted at the end)."""
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(update={
        "bootstrap_servers": bootstrap, "partitions": 4, "group_id": f"soak-{run}", "input_topic": f"soak-{run}.in",
        "output_topic": f"soak-{run}.out", "dlq_topic": f"soak-{run}.dlq", "processes": 1, "threads": 1})


def measure_peak(settings: Settings, bootstrap: str, texts: list[str], n: int = 3000) -> float:
    """One worker's (1 process × 1 thread) drain throughput on these texts, on its own topics."""
    from sentistream.bench.run import worker_throughput
    from sentistream.worker.bundle import default_bundle_path

    sample = [texts[i % len(texts)] for i in range(n)]
    rate, _ = worker_throughput(settings, bootstrap, settings.bundle or default_bundle_path(), sample, 1, 1,
                                settings.batch_size, 4)
    return rate


def run_soak(settings: Settings, minutes: float, rate: float | None, restart_every: float, out_dir: Path,
             say: Callable[[str], None]) -> Figures:
    """The whole soak against ``settings``' cluster; files go to ``out_dir``."""
    bootstrap = kafka_clients.resolve_bootstrap(settings)
    texts = example_reviews()
    peak = None
    if rate is None:
        say("measuring one worker's peak (1 process × 1 thread) ...")
        peak = measure_peak(settings, bootstrap, texts)
        rate = peak / 2
    fig = Figures(minutes, rate, peak, restart_every, bootstrap)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = soak_settings(settings, bootstrap)
    admin = kafka_clients.admin(s, bootstrap)
    kafka_clients.ensure_topics(admin, kafka_clients.topic_specs(s))
    a, b = SoakWorker(s, out_dir / "soak-worker-a.log"), SoakWorker(s, out_dir / "soak-worker-b.log")
    parts: list[Any] = []
    try:
        say(f"soak: {minutes:g} min at {rate:.1f} msgs/s, B restarted every {restart_every:.0f} s; "
            f"topics {s.input_topic}/… on {bootstrap}")
        a.start().wait_ready()
        b.start().wait_ready()
        reader = kafka_clients.consumer(s, bootstrap, group_id=None, client_id="soak-monitor")
        reader.assign([TopicPartition(t, p) for t in (s.output_topic, s.dlq_topic) for p in range(s.partitions)])
        monitor = Monitor(reader, dlq_topic=s.dlq_topic).start()
        parts.append(monitor)
        start = time.time()
        sampler = Sampler(s, a, b, start).start()
        parts.append(sampler)
        feeder = Feeder(kafka_clients.producer(s, bootstrap, linger_ms=5), s.input_topic, rate, texts,
                        prefix="s").start()
        parts.append(feeder)
        _drive(fig, a, b, start, minutes * 60, restart_every, say)
        end = time.time()
        parts.clear()
        _reconcile(fig, feeder, monitor, sampler)
        rows = latency_rows(feeder.sent_at, monitor.first_seen)
        judge(fig, sampler.rows, rows, start, end)
        codes = {"A": a.stop(), "B": b.stop()}
        fig.failures += [f"worker {name} exited with {code} on SIGTERM" for name, code in codes.items()
                         if code not in (0, None)]
        fig.notes += [f"Worker exit codes at the end: A {codes['A']}, B {codes['B']}.",
                      "A and B are each a single `sentistream worker --processes 1` process: it holds the model "
                      "(no supervisor), so its RSS is the one that counts."]
        lat_windows = windows(rows, start, WINDOW_S)
        _write(out_dir, fig, sampler.rows, lat_windows, say)
        return fig
    finally:
        for p in reversed(parts):
            with contextlib.suppress(Exception):  # a run that failed midway: stop what still runs
                (p.close if isinstance(p, Feeder) else p.stop)()
        for w in (a, b):
            with contextlib.suppress(Exception):
                w.stop()
        try:
            admin.delete_topics(list(kafka_clients.topic_specs(s)))
        except Exception as exc:  # the figures stand; the topics are left for the operator
            say(f"could not delete the soak's topics ({exc})")
        admin.close()


def _reconcile(fig: Figures, feeder: Feeder, monitor: Monitor, sampler: Sampler) -> None:
    """Stop the feed, wait (at most DRAIN_TIMEOUT_S) until every acknowledged id came out, count
    lost and duplicated ids. A duplicate is a second result of one input: at-least-once allows
    them only around a rebalance (README, "Guarantees")."""
    expected: set[str] = set()
    try:
        feeder.stop()
        expected = set(feeder.acked)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not monitor.has_all(expected) and time.monotonic() < deadline and not fig.failures:
            time.sleep(0.5)
    finally:
        sampler.stop()
        monitor.stop()
    fig.sent, fig.acked, fig.unacknowledged = len(feeder.sent_at), len(expected), len(feeder.failed)
    fig.lost = len(expected - monitor.first_seen.keys())
    fig.duplicates = sum(n - 1 for rid, n in monitor.counts.items() if rid in feeder.sent_at)
    fig.dead_letters = monitor.dead_letters


def _drive(fig: Figures, a: SoakWorker, b: SoakWorker, start: float, duration: float, restart_every: float,
           say: Callable[[str], None]) -> None:
    """Until ``duration`` has passed: restart B on schedule and note when the new B is ready
    (``fig.restarts``); stop early if A dies."""
    next_restart, last_report = restart_every / 2, 0.0
    while (elapsed := time.time() - start) < duration:
        if a.pid is None:
            fig.failures.append(f"worker A exited (code {a.proc.returncode}) after {elapsed:.0f} s; see {a.log}")
            break
        if fig.restarts and fig.restarts[-1][1] is None and b.ready():
            fig.restarts[-1] = (fig.restarts[-1][0], time.time() - start)
        if elapsed >= next_restart:
            code = b.stop()
            fig.restarts.append((elapsed, None))
            b.start()
            next_restart += restart_every
            if code not in (0, None):
                fig.notes.append(f"B exited with code {code} when stopped at {elapsed:.0f} s.")
        if elapsed - last_report >= 60:
            last_report = elapsed
            say(f"  {elapsed / 60:.0f} / {duration / 60:g} min, {len(fig.restarts)} restart(s)")
        time.sleep(0.2)


def _write(out_dir: Path, fig: Figures, samples: list[dict[str, Any]],
           lat_windows: list[tuple[float, int, float, float]], say: Callable[[str], None]) -> None:
    write_csv(out_dir / "soak.csv", Sampler.COLUMNS, samples)
    write_csv(out_dir / "soak-latency.csv", ("window_start_s", "n", "p50_s", "p99_s"), lat_windows)
    if plot(samples, lat_windows, fig, out_dir / "soak.png"):
        fig.notes.append(f"Plot: {out_dir / 'soak.png'}. Samples: soak.csv; latency per {WINDOW_S:.0f} s: "
                         "soak-latency.csv.")
    else:
        say("plot skipped: matplotlib is not installed (pip install 'sentistream[bench]')")
    (out_dir / "soak.md").write_text(report(fig) + "\n")
