"""``sentistream demo``: broker (started if none), topics, 2 workers, a review, a table, figures,
and a live model swap (a candidate as shadow, its agreement, then promoted without a restart)."""

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

from sentistream.broker.local import LocalCluster, free_port
from sentistream.cli.flags import worker_command
from sentistream.cli.scrape import quantile, scrape, wait_ready
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
SHADOWED = 300  # sentences the demo's shadow compares before its promotion


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
                             metrics_port=port, log_level="ERROR",
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
        code = _swap(settings, url, producer, consumer, sentences, run, console, bundles / "sst5-minilm-8tok")
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



def _candidate(out: Path) -> Path:
    """A candidate bundle for the demo: the shipped model under version 1.0.0-8tok, reading only
    its first 8 tokens (so it disagrees on longer sentences)."""
    from sentistream.worker.bundle import MANIFEST, Manifest, default_bundle_path

    src = default_bundle_path()
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != MANIFEST:
            shutil.copy2(f, out / f.name)
    manifest = Manifest.read(src).model_copy(update={"version": "1.0.0-8tok", "max_length": 8})
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
    """Shadow a candidate through the control topic, show its agreement, promote it, and show
    results of the new version."""
    from sentistream.cli.model import write
    from sentistream.cli.top import shadow_summary

    console.print("Live model swap (no restart): a candidate beside the serving model, then promoted…")
    candidate = _candidate(out)
    console.print("  " + write(settings, "shadow", candidate))
    if not _wait_for(url, lambda s: s.total("sentistream_shadow_info") >= 1):  # livemax over processes
        console.print("[red]the workers did not start the shadow[/red]")
        return 1
    for i in range(SHADOWED):
        producer.send(settings.input_topic, key=str(i % 16).encode(),
                      value=json.dumps({"id": f"shadowed-{run}-{i}", "text": sentences[i % len(sentences)]}).encode())
    producer.flush()
    _wait_for(url, lambda s: s.total("sentistream_shadow_predictions_total") >= SHADOWED)
    console.print(f"  shadow agreement with the serving model: [bold]{shadow_summary(scrape(url))}[/bold]")
    console.print("  " + write(settings, "promote", candidate))
    if not _wait_for(url, lambda s: s.total("sentistream_model_swaps_total", command="promote") >= 2):
        console.print("[red]the workers did not promote the candidate[/red]")
        return 1
    ids = [f"after-{run}-{i}" for i in range(len(sentences))]
    for sid, text in zip(ids, sentences, strict=True):
        producer.send(settings.input_topic, key=b"after", value=json.dumps({"id": sid, "text": text}).encode())
    producer.flush()
    got = _collect(consumer, {f"{i}#0" for i in ids})
    rows = [got[f"{i}#0"] for i in ids if f"{i}#0" in got]
    versions = sorted({r["model"]["version"] for r in rows})
    console.print(_table(f"The same sentences after the swap: model version {', '.join(versions)}", rows,
                         list(rows[0]["scores"]) if rows else []))
    return 0 if len(rows) == len(ids) and versions == ["1.0.0-8tok"] else 1
