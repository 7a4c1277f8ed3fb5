"""The same naive peer written as a Quix Streams application (confluent-kafka underneath): a
transformers pipeline per message, results to the output topic.

Run as a subprocess by the benchmark: ``python -m bench.quix_peer BOOTSTRAP IN OUT GROUP CKPT``.
Quix Streams handles SIGTERM itself (it stops and commits).
"""

from __future__ import annotations

import sys
import tempfile


def main() -> None:
    bootstrap, topic_in, topic_out, group, checkpoint = sys.argv[1:6]
    import torch
    from quixstreams import Application
    from transformers import pipeline

    torch.set_num_threads(1)
    classify = pipeline("text-classification", model=checkpoint, tokenizer=checkpoint, device="cpu", top_k=None)

    def label(msg: dict) -> dict:
        scores = classify(msg["text"])[0]
        best = max(scores, key=lambda s: s["score"])
        return {"id": msg["id"], "label": best["label"], "scores": {s["label"]: s["score"] for s in scores}}

    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                          state_dir=state_dir)
        source = app.topic(topic_in, value_deserializer="json")
        sink = app.topic(topic_out, value_serializer="json")
        app.dataframe(source).apply(label).to_topic(sink)
        app.run()


if __name__ == "__main__":
    main()
