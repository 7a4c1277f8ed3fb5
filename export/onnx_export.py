"""Export a Hugging Face sequence-classification checkpoint to a bundle, then validate it.

Validation runs the exported model *through the worker's own loader* (the served path is the
tested path) and the PyTorch model on the same sentences, and raises :class:`ParityError` unless
every logit is within tolerance and every label agrees.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from sentistream.export.errors import CheckpointError, ParityError
from sentistream.worker.bundle import Bundle, Manifest, sha256_file, staged_bundle

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


# A fast tokenizer loads from its own file, or is converted from a vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json + merges.txt", "a SentencePiece *.model")


def has_tokenizer_files(checkpoint: Path) -> bool:
    return ((checkpoint / "tokenizer.json").is_file() or (checkpoint / "vocab.txt").is_file()
            or ((checkpoint / "vocab.json").is_file() and (checkpoint / "merges.txt").is_file())
            or any(checkpoint.glob("*.model")))


def load_checkpoint(checkpoint: Path):
    """Model and fast tokenizer from a local directory; no network."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (checkpoint / "config.json").exists():
        raise CheckpointError(f"{checkpoint} is not a Hugging Face checkpoint: no config.json")
    # Without these, transformers builds an empty tokenizer from the config and says nothing.
    if not has_tokenizer_files(checkpoint):
        raise CheckpointError(f"{checkpoint} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): "
                              "save the tokenizer into the checkpoint (tokenizer.save_pretrained)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True, use_fast=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, local_files_only=True, attn_implementation="eager"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load {checkpoint}: {str(exc).splitlines()[0]}") from exc
    from sentistream.export.pooling import apply_from_config

    apply_from_config(model)
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{checkpoint} has no fast tokenizer (tokenizer.json)")
    model.eval()
    return model, tokenizer


def _labels(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(model.config.num_labels)]


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (those not installed are left out)."""
    found = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def checkpoint_files(checkpoint: Path) -> dict[str, str]:
    """The sha256 of each file of a checkpoint directory (hidden files and *.md aside): what it
    is, not where it was."""
    return {f.name: sha256_file(f) for f in sorted(Path(checkpoint).iterdir())
            if f.is_file() and not f.name.startswith(".") and f.suffix != ".md"}


def export_checkpoint(checkpoint: Path, out_dir: Path, *, name: str | None = None,
                      version: str = "1.0.0", max_length: int | None = None,
                      sentences: list[str] | None = None, training: dict | None = None) -> Exported:
    """Write an fp32 bundle to ``out_dir`` and validate it against PyTorch.

    The bundle is written into a staging directory and renamed to ``out_dir`` only once it
    passes the parity check: a failed export leaves no bundle (and an earlier one untouched).
    """
    import onnxruntime
    import torch

    model, tokenizer = load_checkpoint(checkpoint)
    input_names = [n for n in tokenizer.model_input_names
                   if n in ("input_ids", "attention_mask", "token_type_ids")]
    max_length = max_length or min(int(tokenizer.model_max_length or 512), 512)

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

    architecture = model.config.architectures[0] if model.config.architectures else type(model).__name__
    manifest = Manifest(
        name=name or checkpoint.name, version=version, labels=_labels(model), max_length=max_length,
        inputs=input_names, output="logits", opset=OPSET, precision="fp32",
        onnxruntime_version=onnxruntime.__version__,
        source={"checkpoint": checkpoint.name, "architecture": architecture,
                "sha256": checkpoint_files(checkpoint),
                "exported_with": package_versions("sentistream", "torch", "transformers", "onnx")},
        training=training,
    )
    with staged_bundle(out_dir) as stage:
        with torch.no_grad():
            torch.onnx.export(Logits(model).eval(), args, str(stage / "model.onnx"), input_names=input_names,
                              output_names=["logits"], dynamic_axes=dynamic, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
        tokenizer.backend_tokenizer.save(str(stage / "tokenizer.json"))
        manifest = manifest.rehashed(stage)
        manifest.write(stage)
        parity = validate_parity(model, tokenizer, stage, sentences or SAMPLE_SENTENCES, max_length)
        manifest.model_copy(update={"parity": parity}).write(stage)
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

