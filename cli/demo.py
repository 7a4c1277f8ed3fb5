"""``sentistream demo``: broker (started if none), topics, 2 workers, a review, a table, figures,
and a live model swap (two candidates as shadows: the workers' rule refuses one and promotes the other)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sentistream.bench.scrape import quantile, scrape, wait_ready
from sentistream.bench.worker_process import worker_command
from sentistream.broker.local import LocalCluster, free_port
from sentistream.worker import kafka_clients
from sentistream.worker.settings import Settings

REVIEW = (
    "The first act is sharp, funny and surprisingly tender. "
    "The middle drags badly, and the villain is a cardboard cutout. "
    "The soundtrack is fine. "
    "By the end I was moved to tears: a small masterpiece. "
    "Still, I would not watch it twice."
)
BURST = 2000
SHADOWED = 100  # sentences the demo sends to a shadow at a time
SWAP_WHEN = f"agreement>=0.97,after={SHADOWED}"  # per process: a candidate must agree on 97 %


def _collect(consumer, want: set[str], timeout: float = 60) -> dict[str, dict]:
    got: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while not want <= got.keys() and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                result = json.loads(r.value)
                if result["id"] in want:
                    got[result["id"]] = result
    return got


BARS = " ▁▂▃▄▅▆▇█"


def _spark(scores: dict[str, float]) -> str:
    return "".join(BARS[min(8, round(v * 8))] for v in scores.values())


def _table(title: str, rows: list[dict], labels: list[str]) -> Table:
    table = Table(title=title, title_justify="left", expand=True)
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("sentence", ratio=1)
    table.add_column("label", style="bold", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    table.add_column("scores", no_wrap=True)
    for i, r in enumerate(rows):
        table.add_row(str(i), r["text"], r["label"], f"{r['scores'][r['label']]:.2f}",
                      " ".join(_spark(r["scores"])))
    return table


def run_demo(settings: Settings, console: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="sentistream-demo-") as bundles:
        return _run_demo(settings, console, Path(bundles))


def _run_demo(settings: Settings, console: Console, bundles: Path) -> int:
    """The demo; ``bundles``: where its candidate bundle goes (a bundle root of its workers)."""
    from sentistream.worker.bundle import default_bundle_path

    cluster = admin = None
    demo_topics: list[str] = []
    if not settings.bootstrap_servers and LocalCluster(settings.home).state() is None:
        console.print("No Kafka configured: starting a local Apache Kafka (KRaft)…")
        cluster = LocalCluster(settings.home)
        state = cluster.up(nodes=1, port=0)
        settings = settings.model_copy(update={"bootstrap_servers": state.bootstrap})  # the runtime reads no tooling state
        console.print(f"  broker {state.kafka_version} up at {state.bootstrap}")
    workers = None
    try:
        bootstrap = kafka_clients.resolve_bootstrap(settings)
        run = uuid.uuid4().hex[:6]
        # Topics of its own, removed at the end: the demo never touches a user's data.
        settings = settings.model_copy(update={
            "bootstrap_servers": bootstrap, "group_id": f"demo-{run}",
            "input_topic": f"demo-{run}.sentences", "output_topic": f"demo-{run}.sentences.labeled",
            "dlq_topic": f"demo-{run}.sentences.dlq", "control_topic": f"demo-{run}.sentences.control",
            "partitions": 4})
        admin = kafka_clients.admin(settings, bootstrap)
        kafka_clients.ensure_topics(admin, kafka_clients.topic_specs(settings))
        demo_topics = [*kafka_clients.topic_specs(settings), settings.control_topic]
        port = settings.metrics_port or free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        cmd = worker_command(settings, bootstrap_servers=bootstrap, processes=2, split_sentences=True,
                             metrics_port=port, log_level="ERROR", swap_when=SWAP_WHEN,
                             bundle_roots=f"{default_bundle_path().parent}:{bundles}")
        console.print("Starting 2 worker processes (one consumer group)…")
        workers = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_ready(url, processes=2, proc=workers)

        consumer = kafka_clients.consumer(settings, bootstrap, group_id=None, auto_offset_reset="latest")
        consumer.subscribe([settings.output_topic])
        while not consumer.assignment():
            consumer.poll(timeout_ms=100)
        for tp in consumer.assignment():
            consumer.position(tp)  # pin "latest" before we send
        producer = kafka_clients.producer(settings, bootstrap)
        doc = f"review-{run}"
        producer.send(settings.input_topic, key=doc.encode(),
                      value=json.dumps({"id": doc, "text": REVIEW}).encode())
        from sentistream.worker.splitting import make_splitter

        sentences = [s.strip() for s in make_splitter()(REVIEW)]
        ids = [f"{doc}-s{i}" for i in range(len(sentences))]
        for sid, text in zip(ids, sentences, strict=True):
            producer.send(settings.input_topic, key=doc.encode(), value=json.dumps({"id": sid, "text": text}).encode())
        producer.flush()
        # With splitting on, a one-sentence message gives one result with id "<id>#0".
        want = {f"{doc}#{i}" for i in range(len(sentences))} | {f"{i}#0" for i in ids} | {doc}
        got = _collect(consumer, want)
        labels = list(next(iter(got.values()))["scores"]) if got else []
        whole = sorted((r for r in got.values() if r.get("doc_id") == doc), key=lambda r: r["sentence_index"])
        single = [got[f"{i}#0"] for i in ids if f"{i}#0" in got]
        console.print(f"[dim]scores: one bar per label, in order: {', '.join(labels)}[/dim]")
        console.print(_table("One message, split into sentences by the worker", whole, labels))
        if doc in got:
            review = got[doc]
            console.print(f"  review result: [bold]{review['label']}[/bold], score {review['score']:+.2f} on [-1, 1], "
                          f"{review['sentences']} sentences, label counts "
                          + ", ".join(f"{k} {v}" for k, v in review["label_counts"].items() if v))
        console.print(_table("The same sentences, one message each", single, labels))
        if len(got) < len(want):
            console.print(f"[red]missing {len(want) - len(got)} result(s)[/red]")
            return 1

        console.print(f"Throughput: sending {BURST} sentences…")
        before = scrape(url)
        started = time.monotonic()
        for i in range(BURST):
            text = sentences[i % len(sentences)]
            producer.send(settings.input_topic, key=str(i % 16).encode(),
                          value=json.dumps({"id": f"burst-{run}-{i}", "text": text}).encode())
        producer.flush()
        target = before.total("sentistream_messages_classified_total") + BURST
        while scrape(url).total("sentistream_messages_classified_total") < target:
            if time.monotonic() - started > 120:
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        after = scrape(url)
        done = after.total("sentistream_messages_classified_total") - before.total("sentistream_messages_classified_total")
        e2e = after.buckets("sentistream_end_to_end_seconds")
        prior = before.buckets("sentistream_end_to_end_seconds")
        p50, p99 = quantile(e2e, 0.5, prior), quantile(e2e, 0.99, prior)
        console.print(f"  {done:.0f} classified in {elapsed:.2f} s = [bold]{done / elapsed:.0f} messages/s[/bold] "
                      f"(2 processes × 1 thread; includes producing the burst)")
        if p50 is not None:
            console.print(f"  end-to-end latency under this burst (record timestamp → result acked): "
                          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (from the histogram)")
        code = _swap(settings, url, producer, consumer, sentences, run, console, bundles)
        producer.close()
        consumer.close()
        return code
    finally:
        if workers is not None and workers.poll() is None:
            console.print("Stopping the workers (SIGTERM: finish batch, commit, leave group)…")
            workers.send_signal(signal.SIGTERM)
            workers.wait(90)
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.delete_topics(demo_topics)
            admin.close()
        if cluster is not None:
            cluster.down()
            console.print("Local broker stopped.")



def _candidate(out: Path, max_length: int) -> Path:
    """A candidate bundle for the demo: the shipped model under version ``<version>-<n>tok``, reading
    at most ``max_length`` tokens (8: it disagrees on longer sentences; 128: it agrees on all of the
    demo's, which are shorter than the shipped 64)."""
    from sentistream.worker.bundle import MANIFEST, Manifest, default_bundle_path

    src = default_bundle_path()
    shipped = Manifest.read(src)
    out = out / f"{shipped.name}-{max_length}tok"
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != MANIFEST:
            shutil.copy2(f, out / f.name)
    manifest = shipped.model_copy(update={"version": f"{shipped.version}-{max_length}tok", "max_length": max_length})
    manifest.rehashed(out).write(out)
    return out


def _wait_for(url: str, done, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while not done(scrape(url)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _swap(settings: Settings, url: str, producer, consumer, sentences: list[str], run: str, console: Console,
          out: Path) -> int:
    """What an operator does with candidates: each runs as a shadow; the workers' rule (SWAP_WHEN)
    promotes only one that agrees with the serving model; the results then carry its version."""
    from sentistream.cli.model import write
    from sentistream.cli.top import shadow_summary
    from sentistream.worker.bundle import Manifest

    console.print(f"Live model swap (no restart), by the workers' rule --swap-when {SWAP_WHEN}:")
    sent = 0

    def feed(count: int) -> None:
        nonlocal sent
        for i in range(sent, sent + count):  # many keys: every partition, so every process, compares
            producer.send(settings.input_topic, key=str(i % 64).encode(),
                          value=json.dumps({"id": f"shadowed-{run}-{i}", "text": sentences[i % len(sentences)]}).encode())
        producer.flush()
        sent += count

    def promoted() -> bool:
        return scrape(url).total("sentistream_model_swaps_total", command="auto") >= 2  # both processes

    weak = _candidate(out, max_length=8)
    console.print("  " + write(settings, "shadow", weak))
    if not _wait_for(url, lambda s: s.total("sentistream_shadow_info") >= 1):  # livemax over processes
        console.print("[red]the workers did not start the shadow[/red]")
        return 1
    feed(3 * SHADOWED)
    _wait_for(url, lambda s: s.total("sentistream_shadow_predictions_total") >= 3 * SHADOWED)
    console.print(f"  {shadow_summary(scrape(url))}: "
                  + ("[red]promoted[/red]" if promoted() else "[bold]not promoted[/bold] (below the rule)"))
    if promoted():
        return 1
    good = _candidate(out, max_length=128)
    console.print("  " + write(settings, "shadow", good))
    started = sent
    while not promoted() and sent - started < 10 * SHADOWED:
        feed(SHADOWED)
        _wait_for(url, lambda s: promoted(), timeout=10)
    if not promoted():
        console.print(f"[red]the workers did not promote {good.name}[/red]")
        return 1
    console.print(f"  {Manifest.read(good).version} met the rule in both processes after {sent - started} sentences: "
                  "[bold]promoted by the workers[/bold]")
    ids = [f"after-{run}-{i}" for i in range(len(sentences))]
    for sid, text in zip(ids, sentences, strict=True):
        producer.send(settings.input_topic, key=b"after", value=json.dumps({"id": sid, "text": text}).encode())
    producer.flush()
    got = _collect(consumer, {f"{i}#0" for i in ids})
    rows = [got[f"{i}#0"] for i in ids if f"{i}#0" in got]
    versions = sorted({r["model"]["version"] for r in rows})
    console.print(_table(f"The same sentences after the swap: model version {', '.join(versions)}", rows,
                         list(rows[0]["scores"]) if rows else []))
    return 0 if len(rows) == len(ids) and versions == [Manifest.read(good).version] else 1
