"""Export gates on tiny randomly initialised checkpoints (built from configs, no downloads)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sentistream.export import gate as int8_gate
from sentistream.export import onnx_export
from sentistream.export import quantize as quant
from sentistream.export.errors import CheckpointError, ParityError, QuantizationGateError
from sentistream.worker.bundle import Bundle, BundleError, Manifest, staged_bundle
from tests.tiny_models import LABELS, make_checkpoint

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for kind in ("bert", "roberta", "distilbert"):
        ck = make_checkpoint(kind, root / f"{kind}-ckpt")
        out[kind] = onnx_export.export_checkpoint(ck, root / f"{kind}-bundle", name=f"tiny-{kind}").bundle_dir
    return out


def _rehash(bundle_dir: Path) -> None:
    Manifest.read(bundle_dir).rehashed(bundle_dir).write(bundle_dir)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sentistream.cli", "export", *args], capture_output=True, text=True)


def _main(*args: str) -> tuple[int, str]:
    """``sentistream export ARGS`` in this process (torch is imported already): exit code, stderr."""
    import contextlib
    import io

    from sentistream.cli.app import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["export", *args])
    return exit_.value.code, err.getvalue()


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_export_passes_parity_and_serves_through_the_worker_loader(exported, kind) -> None:
    manifest = Manifest.read(exported[kind])
    assert manifest.labels == LABELS and manifest.precision == "fp32"
    assert manifest.parity["max_abs_logit_diff"] <= 1e-4 and manifest.parity["label_agreement"] == 1.0
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}
    # what the checkpoint was (file hashes, package versions), never where it was
    assert manifest.source["checkpoint"] == f"{kind}-ckpt" and "config.json" in manifest.source["sha256"]
    assert "torch" in manifest.source["exported_with"]
    assert str(exported[kind].parent) not in (exported[kind] / "manifest.json").read_text()
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
    _rehash(bad)
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
    manifest = Manifest.read(bad)
    manifest.model_copy(update={"inputs": ["input_ids", "attention_mask", "token_type_ids"]}).write(bad)
    with pytest.raises(BundleError, match=r"takes inputs"):
        Bundle(bad)


def test_int8_gate_passes_identical_and_refuses_drift(exported, tmp_path) -> None:
    fp32 = exported["bert"]
    texts = onnx_export.SAMPLE_SENTENCES * 3
    labels = Bundle(fp32).logits(texts).argmax(1)
    figures = int8_gate.gate(fp32, fp32, texts, labels).to_json()
    assert figures["label_agreement"] == 1.0 and figures["batch_invariance"] == 1.0
    drifted = tmp_path / "drift"
    shutil.copytree(fp32, drifted)
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(drifted / "model.onnx"))
    for init in model.graph.initializer:
        if init.name.endswith("classifier.bias"):
            init.CopyFrom(numpy_helper.from_array(np.array([5.0, 0, 0], dtype=np.float32), init.name))
    onnx.save(model, str(drifted / "model.onnx"))
    _rehash(drifted)
    with pytest.raises(QuantizationGateError) as err:
        int8_gate.gate(fp32, drifted, texts, labels)
    assert err.value.figures["label_agreement"] < 0.99
    # a random tiny model is confident nowhere: the accuracy clauses (labels: fp32's) refuse it
    assert any("of fp32's" in f for f in err.value.failed)


@pytest.mark.parametrize("method", quant.METHODS)
def test_quantize_writes_a_smaller_int8_bundle(exported, tmp_path, method) -> None:
    out = quant.quantize(exported["bert"], tmp_path / method, method=method,
                         calibration_texts=onnx_export.SAMPLE_SENTENCES)
    manifest = Manifest.read(out)
    assert manifest.precision == "int8" and manifest.quantization["method"] == method
    assert manifest.parity is None and set(manifest.files) == {"model.onnx", "tokenizer.json"}
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "DequantizeLinear", "MatMulNBits"}
    assert Bundle(out).logits(["the acting is superb"]).shape == (1, 3)


def test_bad_checkpoint_is_a_typed_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        onnx_export.export_checkpoint(tmp_path, tmp_path / "out")


def test_cli_bad_checkpoint_prints_one_line(tmp_path) -> None:
    result = _cli("onnx", "--model", str(tmp_path), "--out", str(tmp_path / "o"))
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
    _rehash(smoothed)
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
    from sentistream.export import cli

    real_gate, seen = int8_gate.gate, []

    def gate(fp32_dir, int8_dir, texts, labels):
        method = Manifest.read(int8_dir).quantization["method"]
        seen.append(method)
        if method != quant.AUTO_ORDER[-1]:
            raise QuantizationGateError({"label_agreement": 0.5}, ["labels agree with fp32 on 50.0% of sentences"])
        return real_gate(fp32_dir, int8_dir, texts, labels)

    monkeypatch.setattr(int8_gate, "gate", gate)
    checkpoint = make_checkpoint("bert", tmp_path / "ckpt")
    cli.build_bundle(checkpoint, tmp_path / "int8", quantize="int8", method="auto", name="tiny", version="1",
                     max_length=None)
    manifest = Manifest.read(tmp_path / "int8")
    assert seen == list(quant.AUTO_ORDER)
    assert manifest.quantization["method"] == quant.AUTO_ORDER[-1]
    assert [r["method"] for r in manifest.quantization["refused"]] == list(quant.AUTO_ORDER[:-1])
    assert manifest.parity["label_agreement"] == 1.0  # of the fp32 export it was gated against
    assert Manifest.read(tmp_path / "int8-fp32").precision == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "int8", "int8-fp32"]  # no staging left
    Bundle(tmp_path / "int8")


def test_cli_unknown_int8_method_prints_one_line(tmp_path) -> None:
    result = _cli("onnx", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--quantize", "int8", "--method", "fast")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--method" in result.stderr and "dynamic-smoothed" in result.stderr


def test_manifest_round_trip_keeps_typed_fields_and_extra_keys(exported, tmp_path) -> None:
    manifest = Manifest.read(exported["roberta"]).model_copy(update={
        "quantization": {"method": "weight-only", "gate": {"label_agreement": 0.995}},
        "session_config": {"session.disable_quant_qdq": "1"},
        "extra": {"owner": {"team": "reviews"}, "notes": ["é", 1]},
    })
    manifest.write(tmp_path)
    again = Manifest.read(tmp_path)
    assert again == manifest
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["owner"] == {"team": "reviews"} and "extra" not in raw  # extra keys sit at the top level
    assert Manifest.from_json(raw) == manifest and Manifest.from_json(raw).to_json() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no partial file left


def test_manifest_with_a_wrong_type_is_one_line(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x", "version": "1", "labels": "abc",
                                                        "max_length": 8, "inputs": ["input_ids"]}))
    with pytest.raises(BundleError, match=r"not a valid manifest: labels: ") as err:
        Manifest.read(tmp_path)
    assert "\n" not in str(err.value)


def test_interrupted_bundle_write_leaves_no_bundle_directory(tmp_path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt), staged_bundle(out) as stage:
        (stage / "model.onnx").write_bytes(b"half a model")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_keeps_the_earlier_bundle(exported, tmp_path, monkeypatch) -> None:
    out = tmp_path / "tiny"
    shutil.copytree(exported["bert"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "validate_parity", interrupted)  # after model.onnx is written
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_checkpoint(exported["bert"].parent / "bert-ckpt", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_refused_int8_leaves_no_bundle(tmp_path, monkeypatch) -> None:
    def refuse(fp32_dir, int8_dir, texts, labels):
        raise QuantizationGateError({"label_agreement": 0.5}, ["labels agree with fp32 on 50.0% of sentences"])

    monkeypatch.setattr(int8_gate, "gate", refuse)
    checkpoint = make_checkpoint("bert", tmp_path / "ckpt")
    with pytest.raises(QuantizationGateError):
        _build_int8(checkpoint, tmp_path / "int8")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # neither int8, int8-fp32 nor staging


def _build_int8(checkpoint: Path, out: Path) -> dict:
    from sentistream.export import cli

    return cli.build_bundle(checkpoint, out, quantize="int8", method="weight-only", name="tiny", version="1",
                            max_length=None)


def test_export_refuses_to_replace_a_directory_that_is_not_a_bundle(exported, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a model bundle"):
        onnx_export.export_checkpoint(exported["bert"].parent / "bert-ckpt", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_checkpoint_without_tokenizer_files_names_them(tmp_path) -> None:
    checkpoint = make_checkpoint("distilbert", tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (checkpoint / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"has no tokenizer files \(none of tokenizer\.json, vocab\.txt"):
        onnx_export.export_checkpoint(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    code, err = _main("onnx", "--model", str(checkpoint), "--out", str(tmp_path / "out"))
    assert code == 2 and err.strip().count("\n") == 0 and "no tokenizer files" in err, err


def test_eval_of_a_bundle_with_its_own_labels(exported, tmp_path) -> None:
    result = _cli("eval", "--bundle", str(exported["bert"]))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "not the five SST classes" in result.stderr and "--data" in result.stderr

    data = tmp_path / "labelled.jsonl"
    rows = [{"text": "the acting is superb", "label": "positive"}, {"text": "a dull lifeless film", "label": 0},
            {"text": "it is a movie", "label": "neutral"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = _cli("eval", "--bundle", str(exported["bert"]), "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert f"figures on {data} (3 sentences)" in result.stdout
    assert "| | negative | neutral | positive |" in result.stdout and "(reference)" not in result.stdout

    data.write_text(json.dumps({"text": "fine", "label": "great"}) + "\n")
    result = _cli("eval", "--bundle", str(exported["bert"]), "--data", str(data))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"{data}:1: label 'great' is not one of the bundle's labels" in result.stderr
