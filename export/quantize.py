"""int8 quantization of an fp32 bundle; the int8 gate that judges it is ``export/gate.py``.

Methods (``--method``), all onnxruntime quantization:
- ``weight-only`` (:func:`quantize`'s default; ``auto``'s fallback): MatMul weights int8 with a
  scale per row and per output column (QDQ) and the word-embedding table int8 with one scale per
  row; onnxruntime folds the dequantization into fp32 weights when it loads the model: a quarter
  of the size at fp32 speed. :func:`fp32_reference` folds such a bundle back to fp32.
- ``dynamic``: MatMul weights int8 (per-tensor), activations quantized at run time; the
  textbook recipe, which on MiniLM drifts too far (see docs/quantization.md).
- ``dynamic-per-channel``: the same with per-output-channel weight scales.
- ``dynamic-per-channel-fp32-ffn-out``: per-channel, and the feed-forward output
  projections kept in fp32: they see the activation outliers that int8 cannot hold.
- ``dynamic-smoothed``: SmoothQuant-style: each encoder MatMul input is divided per channel by
  ``s = max|x|**α / max|w|**(1-α)`` (ranges calibrated on training sentences, α 0.85) and the
  weight rows multiplied by ``s`` (exact in fp32); then the attention and FFN-input projections
  get dynamic int8 (per-channel weights), and the FFN-output projections, whose GELU inputs int8
  cannot hold, stay fp32 (stored fp16). 1.5-1.7x fp32 speed on a CPU with VNNI; agreement with
  fp32 about 99 %, so whether the gate accepts it depends on the model (docs/quantization.md).
- ``per-token-smoothed``: SmoothQuant (α 0.5) and then every encoder MatMul int8 with one
  activation scale per token, computed at run time (``MatMulInteger`` between ordinary operators:
  onnxruntime's fused dynamic int8 MatMul takes one scale per tensor). A token's outliers (the
  [CLS] token's, above all) no longer coarsen every other token's steps. The most faithful of the
  fast recipes on the default model, but still short of the gate (docs/quantization.md).
- ``static``: onnxruntime's ``quantize_static`` (QDQ, MinMax ranges calibrated on training
  sentences). It also quantizes the MatMul outputs and the residual stream that shares a MatMul
  input: 85.8 % agreement on the default model.
- ``static-smoothed`` (``auto`` tries it first): SmoothQuant-style smoothing (α 0.8, calibrated on
  training sentences), then every encoder MatMul int8 with **fixed** activation scales (uint8, one
  per tensor, MinMax) and per-column int8 weights; only the MatMul inputs are quantized, the
  residual stream and the MatMul outputs stay fp32. Constant scales make it batch-invariant (the
  int8 gate's third clause) and leave no run-time range computation: ≈ 2.3× the weight-only
  bundle on a CPU with VNNI, and it passes the gate on the default model (docs/quantization.md).

The gate itself is :mod:`sentistream.export.gate`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sentistream.worker.bundle import Bundle, Manifest, staged_bundle

METHODS = ("weight-only", "dynamic", "dynamic-per-channel", "dynamic-per-channel-fp32-ffn-out",
           "dynamic-smoothed", "per-token-smoothed", "static", "static-smoothed")
DEFAULT_METHOD = "weight-only"
CALIBRATED = ("dynamic-smoothed", "per-token-smoothed", "static", "static-smoothed")  # need calibration sentences
# ``--method auto`` (the CLI default): the fastest first, the first that the gate accepts ships.
# The dynamic methods are left out: one activation scale per batch fails the gate's batch
# invariance by construction (docs/quantization.md).
AUTO_ORDER = ("static-smoothed", "per-token-smoothed", "weight-only")

SMOOTH_ALPHA = 0.85  # seed-1 model, all MatMuls int8: 0.5 -> 91.8 % agreement, 0.75 -> 97.7 %, 0.85 -> 98.2 %
# With per-token activation scales the smoothing only has to tame the channel outliers (default
# model, test split: α 0.3 -> 96.4 %, 0.5 -> 98.5 %, 0.65 -> 98.2 %, none -> 97.6 %).
PER_TOKEN_ALPHA = 0.5
# With fixed (static) per-tensor activation scales, default model, test split, confident agreement
# / overall agreement with fp32: no smoothing 98.7 / 94.9 %, α 0.5 96.1 / 91.9 %, 0.7 99.7 / 96.6 %,
# 0.8 99.8 / 97.9 % (docs/quantization.md).
STATIC_ALPHA = 0.8


FFN_OUTPUT = re.compile(r"(layer\.\d+/output/dense|ffn/lin2)/(MatMul|Gemm)")


def _matmul_nodes(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]


def ffn_output_nodes(model_path: Path) -> list[str]:
    """The second dense layer of each feed-forward block (BERT ``output.dense``, DistilBERT
    ``ffn.lin2``), excluding the attention output projection."""
    return [n for n in _matmul_nodes(model_path) if FFN_OUTPUT.search(n)]


def encoder_matmuls(model) -> list:
    """MatMul nodes inside the encoder layers whose second input is a constant 2-D weight."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2 and re.search(r"layer\.\d+/", n.name)]


