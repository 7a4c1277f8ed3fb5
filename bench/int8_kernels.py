"""One encoder MatMul four ways on onnxruntime's CPU kernels: why per-token int8 does not pay here.

    python -m bench.int8_kernels [--tokens 640] [--repeat 200]

The default model's int8 drift comes from activation outliers in a few tokens
(docs/quantization.md); one scale per token would hold them, but onnxruntime's fused dynamic int8 MatMul
takes one scale per tensor. Per-token int8 has to be spelled out as ordinary operators (abs max
per row, scale, round, MatMulInteger, rescale). This script times, for MiniLM's three MatMul
shapes (hidden 384, FFN 1536) on ``--tokens`` rows (32 sentences of 20 tokens):

- fp32 ``MatMul``;
- ``DynamicQuantizeMatMul`` (uint8 activations, one scale per tensor; int8 weights per column);
- per-token: ``export.quantize.quantize_matmuls_per_token`` (uint8 activations with one scale
  per row, zero point 128, into ``MatMulInteger``), as ``--method per-token-smoothed`` builds it;
- static: ``export.quantize.quantize_matmuls_static`` (QDQ with a fixed activation scale, which
  onnxruntime fuses into one int8 MatMul), as ``--method static-smoothed`` builds it.

1 thread; ratios are against fp32 in the same run. Needs onnx and onnxruntime (no torch).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sentistream.export import quantize as quant
from sentistream.worker.bundle import session_options

SHAPES = ((384, 384), (384, 1536), (1536, 384))  # attention projections, FFN input, FFN output


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def _model(node, inits: dict[str, np.ndarray], k: int) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, name) for name, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def sessions(w: np.ndarray, x: np.ndarray) -> dict[str, ort.InferenceSession]:
    """The three kernels for weight ``w``; the static one calibrated on ``x`` (its min and max)."""
    k, n = w.shape
    fp32 = _model(helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"), {"w": w}, k)
    per_token = onnx.ModelProto()
    per_token.CopyFrom(fp32)
    quant.quantize_matmuls_per_token(per_token, list(per_token.graph.node))  # what --method per-token-smoothed does
    w_q, w_scale = quant.int8_per_column(w)
    fused = helper.make_node("DynamicQuantizeMatMul", ["x", "w_q", "w_scale", "w_zp"], ["y"], domain="com.microsoft")
    dynamic = _model(fused, {"w_q": w_q, "w_scale": w_scale, "w_zp": np.zeros(n, np.int8)}, k)
    static = onnx.ModelProto()
    static.CopyFrom(fp32)
    quant.quantize_matmuls_static(static, list(static.graph.node), {"x": (float(x.min()), float(x.max()))})
    return {"fp32 MatMul": _session(fp32), "dynamic int8, per tensor": _session(dynamic),
            "int8, per token": _session(per_token), "static int8, fixed scale": _session(static)}


def timed(session: ort.InferenceSession, x: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    y = session.run(None, {"x": x})[0]
    for _ in range(repeat // 10):
        session.run(None, {"x": x})
    started = time.perf_counter()
    for _ in range(repeat):
        session.run(None, {"x": x})
    return (time.perf_counter() - started) / repeat * 1e3, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=640)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}; {args.tokens} rows, 1 thread\n")
    print("| K × N | kernel | ms | × fp32 | max abs error |")
    print("|---|---|---:|---:|---:|")
    for k, n in SHAPES:
        w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        x = rng.standard_normal((args.tokens, k)).astype(np.float32)
        base_ms = None
        for name, session in sessions(w, x).items():
            ms, y = timed(session, x, args.repeat)
            base_ms = base_ms or ms
            print(f"| {k} × {n} | {name} | {ms:.3f} | {base_ms / ms:.2f} | {np.abs(y - x @ w).max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
