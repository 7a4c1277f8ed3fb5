"""Export gates on tiny randomly initialised checkpoints (built from configs, no downloads)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import onnx_export
from export import quantize as quant
from export.errors import CheckpointError, ParityError, QuantizationGateError
from tests.tiny_models import LABELS, make_checkpoint
from worker.bundle import Bundle, BundleError

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for kind in ("bert", "roberta", "distilbert"):
        ck = make_checkpoint(kind, root / f"{kind}-ckpt")
        out[kind] = onnx_export.export_checkpoint(ck, root / f"{kind}-bundle", name=f"tiny-{kind}").bundle_dir
    return out


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_export_passes_parity_and_serves_through_the_worker_loader(exported, kind) -> None:
    manifest = json.loads((exported[kind] / "manifest.json").read_text())
    assert manifest["labels"] == LABELS
    assert manifest["parity"]["max_abs_logit_diff"] <= 1e-4 and manifest["parity"]["label_agreement"] == 1.0
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json"}
    bundle = Bundle(exported[kind])
    preds = bundle.classify(["the acting is superb", "a dull lifeless film that never ends"] * 3)
    assert len(preds) == 6 and all(p.label in LABELS for p in preds)
    assert abs(sum(preds[0].scores.values()) - 1) < 1e-3
    # dynamic axes: any batch size and length
    assert bundle.logits(["x " * 100]).shape == (1, 3)


def test_corrupted_graph_fails_parity_with_figures(exported, tmp_path) -> None:
    import onnx
    from onnx import numpy_helper

    bad = tmp_path / "bad"
    shutil.copytree(exported["bert"], bad)
    model = onnx.load(str(bad / "model.onnx"))
    for init in model.graph.initializer:
        if ("classifier" in init.name and "bias" in init.name) or init.name.endswith("classifier.bias"):
            arr = numpy_helper.to_array(init).copy() + np.array([0.0, 0.5, 0.0], dtype=np.float32)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            break
    else:
        pytest.fail("no classifier bias found to corrupt")
    onnx.save(model, str(bad / "model.onnx"))
    onnx_export.write_manifest(bad, json.loads((bad / "manifest.json").read_text()))
    torch_model, tokenizer = onnx_export.load_checkpoint(exported["bert"].parent / "bert-ckpt")
    with pytest.raises(ParityError) as err:
        onnx_export.validate_parity(torch_model, tokenizer, bad, onnx_export.SAMPLE_SENTENCES, 128)
    assert err.value.max_abs_diff == pytest.approx(0.5, abs=0.05)
    assert "max |Δlogit|" in str(err.value)


def test_loader_refuses_a_tampered_file(exported, tmp_path) -> None:
    bad = tmp_path / "tampered"
    shutil.copytree(exported["bert"], bad)
    with (bad / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="does not match its manifest hash"):
        Bundle(bad)


def test_loader_refuses_wrong_inputs(exported, tmp_path) -> None:
    bad = tmp_path / "inputs"
    shutil.copytree(exported["roberta"], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["inputs"] = ["input_ids", "attention_mask", "token_type_ids"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"takes inputs"):
        Bundle(bad)


def test_int8_gate_passes_identical_and_refuses_drift(exported, tmp_path) -> None:
    fp32 = exported["bert"]
    texts = onnx_export.SAMPLE_SENTENCES * 3
    labels = Bundle(fp32).logits(texts).argmax(1)
    figures = quant.gate(fp32, fp32, texts, labels)
    assert figures["label_agreement"] == 1.0
    drifted = tmp_path / "drift"
    shutil.copytree(fp32, drifted)
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(drifted / "model.onnx"))
    for init in model.graph.initializer:
        if init.name.endswith("classifier.bias"):
            init.CopyFrom(numpy_helper.from_array(np.array([5.0, 0, 0], dtype=np.float32), init.name))
    onnx.save(model, str(drifted / "model.onnx"))
    onnx_export.write_manifest(drifted, json.loads((drifted / "manifest.json").read_text()))
    with pytest.raises(QuantizationGateError) as err:
        quant.gate(fp32, drifted, texts, labels)
    assert err.value.figures["label_agreement"] < 0.99
    assert any("agree" in f for f in err.value.failed)


@pytest.mark.parametrize("method", quant.METHODS)
def test_quantize_writes_a_smaller_int8_bundle(exported, tmp_path, method) -> None:
    out = quant.quantize(exported["bert"], tmp_path / method, method=method,
                         calibration_texts=onnx_export.SAMPLE_SENTENCES)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == method
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "DequantizeLinear", "MatMulNBits"}
    assert Bundle(out).logits(["the acting is superb"]).shape == (1, 3)


def test_bad_checkpoint_is_a_typed_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        onnx_export.export_checkpoint(tmp_path, tmp_path / "out")


def test_cli_bad_checkpoint_prints_one_line(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "worker", "export", "onnx", "--model", str(tmp_path),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no config.json" in result.stderr


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_smoothing_moves_scale_into_weights_without_changing_fp32_outputs(exported, kind, tmp_path) -> None:
    import onnx

    model = onnx.load(str(exported[kind] / "model.onnx"))
    bundle = Bundle(exported[kind])
    nodes = quant.encoder_matmuls(model)
    assert len(nodes) >= 12  # Q, K, V, attention out, FFN in, FFN out in each of ≥ 2 layers
    peak = quant.activation_abs_max(model, bundle, onnx_export.SAMPLE_SENTENCES, sorted({n.input[0] for n in nodes}))
    assert quant.smooth_matmul_inputs(model, nodes, peak) >= 8  # Q, K and V share one input
    smoothed = tmp_path / "smoothed"
    shutil.copytree(exported[kind], smoothed)
    onnx.save(model, str(smoothed / "model.onnx"))
    onnx_export.write_manifest(smoothed, json.loads((smoothed / "manifest.json").read_text()))
    texts = onnx_export.SAMPLE_SENTENCES
    assert np.abs(Bundle(smoothed).logits(texts) - bundle.logits(texts)).max() <= 1e-4
    assert sum(n.op_type == "Mul" and n.name.endswith("_smoothed") for n in model.graph.node) >= 8


def _one_matmul(x: np.ndarray, w: np.ndarray, per_token: bool):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/encoder/layer.0/attention/self/query/MatMul")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, None, w.shape[0]])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if per_token:
        assert quant.quantize_matmuls_per_token(model, quant.encoder_matmuls(model)) == 1
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_per_token_int8_keeps_ordinary_tokens_exact_beside_an_outlier_token() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 32)) * 0.05).astype(np.float32)
    x = rng.standard_normal((2, 8, 64)).astype(np.float32)
    x[0, 0, 5] = 100.0  # one token with a massive activation, as [CLS] has in MiniLM
    exact = _one_matmul(x, w, per_token=False)
    y = _one_matmul(x, w, per_token=True)
    ordinary = np.ones(x.shape[:2], bool)
    ordinary[0, 0] = False
    def relative_error(approx: np.ndarray) -> np.ndarray:  # per token, against its largest output
        return np.abs(approx - exact).max(-1) / np.abs(exact).max(-1)

    assert relative_error(y)[ordinary].max() < 0.03 and relative_error(y)[0, 0] < 0.05
    per_tensor_step = 100.0 / 127  # what one scale for the whole tensor would give every token
    assert relative_error(np.round(x / per_tensor_step) * per_tensor_step @ w)[ordinary].max() > 0.3
    assert np.abs(y - exact).max() > 0  # it is int8: not bit-exact


def test_auto_ships_the_next_method_when_the_faster_one_is_refused(tmp_path, monkeypatch) -> None:
    from export import cli

    real_gate, seen = quant.gate, []

    def gate(fp32_dir, int8_dir, texts, labels):
        method = json.loads((int8_dir / "manifest.json").read_text())["quantization"]["method"]
        seen.append(method)
        if method != quant.AUTO_ORDER[-1]:
            raise QuantizationGateError({"label_agreement": 0.5}, ["labels agree with fp32 on 50.0% of sentences"])
        return real_gate(fp32_dir, int8_dir, texts, labels)

    monkeypatch.setattr(quant, "gate", gate)
    checkpoint = make_checkpoint("bert", tmp_path / "ckpt")
    cli.build_bundle(checkpoint, tmp_path / "int8", quantize="int8", method="auto", name="tiny", version="1",
                     max_length=None)
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert seen == list(quant.AUTO_ORDER)
    assert manifest["quantization"]["method"] == quant.AUTO_ORDER[-1]
    assert [r["method"] for r in manifest["quantization"]["refused"]] == list(quant.AUTO_ORDER[:-1])


def test_cli_unknown_int8_method_prints_one_line(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "worker", "export", "onnx", "--model", str(tmp_path),
                             "--out", str(tmp_path / "o"), "--quantize", "int8", "--method", "fast"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--method" in result.stderr and "dynamic-smoothed" in result.stderr