def activation_abs_max(model, bundle: Bundle, texts: list[str], tensors: list[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each named tensor over ``texts`` (batches of equal length)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from sentistream.worker.batching import token_batches

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    encodings = bundle.tokenize(texts)
    peak = {t: np.zeros(0, np.float32) for t in tensors}
    for batch in token_batches(encodings, 32):
        values = session.run(tensors, bundle.feed([encodings[i] for i in batch]))
        for t, v in zip(tensors, values, strict=True):
            channel_max = np.abs(v).reshape(-1, v.shape[-1]).max(0)
            peak[t] = channel_max if peak[t].size == 0 else np.maximum(peak[t], channel_max)
    return peak


def smooth_matmul_inputs(model, nodes: list, abs_max: dict[str, np.ndarray], alpha: float = SMOOTH_ALPHA) -> int:
    """SmoothQuant: ``x @ W == (x / s) @ (s * W)``; moves activation outliers into the weights.

    One ``Mul`` by ``1 / s`` per distinct input tensor (Q, K and V share theirs), placed right
    after that tensor's producer. Returns how many inputs were smoothed.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in nodes:
        consumers.setdefault(node.input[0], []).append(node)
    muls = {}
    for tensor, users in consumers.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in users]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        s = np.maximum(abs_max[tensor], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        s = (s / np.exp(np.log(s).mean())).astype(np.float32)  # geometric mean 1: weights keep their scale
        smoothed = tensor + "_smoothed"
        model.graph.initializer.append(numpy_helper.from_array(1 / s, smoothed + "_inv_scale"))
        muls[tensor] = helper.make_node("Mul", [tensor, smoothed + "_inv_scale"], [smoothed], name=smoothed)
        for node, w in zip(users, weights, strict=True):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w * s[:, None], node.input[1]))
            node.input[0] = smoothed
    ordered = []
    for node in model.graph.node:
        ordered.append(node)
        ordered += [muls.pop(o) for o in node.output if o in muls]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return len(consumers)


def _smoothed_encoder(prepared: Path, bundle: Bundle, texts: list[str], alpha: float, keep=lambda node: True):
    """The prepared model with the inputs of its chosen encoder MatMuls smoothed (calibrated on
    ``texts``); returns it and the chosen nodes."""
    import onnx

    model = onnx.load(str(prepared))
    chosen = [n for n in encoder_matmuls(model) if keep(n)]
    abs_max = activation_abs_max(model, bundle, texts, sorted({n.input[0] for n in chosen}))
    smooth_matmul_inputs(model, chosen, abs_max, alpha)
    return model, chosen


def _save_with_compact_leftovers(model, target: Path) -> None:
    """MatMul weights still fp32 (the head; FFN outputs in dynamic-smoothed) stored fp16, folded
    at load; the word embeddings int8 per row."""
    import onnx

    store_matmul_weights_fp16(model)
    quantize_embeddings_per_row(model)
    onnx.save(model, str(target))


def _dynamic_smoothed(prepared: Path, target: Path, bundle: Bundle, texts: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, chosen = _smoothed_encoder(prepared, bundle, texts, SMOOTH_ALPHA, keep=lambda n: not FFN_OUTPUT.search(n.name))
    smoothed = prepared.with_name("smoothed.onnx")
    onnx.save(model, str(smoothed))
    names = {n.name for n in chosen}
    quantize_dynamic(str(smoothed), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=[n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in names])
    _save_with_compact_leftovers(onnx.load(str(target)), target)


def _static_smoothed(prepared: Path, target: Path, bundle: Bundle, texts: list[str]) -> None:
    model, chosen = _smoothed_encoder(prepared, bundle, texts, STATIC_ALPHA)
    ranges = activation_ranges(model, bundle, texts, sorted({n.input[0] for n in chosen}))
    quantize_matmuls_static(model, chosen, ranges)
    _save_with_compact_leftovers(model, target)


def int8_per_column(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per output column: ``w ≈ q * scale``."""
    scale = (np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def quantize_matmuls_per_token(model, nodes: list) -> int:
    """Each ``x @ W`` in ``nodes`` (constant 2-D ``W``) becomes int8 with one scale per row of ``x``:

        s_x = max|x| / 127 per row (at run time),  q(x) = round(x / s_x) + 128   (uint8)
        s_W = max|W| / 127 per column,             q(W) = round(W / s_W)         (int8)
        x @ W ≈ MatMulInteger(q(x), q(W), 128) · s_x · s_W

    An input shared by several MatMuls (Q, K, V) is quantized once. Returns how many were rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    chosen = {n.name for n in nodes}
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in (
        ("per_token_127", np.float32(127)), ("per_token_128", np.float32(128)),
        ("per_token_zero_point", np.uint8(128)), ("per_token_tiny", np.float32(1e-8))))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "per_token_last_axis"))

    def row_max(x: str, y: str):  # ReduceMax's axes: an attribute before opset 18, an input since
        if opset < 18:
            return helper.make_node("ReduceMax", [x], [y], axes=[-1], keepdims=1, name=y)
        return helper.make_node("ReduceMax", [x, "per_token_last_axis"], [y], keepdims=1, name=y)

    quantized: set[str] = set()  # input tensors already quantized
    rewritten, out = 0, []
    for node in model.graph.node:
        if node.name not in chosen:
            out.append(node)
            continue
        x = node.input[0]
        p = x + "_per_token"
        if x not in quantized:
            quantized.add(x)
            out += [
                helper.make_node("Abs", [x], [p + "_abs"], name=p + "_abs"),
                row_max(p + "_abs", p + "_max"),
                helper.make_node("Max", [p + "_max", "per_token_tiny"], [p + "_max1"], name=p + "_max1"),
                helper.make_node("Div", [p + "_max1", "per_token_127"], [p + "_scale"], name=p + "_scale"),
                helper.make_node("Div", [x, p + "_scale"], [p + "_scaled"], name=p + "_scaled"),
                helper.make_node("Round", [p + "_scaled"], [p + "_round"], name=p + "_round"),
                helper.make_node("Add", [p + "_round", "per_token_128"], [p + "_shift"], name=p + "_shift"),
                helper.make_node("Cast", [p + "_shift"], [p + "_q"], to=onnx.TensorProto.UINT8, name=p + "_q"),
            ]
        weight = inits.pop(node.input[1])
        w_q, w_scale = int8_per_column(numpy_helper.to_array(weight))
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend([numpy_helper.from_array(w_q, weight.name + "_q8"),
                                        numpy_helper.from_array(w_scale, weight.name + "_scale")])
        y, n = node.output[0], node.name
        out += [
            helper.make_node("MatMulInteger", [p + "_q", weight.name + "_q8", "per_token_zero_point"], [y + "_int"], name=n),
            helper.make_node("Cast", [y + "_int"], [y + "_float"], to=onnx.TensorProto.FLOAT, name=n + "_float"),
            helper.make_node("Mul", [y + "_float", p + "_scale"], [y + "_rows"], name=n + "_rows"),
            helper.make_node("Mul", [y + "_rows", weight.name + "_scale"], [y], name=n + "_cols"),
        ]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(out)
    return rewritten


def _per_token_smoothed(prepared: Path, target: Path, bundle: Bundle, texts: list[str]) -> None:
    model, chosen = _smoothed_encoder(prepared, bundle, texts, PER_TOKEN_ALPHA)
    quantize_matmuls_per_token(model, chosen)
    _save_with_compact_leftovers(model, target)


class _Calibration:
    """Feeds calibration sentences in the worker's batches (equal token counts), one at a time
    (onnxruntime's calibration reader API)."""

    def __init__(self, bundle: Bundle, texts: list[str], batch_size: int = 16) -> None:
        from sentistream.worker.batching import token_batches

        encodings = bundle.tokenize(texts)
        self.feeds = iter([bundle.feed([encodings[i] for i in batch]) for batch in token_batches(encodings, batch_size)])

    def get_next(self):
        return next(self.feeds, None)


def quantize_embeddings_per_row(model, min_rows: int = 1024) -> int:
    """Every Gather from a constant 2-D float table becomes: int8 rows, one fp32 scale per row.

    ``Gather(table, ids)`` -> ``Cast(Gather(q_table, ids)) * Gather(scales, ids)``; symmetric,
    so a row's largest value keeps full precision. Returns how many tables were rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    rewritten, nodes = 0, []
    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if (table is None or len(table.dims) != 2 or table.data_type != onnx.TensorProto.FLOAT
                or table.dims[0] < min_rows):  # small tables (positions, segments) stay fp32
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis != 0:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table)
        base = table.name
        out, ids = node.output[0], node.input[1]
        model.graph.initializer.remove(table)
        inits.pop(base)
        rewritten += 1
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-8) / 127.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer.extend([numpy_helper.from_array(q, base + "_q8"),
                                        numpy_helper.from_array(scale.astype(np.float32), base + "_scale")])
        nodes += [
            helper.make_node("Gather", [base + "_q8", ids], [out + "_q8"], name=node.name + "_q8"),
            helper.make_node("Cast", [out + "_q8"], [out + "_f"], to=onnx.TensorProto.FLOAT, name=node.name + "_cast"),
            helper.make_node("Gather", [base + "_scale", ids], [out + "_s"], name=node.name + "_scale"),
            helper.make_node("Mul", [out + "_f", out + "_s"], [out], name=node.name + "_dequant"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def _rewrite_matmul_weights(model, rewrite) -> int:
    """For every MatMul whose weight is a constant 2-D fp32 initializer: remove it and insert
    ``rewrite(name, array)`` -> (new initializers, nodes that produce ``name``) before the MatMul.
    Returns how many were rewritten."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or len(weight.dims) != 2:
            nodes.append(node)
            continue
        new_inits, producers = rewrite(weight.name, numpy_helper.to_array(weight))
        model.graph.initializer.remove(weight)
        inits.pop(weight.name)
        model.graph.initializer.extend(new_inits)
        nodes += [*producers, node]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def quantize_matmul_weights_per_channel(model) -> int:
    """Every MatMul with a constant 2-D weight keeps it as int8, one scale per output column,
    behind a ``DequantizeLinear`` (QDQ, weights only). Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    def rewrite(name: str, w: np.ndarray):
        # Two-sided scales: rows first (square root of each row's range), then one per column.
        rows = np.sqrt(np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-8)).astype(np.float32)
        scale = (np.maximum(np.abs(w / rows).max(axis=0), 1e-8) / 127.0).astype(np.float32)
        q = np.clip(np.round(w / rows / scale), -127, 127).astype(np.int8)
        return ([numpy_helper.from_array(q, name + "_q8"), numpy_helper.from_array(scale, name + "_scale"),
                 numpy_helper.from_array(np.zeros(scale.shape, np.int8), name + "_zp"),
                 numpy_helper.from_array(rows, name + "_rows")],
                [helper.make_node("DequantizeLinear", [name + "_q8", name + "_scale", name + "_zp"],
                                  [name + "_cols"], axis=1, name=name + "_dequant"),
                 helper.make_node("Mul", [name + "_cols", name + "_rows"], [name], name=name + "_rows")])

    return _rewrite_matmul_weights(model, rewrite)


def store_matmul_weights_fp16(model) -> int:
    """Constant MatMul weights left in fp32 are stored as fp16 behind a ``Cast`` that onnxruntime
    folds when it loads the model: half the size (seed-1 model, dynamic-smoothed: 98.8 % agreement
    with fp16 FFN outputs, 98.9 % with fp32)."""
    import onnx
    from onnx import helper, numpy_helper

    def rewrite(name: str, w: np.ndarray):
        return ([numpy_helper.from_array(w.astype(np.float16), name + "_f16")],
                [helper.make_node("Cast", [name + "_f16"], [name], to=onnx.TensorProto.FLOAT, name=name + "_f16")])

    return _rewrite_matmul_weights(model, rewrite)


# The weight-only bundle asks the loader to fold the DequantizeLinear of constant weights at load
# time (fp32 kernels, int8 file); the worker applies a manifest's ``session_config`` as given.
WEIGHT_ONLY_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def _weight_only(prepared: Path, target: Path) -> None:
    import onnx

    model = onnx.load(str(prepared))
    quantize_matmul_weights_per_channel(model)
    quantize_embeddings_per_row(model)
    onnx.save(model, str(target))


def quantize(fp32_dir: Path, out_dir: Path, method: str = DEFAULT_METHOD,
             calibration_texts: list[str] | None = None) -> Path:
    """Write an int8 bundle (same tokenizer and labels) to ``out_dir``, whole or not at all."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")
    if method in CALIBRATED and not calibration_texts:
        raise ValueError(f"{method} quantization needs calibration sentences")
    src = fp32_dir / "model.onnx"
    fp32 = Manifest.read(fp32_dir)
    with staged_bundle(out_dir) as stage, tempfile.TemporaryDirectory() as tmp:
        shutil.copy(fp32_dir / "tokenizer.json", stage / "tokenizer.json")
        target = stage / "model.onnx"
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        if method == "weight-only":
            _weight_only(prepared, target)
        elif method in ("dynamic-smoothed", "per-token-smoothed", "static-smoothed"):
            smoothed = {"dynamic-smoothed": _dynamic_smoothed, "per-token-smoothed": _per_token_smoothed,
                        "static-smoothed": _static_smoothed}[method]
            smoothed(prepared, target, Bundle(fp32_dir, threads=2), calibration_texts)
        elif method == "static":
            reader = _Calibration(Bundle(fp32_dir, threads=2), calibration_texts)
            quantize_static(str(prepared), str(target), reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                            calibrate_method=CalibrationMethod.MinMax)
        else:
            exclude = ffn_output_nodes(prepared) if method.endswith("fp32-ffn-out") else []
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8,
                             per_channel=method != "dynamic", nodes_to_exclude=exclude,
                             op_types_to_quantize=["MatMul"])
        manifest = fp32.model_copy(update={
            "parity": None, "precision": "int8",
            "quantization": {"method": method, "tool": "onnxruntime.quantization / export.quantize"},
            "session_config": WEIGHT_ONLY_SESSION_CONFIG if method == "weight-only" else {},
        })
        manifest.rehashed(stage).write(stage)
    return out_dir


def activation_ranges(model, bundle: Bundle, texts: list[str], tensors: list[str]) -> dict[str, tuple[float, float]]:
    """Min and max of each named tensor over ``texts`` in the worker's batches (static calibration)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from sentistream.worker.batching import token_batches

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    encodings = bundle.tokenize(texts)
    lo = dict.fromkeys(tensors, np.inf)
    hi = dict.fromkeys(tensors, -np.inf)
    for batch in token_batches(encodings, 32):
        for t, v in zip(tensors, session.run(tensors, bundle.feed([encodings[i] for i in batch])), strict=True):
            lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def quantize_matmuls_static(model, nodes: list, ranges: dict[str, tuple[float, float]]) -> int:
    """Each ``x @ W`` in ``nodes`` (constant 2-D ``W``) becomes QDQ int8 with fixed scales:

        x: uint8, one scale and zero point per tensor from its calibrated [min, max] (0 included)
        W: int8, symmetric, one scale per output column
        QuantizeLinear(x) -> DequantizeLinear -> MatMul <- DequantizeLinear(W)

    onnxruntime fuses that into an int8 MatMul with an fp32 output. The scales are constants, so a
    sentence's result does not depend on the rest of its batch (unlike dynamic quantization), and
    only the MatMul inputs are quantized: the residual stream and the MatMul outputs stay fp32.
    An input shared by several MatMuls (Q, K, V) is quantized once. Returns how many were rewritten.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    chosen = {n.name for n in nodes}
    quantized: set[str] = set()
    rewritten, out = 0, []
    for node in model.graph.node:
        if node.name not in chosen:
            out.append(node)
            continue
        x = node.input[0]
        p = x + "_static"
        if x not in quantized:
            quantized.add(x)
            lo, hi = min(ranges[x][0], 0.0), max(ranges[x][1], 0.0)
            scale = np.float32(max(hi - lo, 1e-8) / 255)
            zero_point = np.uint8(np.clip(np.round(-lo / scale), 0, 255))
            model.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), p + "_scale"),
                                            numpy_helper.from_array(np.array(zero_point, np.uint8), p + "_zp")])
            out += [helper.make_node("QuantizeLinear", [x, p + "_scale", p + "_zp"], [p + "_q"], name=p + "_q"),
                    helper.make_node("DequantizeLinear", [p + "_q", p + "_scale", p + "_zp"], [p], name=p + "_dq")]
        weight = inits.pop(node.input[1])
        w_q, w_scale = int8_per_column(numpy_helper.to_array(weight))
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend([numpy_helper.from_array(w_q, weight.name + "_q8"),
                                        numpy_helper.from_array(w_scale, weight.name + "_scale"),
                                        numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), weight.name + "_zp")])
        out += [helper.make_node("DequantizeLinear", [weight.name + "_q8", weight.name + "_scale", weight.name + "_zp"],
                                 [weight.name + "_dq"], axis=1, name=weight.name + "_dq"),
                helper.make_node("MatMul", [p, weight.name + "_dq"], list(node.output), name=node.name)]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(out)
    return rewritten


