"""int8 quantization of an fp32 bundle, and the gate that accepts or refuses it.

Methods (``--method``), all onnxruntime quantization:
- ``weight-only`` (default): MatMul weights int8 with one scale per output channel (QDQ) and
  the word-embedding table int8 with one scale per row; onnxruntime folds the dequantization
  into fp32 weights when it loads the model. The one method that passes the gate on the default
  model (docs/quantization.md): a quarter of the size at fp32 speed.
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
- ``static``: QDQ with activation ranges calibrated on training sentences.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sentistream.export.errors import QuantizationGateError
from sentistream.worker.bundle import Bundle, Manifest, staged_bundle

METHODS = ("weight-only", "dynamic", "dynamic-per-channel", "dynamic-per-channel-fp32-ffn-out",
           "dynamic-smoothed", "per-token-smoothed", "static")
DEFAULT_METHOD = "weight-only"
CALIBRATED = ("dynamic-smoothed", "per-token-smoothed", "static")  # need calibration sentences
# ``--method auto`` (the CLI default): the fastest first, the first that the gate accepts ships.
AUTO_ORDER = ("per-token-smoothed", "dynamic-smoothed", "weight-only")

# The gate: the int8 model against the bundle's own fp32 export, on the same sentences.
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01
MAX_MACRO_F1_DROP = 0.015

SMOOTH_ALPHA = 0.85  # seed-1 model, all MatMuls int8: 0.5 -> 91.8 % agreement, 0.75 -> 97.7 %, 0.85 -> 98.2 %
# With per-token activation scales the smoothing only has to tame the channel outliers (default
# model, test split: α 0.3 -> 96.4 %, 0.5 -> 98.5 %, 0.65 -> 98.2 %, none -> 97.6 %).
PER_TOKEN_ALPHA = 0.5


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
        elif method in ("dynamic-smoothed", "per-token-smoothed"):
            smoothed = _dynamic_smoothed if method == "dynamic-smoothed" else _per_token_smoothed
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


def batched_logits(bundle: Bundle, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Logits in input order, over the batches the worker forms: ≤ ``batch_size`` sentences of
    (nearly) equal token count, so that padding does not widen dynamic activation ranges."""
    from sentistream.worker.batching import token_batches

    encodings = bundle.tokenize(texts)
    out = np.zeros((len(texts), len(bundle.labels)), dtype=np.float32)
    for batch in token_batches(encodings, batch_size):
        out[batch] = bundle.logits_of([encodings[i] for i in batch])
    return out


def gate(fp32_dir: Path, int8_dir: Path, texts: list[str], labels: np.ndarray | None) -> dict:
    """Compare int8 with fp32 on ``texts``; raise :class:`QuantizationGateError` if it drifts.

    Label agreement is always checked; accuracy and macro-F1 drops when ``labels`` are given.
    """
    fp32 = batched_logits(Bundle(fp32_dir, threads=2), texts)
    int8 = batched_logits(Bundle(int8_dir, threads=2), texts)
    agreement = float((fp32.argmax(1) == int8.argmax(1)).mean())
    figures = {"sentences": len(texts), "label_agreement": round(agreement, 4),
               "max_abs_logit_diff": round(float(np.abs(fp32 - int8).max()), 4)}
    failed = []
    if agreement < MIN_AGREEMENT:
        failed.append(f"labels agree with fp32 on {agreement:.1%} of sentences (need ≥ {MIN_AGREEMENT:.0%})")
    if labels is not None:
        from sklearn.metrics import accuracy_score, f1_score

        classes = list(range(fp32.shape[1]))
        f32, i8 = ({"accuracy": float(accuracy_score(labels, pred)),
                    "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0))}
                   for pred in (fp32.argmax(1), int8.argmax(1)))
        figures.update({
            "fp32_accuracy": round(f32["accuracy"], 4), "int8_accuracy": round(i8["accuracy"], 4),
            "fp32_macro_f1": round(f32["macro_f1"], 4), "int8_macro_f1": round(i8["macro_f1"], 4),
        })
        if f32["accuracy"] - i8["accuracy"] > MAX_ACCURACY_DROP:
            failed.append(f"accuracy drops {f32['accuracy'] - i8['accuracy']:.3f} (limit {MAX_ACCURACY_DROP})")
        if f32["macro_f1"] - i8["macro_f1"] > MAX_MACRO_F1_DROP:
            failed.append(f"macro-F1 drops {f32['macro_f1'] - i8['macro_f1']:.3f} (limit {MAX_MACRO_F1_DROP})")
    if failed:
        raise QuantizationGateError(figures, failed)
    return figures
