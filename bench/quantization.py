"""Speed and fidelity of onnxruntime int8 variants of an fp32 bundle, on this machine's CPU.

    python -m bench.quantization --fp32-bundle DIR [--rounds 1]

For each variant: bare onnxruntime throughput on the fixed test split (1 thread, the worker's
batches), its ratio to the fp32 model in the same round, label agreement with fp32, accuracy and
the largest logit difference. Whether int8 is faster depends on the CPU (VNNI/AMX or not); the
gate in ``export/quantize.py`` decides what may ship. Needs the export extra (onnx).
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
from sentistream.export import quantize as quant
from sentistream.worker.batching import token_batches
from sentistream.worker.bundle import MANIFEST, Bundle, Manifest, session_options


def variants(fp32_model: Path, out: Path, calibration: list[str]) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger().setLevel(logging.WARNING)  # that module turns the root logger to INFO

    made = {}
    for per_channel in (False, True):
        path = out / f"dynamic-{per_channel}.onnx"
        quantize_dynamic(fp32_model, path, per_channel=per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])
        made[f"dynamic int8, {'per-channel' if per_channel else 'per-tensor'} weights"] = path
    for block in (32, 128):
        quantizer = MatMulNBitsQuantizer(onnx.load(fp32_model), bits=8, block_size=block, is_symmetric=True,
                                         accuracy_level=4)  # int8 compute
        quantizer.process()
        path = out / f"nbits-{block}.onnx"
        onnx.save(quantizer.model.model, path)
        made[f"MatMulNBits 8-bit, blocks of {block}, int8 compute"] = path
    for method in quant.AUTO_ORDER:  # what `export --method auto` chooses from
        quant.quantize(fp32_model.parent, out / method, method=method, calibration_texts=calibration)
        made[f"export.quantize --method {method}"] = out / method / "model.onnx"
    return made


def run(model: Path, bundle: Bundle, encodings: list, batches: list[list[int]]) -> tuple[float, np.ndarray]:
    # a bundle's own session settings, as the worker applies them; a bare model file has none
    config = Manifest.read(model.parent).session_config if (model.parent / MANIFEST).exists() else {}
    session = ort.InferenceSession(str(model), session_options(1, config), providers=["CPUExecutionProvider"])
    logits = np.zeros((len(encodings), len(bundle.labels)), np.float32)
    session.run(None, bundle.feed([encodings[i] for i in batches[len(batches) // 2]]))  # warm-up
    started = time.perf_counter()
    for batch in batches:
        logits[batch] = session.run(None, bundle.feed([encodings[i] for i in batch]))[0]
    return len(encodings) / (time.perf_counter() - started), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fp32-bundle", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    bundle = Bundle(args.fp32_bundle, threads=1)
    dataset = data.load(data.default_cache_dir())
    texts, labels = dataset.part("test")[:2]
    encodings = bundle.tokenize(texts)
    batches = token_batches(encodings, 32)
    print(f"{args.fp32_bundle}: {len(texts)} test sentences, 1 thread, batches of ≤ 32 of equal length\n")
    print("| model | sentences/s | × fp32 | agreement with fp32 | accuracy | max abs Δlogit |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        made = variants(args.fp32_bundle / "model.onnx", Path(tmp), dataset.part("train")[0][:512])
        for _ in range(args.rounds):
            base_rate, base = run(args.fp32_bundle / "model.onnx", bundle, encodings, batches)
            print(f"| fp32 | {base_rate:.0f} | 1.00 | 100 % | {(base.argmax(1) == labels).mean():.4f} | 0 |")
            for name, path in made.items():
                rate, logits = run(path, bundle, encodings, batches)
                agree = (logits.argmax(1) == base.argmax(1)).mean()
                print(f"| {name} | {rate:.0f} | {rate / base_rate:.2f} | {agree:.1%} | "
                      f"{(logits.argmax(1) == labels).mean():.4f} | {np.abs(logits - base).max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
