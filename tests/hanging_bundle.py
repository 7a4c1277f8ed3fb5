"""A model bundle that hangs inside onnxruntime on one word: for the tests that need a record that
stops its worker for good (tests/test_quarantine_kafka.py). Its ``model.onnx`` runs a ``Loop``
whose trip count is 10^15 when the input holds the word's token and 0 otherwise; the other texts
get cheap logits. Built with ``onnx`` (the export extra), no training."""

from __future__ import annotations

import shutil
from pathlib import Path

from sentistream.worker.bundle import Manifest, default_bundle_path

HANG_WORD = "zebra"


def build(out: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    shipped = default_bundle_path()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(shipped / "tokenizer.json", out / "tokenizer.json")
    ids = Tokenizer.from_file(str(out / "tokenizer.json")).encode(HANG_WORD).ids
    assert len(ids) == 3, f"{HANG_WORD!r} is not one token: {ids}"
    manifest = Manifest.read(shipped)
    labels = len(manifest.labels)

    def const(name: str, value) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value), name))

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])])
    nodes = [
        const("word", np.int64(ids[1])), const("forever", np.int64(10**15)), const("yes", np.bool_(True)),
        const("zero", np.float32(0)), const("axis", np.array([1], dtype=np.int64)),
        const("weights", np.linspace(-1, 1, labels, dtype=np.float32).reshape(1, labels) / 1000),
        helper.make_node("Equal", ["input_ids", "word"], ["is_word"]),
        helper.make_node("Cast", ["is_word"], ["hits"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["hits"], ["hit"], keepdims=0),
        helper.make_node("Mul", ["hit", "forever"], ["trips"]),
        helper.make_node("Loop", ["trips", "yes", "zero"], ["spun"], body=body),
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids_f", "axis"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "spun"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"]) for name in manifest.inputs]
    graph = helper.make_graph(nodes, "hang", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                   ["batch", labels])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    Manifest(name="hang-test", version="0.0.1", labels=list(manifest.labels), max_length=manifest.max_length,
             inputs=list(manifest.inputs), opset=17, precision="fp32").rehashed(out).write(out)
    return out
