"""A bundle's logits as the worker computes them: in its batches, or one sentence at a time
(what the int8 gate compares and the evaluation scores)."""

from __future__ import annotations

import numpy as np

from sentistream.worker.batching import token_batches
from sentistream.worker.bundle import Bundle


def batched_logits(bundle: Bundle, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Logits in input order, over the batches the worker forms: ≤ ``batch_size`` sentences of
    (nearly) equal token count, so that padding does not widen dynamic activation ranges."""
    encodings = bundle.tokenize(texts)
    out = np.zeros((len(texts), len(bundle.labels)), dtype=np.float32)
    for batch in token_batches(encodings, batch_size):
        out[batch] = bundle.logits_of([encodings[i] for i in batch])
    return out


def alone_logits(bundle: Bundle, texts: list[str]) -> np.ndarray:
    """Logits of each sentence classified on its own (a batch of one)."""
    encodings = bundle.tokenize(texts)
    return np.concatenate([bundle.logits_of([e]) for e in encodings]) if encodings else \
        np.zeros((0, len(bundle.labels)), np.float32)