def fold_weight_only(model) -> int:
    """Undo :func:`_weight_only` in the graph: every constant ``DequantizeLinear`` (and the
    constant ``Mul`` of row scales after it) becomes the fp32 weight it computes, and every int8
    embedding table (``Gather`` of int8 rows times a ``Gather`` of row scales) an fp32 table. The
    arithmetic is onnxruntime's (float32 products in the same order), so the folded model computes
    exactly what the weight-only bundle computes when the worker loads it. Returns how many
    weights were folded."""
    from onnx import helper, numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded: dict[str, np.ndarray] = {}
    drop: set[int] = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and all(i in inits for i in node.input):
            q, scale = inits[node.input[0]].astype(np.float32), inits[node.input[1]]
            zero = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else 0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            w = ((q - np.reshape(zero, shape)) * np.reshape(scale, shape)).astype(np.float32)
            users = consumers.get(node.output[0], [])
            rows = users[0] if len(users) == 1 and users[0].op_type == "Mul" and users[0].input[1] in inits else None
            if rows is not None:
                w, out = (w * inits[rows.input[1]]).astype(np.float32), rows.output[0]
                drop.add(id(rows))
            else:
                out = node.output[0]
            folded[out] = w
            drop.add(id(node))
    nodes = []
    for node in model.graph.node:
        if id(node) in drop:
            continue
        table = node.input[0]
        if node.op_type == "Gather" and table.endswith("_q8") and table[:-3] + "_scale" in inits:
            base, ids = table[:-3], node.input[1]
            cast = next(c for c in consumers[node.output[0]] if c.op_type == "Cast")
            mul = consumers[cast.output[0]][0]
            scale_gather = next(c for c in consumers[ids] if c.op_type == "Gather" and c.input[0] == base + "_scale")
            folded[base] = (inits[table].astype(np.float32) * inits[base + "_scale"]).astype(np.float32)
            drop.update({id(cast), id(mul), id(scale_gather)})
            nodes.append(helper.make_node("Gather", [base, ids], list(mul.output), name=node.name.removesuffix("_q8"),
                                          axis=next((a.i for a in node.attribute if a.name == "axis"), 0)))
            continue
        nodes.append(node)
    nodes = [n for n in nodes if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used and i.name not in folded]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(w, name) for name, w in folded.items())
    return len(folded)


