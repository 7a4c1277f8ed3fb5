"""Export a Hugging Face sequence-classification checkpoint to a bundle, then validate it.

Validation runs the exported model *through the worker's own loader* (the served path is the
tested path) and the PyTorch model on the same sentences, and raises :class:`ParityError` unless
every logit is within tolerance and every label agrees.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.errors import CheckpointError, ParityError
from worker.bundle import MANIFEST, Bundle, sha256_file

OPSET = 17
FP32_TOLERANCE = 1e-4

# Used when no held-out sentences are given (tiny test models, users' own checkpoints).
SAMPLE_SENTENCES = [
    "The acting is superb.",
    "A dull, lifeless film that never finds its footing.",
    "It is a movie.",
    "Not bad at all, though the ending drags.",
    "An instant classic: funny, moving and beautifully shot!",
    "I wanted to like it, but the script is a mess.",
    "The soundtrack is fine.",
    "Worst two hours of my life.",
    "Quietly devastating and completely honest.",
    "Some scenes work, others fall flat, and the middle sags badly before a strong finish.",
]


@dataclass(frozen=True)
class Exported:
    bundle_dir: Path
    parity: dict


def load_checkpoint(checkpoint: Path):
    """Model and fast tokenizer from a local directory; no network."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (checkpoint / "config.json").exists():
        raise CheckpointError(f"{checkpoint} is not a Hugging Face checkpoint: no config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True, use_fast=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, local_files_only=True, attn_implementation="eager"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load {checkpoint}: {str(exc).splitlines()[0]}") from exc
    from export.pooling import apply_from_config

    apply_from_config(model)
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{checkpoint} has no fast tokenizer (tokenizer.json)")
    model.eval()
    return model, tokenizer


def _labels(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(model.config.num_labels)]


def write_manifest(bundle_dir: Path, manifest: dict) -> None:
    manifest["files"] = {
        f.name: sha256_file(f) for f in sorted(bundle_dir.iterdir()) if f.is_file() and f.name != MANIFEST
    }
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def export_checkpoint(checkpoint: Path, out_dir: Path, *, name: str | None = None,
                      version: str = "1.0.0", max_length: int | None = None,
                      sentences: list[str] | None = None, extra: dict | None = None,
                      transform=None) -> Exported:
    """Write an fp32 bundle to ``out_dir`` and validate it against PyTorch.

    ``transform(model, tokenizer)`` may rewrite the model first (e.g. a different pooling head);
    parity is then checked against the transformed PyTorch model.
    """
    import onnxruntime
    import torch

    model, tokenizer = load_checkpoint(checkpoint)
    if transform is not None:
        transform(model, tokenizer)
    input_names = [n for n in tokenizer.model_input_names
                   if n in ("input_ids", "attention_mask", "token_type_ids")]
    max_length = max_length or min(int(tokenizer.model_max_length or 512), 512)

    out_dir.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["a short example", "another, slightly longer example sentence"],
                       padding=True, return_tensors="pt")
    args = tuple(sample[n] for n in input_names)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
    dynamic["logits"] = {0: "batch"}

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(input_names, inputs, strict=True))).logits

    with torch.no_grad():
        torch.onnx.export(Logits(model).eval(), args, str(out_dir / "model.onnx"), input_names=input_names,
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    manifest = {
        "format": 1,
        "name": name or checkpoint.name,
        "version": version,
        "task": "sequence-classification",
        "labels": _labels(model),
        "max_length": max_length,
        "inputs": input_names,
        "output": "logits",
        "opset": OPSET,
        "precision": "fp32",
        "onnxruntime_version": onnxruntime.__version__,
        "source": {"checkpoint": str(checkpoint), "architecture": model.config.architectures[0]
                   if model.config.architectures else type(model).__name__},
        **(extra or {}),
    }
    write_manifest(out_dir, manifest)
    parity = validate_parity(model, tokenizer, out_dir, sentences or SAMPLE_SENTENCES, max_length)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    manifest["parity"] = parity
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Exported(out_dir, parity)


def torch_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    import torch

    rows = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            rows.append(model(**enc).logits.float().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, model.config.num_labels), np.float32)


def validate_parity(model, tokenizer, bundle_dir: Path, sentences: list[str], max_length: int,
                    tolerance: float = FP32_TOLERANCE) -> dict:
    """Every logit within ``tolerance`` and every label equal, through the worker's loader."""
    bundle = Bundle(bundle_dir, threads=2)
    expected = torch_logits(model, tokenizer, sentences, max_length)
    got = np.concatenate([bundle.logits(sentences[i : i + 64]) for i in range(0, len(sentences), 64)])
    if got.shape != expected.shape:
        raise ParityError(float("inf"), tolerance, len(sentences), len(sentences),
                          f"output shape {got.shape} vs {expected.shape}")
    diff = float(np.abs(got - expected).max()) if len(sentences) else 0.0
    disagree = np.flatnonzero(got.argmax(1) != expected.argmax(1))
    if diff > tolerance or len(disagree):
        example = sentences[int(disagree[0])] if len(disagree) else None
        raise ParityError(diff, tolerance, len(disagree), len(sentences), example)
    return {"sentences": len(sentences), "max_abs_logit_diff": diff, "label_agreement": 1.0,
            "tolerance": tolerance}


def copy_bundle(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
