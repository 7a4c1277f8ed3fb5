"""The int8 gate (export/gate.py): each clause fails on its own, on synthetic logits; a passing
case; and, on a tiny exported model, batch invariance measured through the worker's loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sentistream.export import gate
from sentistream.export.errors import QuantizationGateError

pytestmark = pytest.mark.export  # scikit-learn; the tiny models need torch

N_CLASSES = 5
SIZES = (100, 300, 200, 300, 100)  # 1,000 sentences, two rare classes as in SST-5


def _logits(pred: np.ndarray, confident: np.ndarray) -> np.ndarray:
    """Logits whose top class is ``pred``: margin ≈ 0.79 where ``confident``, ≈ 0.01 elsewhere."""
    out = np.zeros((len(pred), N_CLASSES), np.float32)
    rows = np.arange(len(pred))
    out[rows, pred] = np.where(confident, 3.0, 0.1)
    out[rows, (pred + 1) % N_CLASSES] = np.where(confident, 0.0, 0.05)
    return out


class Case:
    """fp32: right on 80 % of sentences (every 5th is called the next class); confident except on
    every 10th (wrong) and every 10th + 1 (right) sentence. int8 starts as a copy of fp32."""

    def __init__(self) -> None:
        self.y = np.repeat(np.arange(N_CLASSES), SIZES)
        i = np.arange(len(self.y))
        self.fp32_pred = np.where(i % 5 == 0, (self.y + 1) % N_CLASSES, self.y)
        self.confident = (i % 10 != 0) & (i % 10 != 1)
        self.unconfident_wrong = np.flatnonzero(i % 10 == 0)
        self.unconfident_right = np.flatnonzero(i % 10 == 1)
        self.confident_wrong = np.flatnonzero(i % 10 == 5)
        self.int8_pred = self.fp32_pred.copy()
        self.alone_pred: np.ndarray | None = None

    def figures(self) -> gate.GateFigures:
        fp32 = _logits(self.fp32_pred, self.confident)
        int8 = _logits(self.int8_pred, self.confident) + 1e-3 * np.random.default_rng(0).standard_normal(fp32.shape)
        alone = int8 + 1e-4 if self.alone_pred is None else _logits(self.alone_pred, self.confident)
        return gate.figures_of(fp32, int8.astype(np.float32), alone.astype(np.float32), self.y)


def test_a_close_model_passes_with_every_figure() -> None:
    case = Case()
    case.int8_pred[case.unconfident_right[:3]] += 1  # near-ties may flip: overall agreement is not gated
    case.int8_pred %= N_CLASSES
    figures = case.figures()
    assert figures.failed() == []
    assert gate.check(figures) is figures
    assert figures.fp32_accuracy == pytest.approx(0.8) and figures.confident_share == pytest.approx(0.8)
    assert figures.confident_agreement == 1.0 and figures.label_agreement == pytest.approx(0.997)
    assert figures.batch_invariance == 1.0 and 0 < figures.max_batch_prob_diff < 1e-3
    assert 0 < figures.mean_kl < 1e-4  # 3 near-ties flipped, 1e-3 noise: about 5e-6 nats
    recorded = figures.to_json()
    assert recorded["criterion"] == gate.CRITERION
    assert set(recorded["thresholds"]) == {"min_accuracy_ratio", "max_macro_f1_drop", "confident_margin",
                                           "min_confident_agreement", "min_batch_invariance", "batch_size"}
    for key in ("accuracy_ratio", "macro_f1_drop", "confident_share", "confident_agreement", "label_agreement",
                "mean_kl", "batch_invariance", "max_batch_prob_diff", "fp32_accuracy", "int8_macro_f1"):
        assert key in recorded


def _only_failure(figures: gate.GateFigures, words: str) -> str:
    failed = figures.failed()
    assert len(failed) == 1 and words in failed[0], failed
    with pytest.raises(QuantizationGateError) as err:
        gate.check(figures)
    assert err.value.failed == failed and err.value.figures == figures.to_json()
    assert failed[0] in str(err.value)
    return failed[0]


def test_accuracy_ratio_fails_alone() -> None:
    case = Case()
    flipped = case.unconfident_right[::8][:12]  # right -> wrong, spread over the classes, near-ties only
    case.int8_pred[flipped] = (case.y[flipped] + 1) % N_CLASSES
    figures = case.figures()
    assert figures.accuracy_ratio < gate.MIN_ACCURACY_RATIO and figures.macro_f1_drop <= gate.MAX_MACRO_F1_DROP
    assert "of fp32's" in _only_failure(figures, "accuracy")


def test_macro_f1_drop_fails_alone() -> None:
    case = Case()
    # Near-ties only, accuracy unchanged: the rare classes lose their right answers (20), as many
    # wrong answers in the common classes become right, and the other wrong answers all land on
    # the rare class 4 (false positives).
    wrong, right = case.unconfident_wrong, case.unconfident_right
    fixed = wrong[(case.y[wrong] >= 1) & (case.y[wrong] <= 3)][:20]
    case.int8_pred[fixed] = case.y[fixed]
    rare = right[(case.y[right] == 0) | (case.y[right] == 4)]
    case.int8_pred[rare] = np.where(case.y[rare] == 0, 1, 3)
    case.int8_pred[np.setdiff1d(wrong[case.y[wrong] != 4], fixed)] = 4
    figures = case.figures()
    assert figures.int8_accuracy == figures.fp32_accuracy and figures.macro_f1_drop > gate.MAX_MACRO_F1_DROP
    _only_failure(figures, "macro-F1")


def test_confident_agreement_fails_alone() -> None:
    case = Case()
    changed = case.confident_wrong[:10]  # confident and wrong -> wrong elsewhere: accuracy unchanged
    case.int8_pred[changed] = (case.y[changed] + 2) % N_CLASSES
    figures = case.figures()
    assert figures.confident_agreement == pytest.approx(790 / 800)
    assert figures.int8_accuracy == figures.fp32_accuracy
    assert "where fp32 is confident" in _only_failure(figures, "agree with fp32")


def test_batch_invariance_fails_alone() -> None:
    case = Case()
    case.alone_pred = case.int8_pred.copy()
    case.alone_pred[case.unconfident_right[:2]] += 1  # 2 in 1,000 labels change when classified alone
    case.alone_pred %= N_CLASSES
    figures = case.figures()
    assert figures.batch_invariance == pytest.approx(0.998) and figures.max_batch_prob_diff > 0
    assert "max |Δp|" in _only_failure(figures, "alone and in batches")


def test_every_failed_clause_is_listed() -> None:
    case = Case()
    case.int8_pred = (case.fp32_pred + 1) % N_CLASSES
    case.alone_pred = case.fp32_pred
    figures = case.figures()
    assert figures.mean_kl > 1  # every label moved, most of them confident ones: about 1.9 nats
    with pytest.raises(QuantizationGateError) as err:
        gate.check(figures)
    assert len(err.value.failed) == 4
    assert str(err.value).count(";") >= 3


def test_mean_kl_is_fp32_from_int8_in_nats() -> None:
    """KL(fp32 ‖ int8) averaged over sentences: 0 for the same logits; fp32 (0.9, 0.1) against int8
    (0.5, 0.5) is 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) ≈ 0.368, not the reverse KL(int8 ‖ fp32) ≈ 0.511."""
    fp32 = np.log(np.array([[0.9, 0.1], [0.9, 0.1]], np.float32))
    int8 = np.log(np.array([[0.5, 0.5], [0.9, 0.1]], np.float32))  # the second sentence the same
    assert gate.figures_of(fp32, fp32, fp32).mean_kl == 0.0
    kl = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    assert gate.figures_of(fp32, int8, int8).mean_kl == pytest.approx(kl / 2, rel=1e-5)


def test_without_labels_only_agreement_and_invariance_are_checked() -> None:
    case = Case()
    fp32 = _logits(case.fp32_pred, case.confident)
    figures = gate.figures_of(fp32, fp32, fp32, None)
    assert figures.failed() == [] and figures.accuracy_ratio is None
    assert "accuracy_ratio" not in figures.to_json()


# -- on a tiny exported model, through the worker's loader ------------------------------------------

@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from sentistream.export import onnx_export
    from tests.tiny_models import make_checkpoint

    root = tmp_path_factory.mktemp("gate")
    return onnx_export.export_checkpoint(make_checkpoint("bert", root / "ckpt"), root / "fp32", name="tiny").bundle_dir


def _batch_dependent(fp32: Path, out: Path) -> Path:
    """A copy of ``fp32`` whose logits move with the rest of the batch, as dynamic per-tensor
    activation scales do: ``logits + c · (mean id of the batch − mean id of the sentence)``."""
    import onnx
    from onnx import helper, numpy_helper

    from sentistream.worker.bundle import Manifest

    shutil.copytree(fp32, out)
    model = onnx.load(str(out / "model.onnx"))
    logits = model.graph.output[0].name
    raw = logits + "_before_batch_term"
    for node in model.graph.node:
        node.output[:] = [raw if o == logits else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array([[5.0, -5.0, 0.0]], np.float32), "batch_c"))
    model.graph.node.extend([
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["ids_f"], ["row_mean"], axes=[1], keepdims=1),
        helper.make_node("ReduceMean", ["ids_f"], ["batch_mean"], keepdims=1),
        helper.make_node("Sub", ["batch_mean", "row_mean"], ["offset"]),
        helper.make_node("Mul", ["offset", "batch_c"], ["batch_term"]),
        helper.make_node("Add", [raw, "batch_term"], [logits]),
    ])
    onnx.save(model, str(out / "model.onnx"))
    Manifest.read(out).rehashed(out).write(out)
    return out


def test_gate_on_a_tiny_model_refuses_batch_dependent_logits(tiny_bert, tmp_path) -> None:
    from sentistream.export import onnx_export

    texts = onnx_export.SAMPLE_SENTENCES * 2
    same = gate.gate(tiny_bert, tiny_bert, texts, None)
    assert same.batch_invariance == 1.0 and same.label_agreement == 1.0
    with pytest.raises(QuantizationGateError) as err:
        gate.gate(tiny_bert, _batch_dependent(tiny_bert, tmp_path / "variant"), texts, None)
    assert err.value.figures["batch_invariance"] < gate.MIN_BATCH_INVARIANCE
    assert err.value.figures["max_batch_prob_diff"] > 0.1
    assert any("alone and in batches" in f for f in err.value.failed)


def test_static_smoothed_int8_is_batch_invariant(tiny_bert, tmp_path) -> None:
    from sentistream.export import onnx_export
    from sentistream.export import quantize as quant

    texts = onnx_export.SAMPLE_SENTENCES * 2
    int8 = quant.quantize(tiny_bert, tmp_path / "int8", method="static-smoothed", calibration_texts=texts)
    figures = gate.measure(tiny_bert, int8, texts, None)
    assert figures.batch_invariance == 1.0 and figures.max_batch_prob_diff < 1e-4


def test_weight_only_bundle_folds_back_to_the_fp32_it_computes(tiny_bert, tmp_path) -> None:
    from sentistream.export import onnx_export
    from sentistream.export import quantize as quant
    from sentistream.worker.bundle import Bundle, Manifest

    weight_only = quant.quantize(tiny_bert, tmp_path / "int8", method="weight-only")
    Manifest.read(weight_only).model_copy(update={"parity": {"max_abs_logit_diff": 0.0}}).rehashed(weight_only).write(
        weight_only)
    folded = quant.fp32_reference(weight_only, tmp_path / "fp32")
    manifest = Manifest.read(folded)
    assert manifest.precision == "fp32" and manifest.quantization is None and manifest.session_config == {}
    assert manifest.extra["folded_from"]["original_fp32_export_parity"] == {"max_abs_logit_diff": 0.0}
    import onnx

    model = onnx.load(str(folded / "model.onnx"))
    assert "DequantizeLinear" not in {n.op_type for n in model.graph.node}
    assert not [i.name for i in model.graph.initializer if i.data_type != onnx.TensorProto.FLOAT
                and i.name.endswith("_q8")]
    texts = onnx_export.SAMPLE_SENTENCES
    assert np.array_equal(Bundle(folded).logits(texts), Bundle(weight_only).logits(texts))
    with pytest.raises(ValueError, match="not a weight-only"):
        quant.fp32_reference(folded, tmp_path / "again")


def test_export_quantize_gates_against_the_given_fp32_bundle(tiny_bert, tmp_path) -> None:
    import contextlib
    import io

    from sentistream.cli.app import main
    from sentistream.worker.bundle import Bundle, Manifest

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["export", "quantize", "--fp32-bundle", str(tiny_bert), "--out", str(tmp_path / "int8")])
    assert exit_.value.code in (0, None), out.getvalue()
    quantization = Manifest.read(tmp_path / "int8").quantization
    assert quantization["method"] == quant_first() and quantization["gate"]["criterion"] == gate.CRITERION
    assert quantization["reference"]["model_sha256"] == Manifest.read(tiny_bert).files["model.onnx"]
    Bundle(tmp_path / "int8")


def quant_first() -> str:
    from sentistream.export import quantize as quant

    return quant.AUTO_ORDER[0]