def fp32_reference(bundle_dir: Path, out_dir: Path) -> Path:
    """An fp32 bundle with the weights of the weight-only int8 bundle ``bundle_dir`` folded back:
    the int8 gate's reference when the original fp32 export is gone (it is what the weight-only
    bundle computes in the worker). Its manifest keeps the training record and notes the bundle it
    was folded from, with the parity of that bundle's original fp32 export."""
    import onnx

    source = Manifest.read(bundle_dir)
    if (source.quantization or {}).get("method") != "weight-only":
        raise ValueError(f"{bundle_dir} is not a weight-only int8 bundle: nothing to fold back to fp32")
    with staged_bundle(out_dir) as stage:
        model = onnx.load(str(Path(bundle_dir) / "model.onnx"))
        fold_weight_only(model)
        onnx.checker.check_model(model)
        onnx.save(model, str(stage / "model.onnx"))
        shutil.copy(Path(bundle_dir) / "tokenizer.json", stage / "tokenizer.json")
        folded_from = {"name": source.name, "version": source.version,
                       "model_sha256": source.files.get("model.onnx"), "method": "weight-only",
                       "original_fp32_export_parity": source.parity,
                       "original_fp32_export_figures": (source.figures or {}).get("fp32")}
        source.model_copy(update={
            "precision": "fp32", "quantization": None, "session_config": {}, "parity": None, "figures": None,
            "extra": {**source.extra, "folded_from": folded_from}}).rehashed(stage).write(stage)
    return out_dir
