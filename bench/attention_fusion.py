"""Would onnxruntime's BERT fusions shorten the shipped graph? (issue #27 point 2)

A one-sentence call runs some 300 nodes, much of it the attention's reshapes and their shape
arithmetic (``python -m sentistream.bench.call_cost --profile``). onnxruntime's transformer
optimizer fuses such subgraphs into one ``Attention`` node, but it works on fp32 graphs. This
study turns the shipped QDQ graph back into fp32 (weights dequantized, activation
Quantize/Dequantize pairs bypassed), runs the optimizer's BERT fusions on it, prints what it
fused, and times one-sentence calls of the shipped int8 graph, the fp32 graph and the fused fp32
graph, interleaved (1 thread):

    python -m sentistream.bench.attention_fusion [--sentences 300] [--rounds 3]

Needs the export extra (onnx).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sentistream.worker.bundle import Bundle, default_bundle_path, session_options

HEADS, HIDDEN = 12, 384  # the shipped MiniLM-L6


def dequantized(model):
    """``model`` (QDQ) with every weight's DequantizeLinear folded into an fp32 initializer and
    every activation Quantize/Dequantize node bypassed."""
    from onnx import numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            x, scale = (numpy_helper.to_array(weights[n]).astype(np.float32) for n in node.input[:2])
            zero = numpy_helper.to_array(weights[node.input[2]]).astype(np.float32) \
                if len(node.input) > 2 and node.input[2] else np.float32(0)
            if scale.size > 1:  # per channel, along ``axis``
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.size > 1 else zero
            graph.initializer.append(numpy_helper.from_array((x - zero) * scale, node.output[0] + ".fp32"))
            alias[node.output[0]] = node.output[0] + ".fp32"
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for node in kept:
        node.input[:] = [resolve(n) for n in node.input]
    for output in graph.output:
        output.name = resolve(output.name)
    graph.ClearField("node")
    graph.node.extend(kept)
    used = {n for node in kept for n in node.input}
    live = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(live)
    return model


def main(argv: list[str] | None = None) -> None:
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    from sentistream.export import data

    parser = argparse.ArgumentParser(prog="python -m sentistream.bench.attention_fusion",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    shipped = default_bundle_path() / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        fp32, fused = Path(tmp) / "fp32.onnx", Path(tmp) / "fused.onnx"
        onnx.save(dequantized(onnx.load(str(shipped))), str(fp32))
        optimized = optimize_model(str(fp32), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0)
        print("fused by onnxruntime.transformers:",
              {op: n for op, n in optimized.get_fused_operator_statistics().items() if n} or "nothing")
        optimized.save_model_to_file(str(fused))
        graphs = {"shipped int8": shipped, "fp32": fp32, "fp32 fused": fused}
        sessions = {k: ort.InferenceSession(str(p), session_options(1), providers=["CPUExecutionProvider"])
                    for k, p in graphs.items()}
    bundle = Bundle(default_bundle_path(), threads=1)
    feeds = [bundle.feed([e]) for e in bundle.tokenize(data.load(data.default_cache_dir()).part("test")[0][:args.sentences])]
    spent: dict[str, list[float]] = {k: [] for k in sessions}
    labels: dict[str, list[int]] = {k: [] for k in sessions}
    for r in range(args.rounds):
        for i, feed in enumerate(feeds):
            for k in list(sessions) if (i + r) % 2 else list(sessions)[::-1]:
                names = {x.name for x in sessions[k].get_inputs()}
                started = time.perf_counter()
                logits = sessions[k].run(None, {n: v for n, v in feed.items() if n in names})[0]
                spent[k].append(time.perf_counter() - started)
                labels[k] += [int(logits.argmax())] if r == 0 else []
    for k in sessions:
        print(f"{k:<13} one sentence per call: mean {statistics.fmean(spent[k]) * 1000:.2f} ms, "
              f"p50 {statistics.median(spent[k]) * 1000:.2f} ms; labels equal to fp32's on "
              f"{np.mean(np.equal(labels[k], labels['fp32'])):.2%}")


if __name__ == "__main__":
    main()
