"""What a Python user writes today: a kafka-python loop calling a transformers pipeline per message.

Run as a subprocess by the benchmark: ``python -m bench.naive_peer BOOTSTRAP IN OUT GROUP CKPT``.
"""

from __future__ import annotations

import json
import signal
import sys


def main() -> None:
    bootstrap, topic_in, topic_out, group, checkpoint = sys.argv[1:6]
    import torch
    from kafka import KafkaConsumer, KafkaProducer
    from transformers import pipeline

    torch.set_num_threads(1)
    classify = pipeline("text-classification", model=checkpoint, tokenizer=checkpoint, device="cpu", top_k=None)
    consumer = KafkaConsumer(topic_in, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                msg = json.loads(r.value)
                scores = classify(msg["text"])[0]
                best = max(scores, key=lambda s: s["score"])
                producer.send(topic_out, key=r.key, value=json.dumps(
                    {"id": msg["id"], "label": best["label"], "scores": {s["label"]: s["score"] for s in scores}}
                ).encode())
    producer.flush()
    consumer.close()


if __name__ == "__main__":
    main()
