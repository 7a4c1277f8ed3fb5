"""What a worker's status record costs the run loop (worker/status.py): building one record from
the worker's metrics and encoding it, and with ``--bootstrap`` handing it to a producer (the send
is not waited for, as in the loop). Divided by ``status_interval_s``, that is the share of a core
it takes. ``python -m sentistream.bench.status_cost [--bootstrap HOST:PORT] [-n 2000]``"""

from __future__ import annotations

import argparse
import time
import types

from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.settings import Settings
from sentistream.worker.status_publisher import StatusPublisher, status_topic_spec


def fake_worker(metrics: WorkerMetrics) -> types.SimpleNamespace:
    """What the publisher reads of a worker: metrics with traffic in them, 4 partitions, a shadow."""
    for label in ("Very negative", "Negative", "Neutral", "Positive", "Very positive"):
        metrics.classified.labels(label).inc(1000)
    for i in range(1000):
        metrics.end_to_end_seconds.observe(i / 10_000)
    model = types.SimpleNamespace(name="sst5-minilm", version="1.3.0", runtime="onnxruntime")
    shadow = types.SimpleNamespace(model=model, agreement=0.97, compared=12_345)
    return types.SimpleNamespace(metrics=metrics, health=types.SimpleNamespace(ready=lambda: (True, "ready")),
                                 pipeline=types.SimpleNamespace(model=model), ops=types.SimpleNamespace(shadow=shadow),
                                 assignment={TopicPartition("sentences", p) for p in range(4)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap")
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    settings = Settings(status_interval_s=5.0, bootstrap_servers=args.bootstrap)
    producer = None
    send = lambda topic, key, value: None  # noqa: E731
    if args.bootstrap:
        from sentistream.worker import kafka_clients

        admin = kafka_clients.admin(settings, args.bootstrap)
        kafka_clients.ensure_topics(admin, status_topic_spec(settings))
        admin.close()
        producer = kafka_clients.producer(settings, args.bootstrap)
        send = lambda topic, key, value: producer.send(topic, key=key, value=value)  # noqa: E731
    clock = [0.0]
    pub = StatusPublisher(settings, send, fake_worker(WorkerMetrics(CollectorRegistry())), clock=lambda: clock[0])
    size = len(pub.build(0.0).model_dump_json())
    start = time.perf_counter()
    for _ in range(args.n):
        clock[0] += settings.status_interval_s
        pub.tick()
    per = (time.perf_counter() - start) / args.n
    if producer is not None:
        producer.flush()
        producer.close()
    print(f"{per * 1e6:.0f} us per status record ({size} bytes{', sent' if args.bootstrap else ', not sent'}); "
          f"every {settings.status_interval_s:g} s: {per / settings.status_interval_s:.4%} of the loop's time; "
          f"{pub.failures} failures")


if __name__ == "__main__":
    main()
