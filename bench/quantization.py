"""The int8 gate's figures and the speed of int8 recipes of an fp32 bundle, on this machine's CPU.

    python -m sentistream.bench.quantization --fp32-bundle DIR --baseline-bundle DIR [--rounds 3]
        [--methods static-smoothed per-token-smoothed ...]

For each recipe (``export/quantize.py`` methods, by name): every figure of the int8 gate
(``export/gate.py``) against ``--fp32-bundle`` on the fixed test split, and its speed as a ratio
to ``--baseline-bundle`` (e.g. the weight-only bundle of commit b13f936: ``git show
b13f936:worker/models/sst5-minilm/FILE``) in bare onnxruntime, 1 thread, the worker's batches.
The two run interleaved (baseline, recipe, baseline in each round) so that other work on the
machine slows both alike; read ratios, not times. Whether int8 is faster depends on the CPU, so
its int8 flags are printed beside the figures. Needs the export extra (onnx, scikit-learn).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sentistream.export import data
from sentistream.export import gate as int8_gate
from sentistream.export import quantize as quant
from sentistream.worker.batching import token_batches
from sentistream.worker.bundle import Bundle, Manifest, session_options

DEFAULT_METHODS = ("dynamic-per-channel", "static", "static-smoothed", "per-token-smoothed", "weight-only")
INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_flags() -> str:
    """The CPU's int8-relevant flags from /proc/cpuinfo (VNNI and AMX make int8 MatMuls fast)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    return f"{model}: {' '.join(f for f in INT8_FLAGS if f in flags) or 'no int8 dot-product flags'}"


class Timer:
    """One bundle's session over pre-built feeds: seconds for one pass over the test split."""

    def __init__(self, bundle_dir: Path, feeds: list[dict]) -> None:
        config = Manifest.read(bundle_dir).session_config
        self.session = ort.InferenceSession(str(bundle_dir / "model.onnx"), session_options(1, config),
                                            providers=["CPUExecutionProvider"])
        self.feeds = feeds
        self.session.run(None, feeds[len(feeds) // 2])  # warm-up

    def seconds(self) -> float:
        started = time.perf_counter()
        for feed in self.feeds:
            self.session.run(None, feed)
        return time.perf_counter() - started


def speed_ratio(baseline: Timer, candidate: Timer, rounds: int) -> list[float]:
    """Per round: baseline's mean time (before and after) over the candidate's; > 1 is faster."""
    ratios = []
    for _ in range(rounds):
        before, mine, after = baseline.seconds(), candidate.seconds(), baseline.seconds()
        ratios.append((before + after) / 2 / mine)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fp32-bundle", type=Path, required=True, help="the gate's fp32 reference")
    parser.add_argument("--baseline-bundle", type=Path, required=True, help="speed ratios are against it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=quant.METHODS)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)  # onnxruntime.quantization turns the root logger to INFO
    dataset = data.load(data.default_cache_dir())
    texts, labels = dataset.part("test")[:2]
    calibration = dataset.part("train")[0][:512]  # what `export --quantize int8` calibrates on
    baseline = Bundle(args.baseline_bundle, threads=1)
    encodings = baseline.tokenize(texts)
    feeds = [baseline.feed([encodings[i] for i in batch]) for batch in token_batches(encodings, int8_gate.BATCH_SIZE)]
    base_timer = Timer(args.baseline_bundle, feeds)
    print(f"CPU {cpu_int8_flags()}; onnxruntime {ort.__version__}; {len(texts)} test sentences, 1 thread, "
          f"batches of ≤ {int8_gate.BATCH_SIZE} of (nearly) equal length; speed against {args.baseline_bundle.name}\n")
    print("| recipe | × baseline (rounds) | accuracy (ratio) | macro-F1 (drop) | confident agreement (share) "
          "| agreement | mean KL | batch invariance (max Δp) | gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for method in ["fp32", *args.methods]:
            bundle_dir = args.fp32_bundle if method == "fp32" else quant.quantize(
                args.fp32_bundle, Path(tmp) / method, method=method, calibration_texts=calibration)
            f = int8_gate.measure(args.fp32_bundle, bundle_dir, texts, labels)
            ratios = speed_ratio(base_timer, Timer(bundle_dir, feeds), args.rounds)
            print(f"| {method} | {np.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) "
                  f"| {f.int8_accuracy:.4f} ({f.accuracy_ratio:.2%}) | {f.int8_macro_f1:.4f} ({f.macro_f1_drop:+.4f}) "
                  f"| {f.confident_agreement:.2%} ({f.confident_share:.1%}) | {f.label_agreement:.2%} "
                  f"| {f.mean_kl:.4f} | {f.batch_invariance:.2%} ({f.max_batch_prob_diff:.3f}) "
                  f"| {'pass' if not f.failed() else 'refused'} |", flush=True)


if __name__ == "__main__":
    main()
