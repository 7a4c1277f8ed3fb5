"""The int8 gate per runtime, and the manifest's record of the runtimes a bundle passed it on.

The gate's clauses and its rule for bundles exported earlier are in :mod:`sentistream.export.gate`.
The manifest's ``runtimes`` maps each runtime the bundle may serve on to ``{"version", "reference",
"gate"}``: the runtime's version when it was gated, what it was compared with (``fp32``: the fp32
export; ``onnxruntime``: this bundle's own int8 outputs on onnxruntime) and the gate's figures. A
manifest without ``runtimes`` (older bundles) means onnxruntime alone; the worker refuses any
other runtime for it (worker/bundle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sentistream.export import gate as int8_gate
from sentistream.export.errors import ExportError, QuantizationGateError
from sentistream.worker.bundle import Bundle, Manifest, same_digest, sha256_file
from sentistream.worker.sessions import RUNTIMES, installed, version

REFERENCE_FP32 = "fp32"
REFERENCE_ONNXRUNTIME = "onnxruntime"


def other_runtimes() -> list[str]:
    """The installed runtimes besides onnxruntime, the one every bundle is gated on first."""
    return [r for r in RUNTIMES if r != "onnxruntime" and installed(r)]


def entry(runtime: str, reference: str, gate: dict, runtime_version: str | None = None) -> dict:
    """One runtime's record in the manifest."""
    return {"version": runtime_version or version(runtime), "reference": reference, "gate": gate}


@dataclass(frozen=True)
class Outcome:
    """The runtimes that passed (the manifest's ``runtimes``) and the failed clauses of those that did not."""

    runtimes: dict[str, dict]
    refused: dict[str, list[str]]


def gate_runtimes(fp32_dir: Path, int8_dir: Path, texts: list[str], labels: np.ndarray | None,
                  onnxruntime_gate: dict, threads: int = 1) -> Outcome:
    """A freshly quantized bundle, which passed on onnxruntime with ``onnxruntime_gate``: every
    other installed runtime gated against the same fp32 export on the same sentences."""
    passed = {"onnxruntime": entry("onnxruntime", REFERENCE_FP32, onnxruntime_gate)}
    refused: dict[str, list[str]] = {}
    others = other_runtimes()
    if not others:
        return Outcome(passed, refused)
    reference = int8_gate.reference_logits(fp32_dir, texts, threads)
    for runtime in others:
        try:
            figures = int8_gate.check(int8_gate.measure_runtime(reference, int8_dir, texts, labels, runtime, threads))
        except QuantizationGateError as err:
            refused[runtime] = err.failed
            continue
        passed[runtime] = entry(runtime, REFERENCE_FP32, figures.to_json())
    return Outcome(passed, refused)


def recorded_gate(manifest: Manifest, bundle_dir: Path) -> dict:
    """The onnxruntime gate an existing int8 bundle passed against fp32 (``quantization.gate``)."""
    recorded = (manifest.quantization or {}).get("gate")
    if not recorded:
        raise ExportError(f"{bundle_dir} records no int8 gate (not an int8 bundle gated against its fp32 export): "
                          "nothing to compare another runtime with; it serves on onnxruntime")
    return recorded


def gate_existing(bundle_dir: Path, runtime: str, texts: list[str], labels: np.ndarray | None,
                  fp32_dir: Path | None = None, threads: int = 1) -> tuple[str, int8_gate.GateFigures]:
    """Gate an existing int8 bundle on ``runtime`` by the rule in :mod:`~sentistream.export.gate`:
    against ``fp32_dir`` when given (it must be the export the bundle names), else against the
    bundle's own onnxruntime outputs with clause 1 on the fp32 figures the manifest recorded for
    the same sentences. Returns the reference's name and the figures; raises
    :class:`QuantizationGateError` when a clause fails."""
    manifest = Manifest.read(bundle_dir)
    recorded = recorded_gate(manifest, bundle_dir)
    if fp32_dir is not None:
        expected = ((manifest.quantization or {}).get("reference") or {}).get("model_sha256") or ""
        actual = sha256_file(Path(fp32_dir) / "model.onnx")
        if not same_digest(actual, expected):
            raise ExportError(f"{fp32_dir} is not the fp32 export {bundle_dir} was gated against (model.onnx sha256 "
                              f"{actual[:12]}…, the manifest names {expected[:12] or 'none'}…)")
        reference = int8_gate.reference_logits(fp32_dir, texts, threads)
        return REFERENCE_FP32, int8_gate.check(int8_gate.measure_runtime(reference, bundle_dir, texts, labels,
                                                                         runtime, threads))
    same_sentences = labels is not None and recorded.get("sentences") == len(texts) and "fp32_accuracy" in recorded
    fp32_scores = (recorded["fp32_accuracy"], recorded["fp32_macro_f1"]) if same_sentences else None
    from sentistream.export.logits import batched_logits

    reference = batched_logits(Bundle(bundle_dir, threads=threads), texts, int8_gate.BATCH_SIZE)
    return REFERENCE_ONNXRUNTIME, int8_gate.check(int8_gate.measure_runtime(
        reference, bundle_dir, texts, labels, runtime, threads, fp32_scores))


def record(bundle_dir: Path, runtime: str, reference: str, figures: int8_gate.GateFigures) -> Manifest:
    """Add ``runtime`` to the bundle's ``runtimes`` (seeded, for an older manifest, with
    onnxruntime's recorded gate) and write the manifest, rehashed; no other file changes."""
    manifest = Manifest.read(bundle_dir)
    runtimes = dict(manifest.runtimes or {"onnxruntime": entry(
        "onnxruntime", REFERENCE_FP32, recorded_gate(manifest, bundle_dir), manifest.onnxruntime_version)})
    runtimes[runtime] = entry(runtime, reference, figures.to_json())
    updated = manifest.model_copy(update={"runtimes": runtimes}).rehashed(bundle_dir)
    if updated.files != manifest.files:
        raise ExportError(f"{bundle_dir}: its files no longer match the manifest's hashes; nothing was written")
    updated.write(bundle_dir)
    return updated
