"""Exact end-to-end latency, message by message, at offered loads relative to the peak.

One message's latency is the broker's append time of its result minus the time the bench sent its
input: the input's timestamp is set by the bench at send time (CreateTime) and the output topic
is created with ``message.timestamp.type=LogAppendTime``, so the result's timestamp is when the
broker appended it, i.e. acknowledged it (one replica). Both are this machine's clock (a local
broker). No histogram buckets: every figure is a quantile of the messages' own latencies.

Three rows at the same offered rates, each on fresh topics:
- ``worker``: ``sentistream worker`` (1 process, 1 thread) with the bundle;
- ``transport``: the same worker with a no-op model (same tokenizer and labels, a graph that
  costs ~nothing): what Kafka, the loop and tokenization cost;
- ``echo``: bare kafka-python, consume → produce, no model, no loop of ours: the floor.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentistream.bench.run import Topics
from sentistream.bench.scrape import wait_ready
from sentistream.bench.worker_process import worker_command
from sentistream.broker.local import free_port
from sentistream.worker import kafka_clients
from sentistream.worker.bundle import Manifest, staged_bundle
from sentistream.worker.settings import Settings

PARTITIONS = 4
QUANTILES = (0.5, 0.95, 0.99)
# Each row's load runs this long before the messages whose latency is counted: a fresh process on
# fresh topics spends its first seconds on metadata, group join, first commits and the broker's
# first appends to new partitions (docs/performance.md, "Tails at half the peak"). The p99 with
# them is reported beside.
WARMUP_S = 3.0


@dataclass
class Latency:
    row: str
    rate: float
    sent: int
    received: int
    ms: dict[float, float]  # quantile -> milliseconds, of the messages sent after the warm-up
    p99_all: float  # p99 of every message, the warm-up's too

    def line(self) -> str:
        q = " ".join(f"p{int(k * 100)} {v:6.1f}" for k, v in self.ms.items())
        return (f"{self.row:<10} {self.rate:7.1f} msg/s  {q} ms  (with the first {WARMUP_S:g} s: p99 {self.p99_all:.1f})"
                f"  ({self.received}/{self.sent})")


def noop_bundle(src: Path, out: Path) -> Path:
    """``src``'s tokenizer and labels with a model that returns zeros: logits = 0 · Σ input_ids."""
    import shutil

    import onnx
    from onnx import TensorProto, helper

    m = Manifest.read(src)
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"]) for name in m.inputs]
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["ids_f", "axes"], ["total"], keepdims=1),
             helper.make_node("MatMul", ["total", "zeros"], [m.output])]
    init = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("zeros", TensorProto.FLOAT, [1, len(m.labels)], [0.0] * len(m.labels))]
    output = helper.make_tensor_value_info(m.output, TensorProto.FLOAT, ["batch", len(m.labels)])
    graph = helper.make_graph(nodes, "noop", inputs, [output], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with staged_bundle(out) as stage:
        onnx.save(model, str(stage / "model.onnx"))
        shutil.copy(src / "tokenizer.json", stage / "tokenizer.json")
        plain = m.model_copy(update={"name": f"{m.name}-noop", "precision": "fp32", "quantization": None,
                                     "session_config": {}, "figures": None, "parity": None})
        plain.rehashed(stage).write(stage)
    return out


def offer(s: Settings, rate: float, seconds: float, texts: list[str]) -> dict[str, float]:
    """Send ``rate`` msgs/s for ``seconds``; the send time (ms, also the record's timestamp) of each id."""
    producer = kafka_clients.producer(s, s.bootstrap_servers, linger_ms=0)
    # The first send would wait for the connection and the topic's metadata (~0.1 s) and then
    # release a burst: the offered load would not be steady from its first message.
    producer.partitions_for(s.input_topic)
    sent: dict[str, float] = {}
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now_ms = time.time() * 1000
        sent[f"l{i}"] = now_ms
        producer.send(s.input_topic, key=str(i % 64).encode(), timestamp_ms=int(now_ms),
                      value=json.dumps({"id": f"l{i}", "text": texts[i % len(texts)]}).encode())
    producer.flush()
    producer.close()
    return sent


def collect(s: Settings, want: int, timeout: float, ready: threading.Event, out: dict[str, float]) -> None:
    """Read the output topic from the start until ``want`` distinct ids came: id -> append time (ms)."""
    consumer = kafka_clients.consumer(s, s.bootstrap_servers, group_id=None, fetch_max_wait_ms=50)
    consumer.subscribe([s.output_topic])
    ready.set()
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                with contextlib.suppress(ValueError, KeyError, TypeError):  # not a result of ours
                    out.setdefault(json.loads(r.value)["id"], float(r.timestamp))
    consumer.close()


def _process(row: str, s: Settings, bundle: Path | None, extra: list[str]) -> tuple[subprocess.Popen, str | None]:
    if row == "echo":
        cmd = [sys.executable, "-m", "sentistream.bench.latency", "echo", s.bootstrap_servers, s.input_topic,
               s.output_topic, s.group_id]
        return subprocess.Popen(cmd), None
    port = free_port()
    cmd = worker_command(s, *extra, metrics_port=port, bundle=bundle, processes=1, threads=1, log_level="ERROR")
    return subprocess.Popen(cmd), f"http://127.0.0.1:{port}/metrics"


def measure(row: str, settings: Settings, bootstrap: str, bundle: Path | None, rate: float, seconds: float,
            texts: list[str], extra: list[str] = ()) -> Latency:
    """Offer ``rate`` msgs/s for ``seconds`` to a fresh ``row`` process; each message's latency."""
    topics = Topics(settings, bootstrap, PARTITIONS, output_configs={"message.timestamp.type": "LogAppendTime"})
    s = topics.settings
    proc, url = _process(row, s, bundle, list(extra))
    try:
        if url is not None:
            wait_ready(url, proc=proc)
        else:
            time.sleep(3)  # the echo has no readiness endpoint: give it its group join
        return latencies(row, rate, *offer_and_collect(s, rate, seconds, texts))
    finally:
        stop(proc)
        topics.drop()


def offer_and_collect(s: Settings, rate: float, seconds: float,
                      texts: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Offer ``rate`` msgs/s for WARMUP_S + ``seconds`` while reading the results: (id -> send
    time, id -> the result's append time), in ms."""
    arrived: dict[str, float] = {}
    ready = threading.Event()
    reader = threading.Thread(target=collect, args=(s, int(rate * (WARMUP_S + seconds)), seconds + 60, ready, arrived),
                              daemon=True)
    reader.start()
    ready.wait(30)
    sent = offer(s, rate, WARMUP_S + seconds, texts)
    reader.join()
    return sent, arrived


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def latencies(row: str, rate: float, sent: dict[str, float], arrived: dict[str, float]) -> Latency:
    """The quantiles of the messages sent after the first WARMUP_S seconds, and the p99 of all."""
    counted_from = min(sent.values(), default=0.0) + WARMUP_S * 1000
    counted = [i for i, at in sent.items() if at >= counted_from]
    lat = np.array([arrived[i] - sent[i] for i in counted if i in arrived])
    every = np.array([arrived[i] - sent[i] for i in sent if i in arrived])
    ms = {q: float(np.quantile(lat, q)) if len(lat) else float("nan") for q in QUANTILES}
    return Latency(row, rate, len(counted), len(lat), ms, float(np.quantile(every, 0.99)) if len(every) else float("nan"))


def echo(bootstrap: str, input_topic: str, output_topic: str, group: str) -> None:
    """A bare kafka-python echo: every input record's value to the output topic, nothing else."""
    from kafka import KafkaConsumer, KafkaProducer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = KafkaConsumer(input_topic, bootstrap_servers=bootstrap.split(","), group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=True)
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=0)
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=100).values():
            for r in records:
                producer.send(output_topic, value=r.value, key=r.key)
    producer.close(5)
    consumer.close()


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "echo":
    echo(*sys.argv[2:])


def run(settings: Settings, bootstrap: str, bundle: Path, texts: list[str], seconds: float, out_dir: Path,
        extra_rows: dict[str, list[str]] | None = None, say=print) -> list[Latency]:
    """The peak of one worker (1 process × 1 thread, drained from a preloaded topic), then every
    row at 25, 50 and 75 % of it; writes ``latency.md`` into ``out_dir``."""
    from sentistream.bench.run import machine_facts, worker_throughput

    peak, _ = worker_throughput(settings, bootstrap, bundle, texts[:3000], 1, 1, 32, PARTITIONS)
    say(f"peak of 1 worker × 1 thread: {peak:.0f} msg/s")
    noop = noop_bundle(bundle, out_dir / "noop-bundle")
    rows: list[tuple[str, Path | None, list[str]]] = [("worker", bundle, []), ("transport", noop, []),
                                                      ("echo", None, [])]
    rows += [(name, bundle, flags) for name, flags in (extra_rows or {}).items()]
    results = []
    for share in (0.25, 0.5, 0.75):
        for row, b, flags in rows:
            lat = measure(row, settings, bootstrap, b, peak * share, seconds, texts, flags)
            say(f"{int(share * 100)} % of peak  " + lat.line())
            results.append(lat)
    lines = [f"# Latency ({time.strftime('%Y-%m-%d')}), {machine_facts()}", "",
             f"Peak (1 worker, 1 thread, drained): {peak:.0f} msg/s; {seconds:.0f} s counted per row, after "
             f"{WARMUP_S:g} s of the same load; latency = the result's broker append time minus the input's send "
             "time, every message.", "",
             f"| offered | row | p50 ms | p95 ms | p99 ms | p99 with the first {WARMUP_S:g} s | received |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.rate:.0f} msg/s | {r.row} | {r.ms[0.5]:.1f} | {r.ms[0.95]:.1f} | {r.ms[0.99]:.1f} | "
              f"{r.p99_all:.1f} | {r.received}/{r.sent} |" for r in results]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latency.md").write_text("\n".join(lines) + "\n")
    return results
