"""A second runtime (worker/sessions.py): the ``runtime`` setting and its refusal of a runtime the
bundle has not passed, the int8 gate per runtime and its record in the manifest (``export`` and
``export gate``), batch invariance on each runtime, ``auto``, and the runtime in results and metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from sentistream.worker.bundle import MANIFEST, TIMING_TEXTS, Bundle, BundleError, Manifest, default_bundle_path
from sentistream.worker.contract import CONTRACT_VERSION, json_schemas
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.pipeline import Pipeline
from sentistream.worker.sessions import RUNTIMES, fastest
from sentistream.worker.settings import Settings
from tests.streams import TEXTS

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")
SHIPPED = default_bundle_path()


def copy_bundle(src: Path, out: Path, **update) -> Path:
    """A copy of the bundle at ``src`` whose manifest is updated with ``update`` (hashes unchanged)."""
    shutil.copytree(src, out)
    Manifest.read(out).model_copy(update=update).write(out)
    return out


def one_line(exc: BaseException) -> bool:
    return len(str(exc).splitlines()) == 1


# -- the setting and its refusal -------------------------------------------------------------------
def test_runtime_is_a_setting_from_the_environment_and_a_flag(monkeypatch) -> None:
    from sentistream.bench.worker_process import worker_command

    assert Settings().runtime == "onnxruntime"
    monkeypatch.setenv("SENTISTREAM_RUNTIME", "auto")
    assert Settings().runtime == "auto"
    with pytest.raises(ValidationError):
        Settings(runtime="tensorrt")
    argv = worker_command(Settings(runtime="openvino"))
    assert argv[argv.index("--runtime") + 1] == "openvino"


def test_the_shipped_bundle_passed_both_runtimes_and_an_older_manifest_means_onnxruntime_alone(tmp_path) -> None:
    shipped = Manifest.read(SHIPPED)
    assert shipped.passed_runtimes() == RUNTIMES
    assert shipped.runtimes["onnxruntime"]["gate"] == shipped.quantization["gate"]
    assert shipped.runtimes["openvino"]["reference"] == "onnxruntime"
    older = copy_bundle(SHIPPED, tmp_path / "older", runtimes=None)
    assert "runtimes" not in json.loads((older / MANIFEST).read_text())
    assert Manifest.read(older).passed_runtimes() == ("onnxruntime",)
    assert Bundle(older).runtime == "onnxruntime"


def test_a_runtime_the_bundle_has_not_passed_is_refused_in_one_line(tmp_path) -> None:
    older = copy_bundle(SHIPPED, tmp_path / "older", runtimes=None)
    with pytest.raises(BundleError, match="has not passed the int8 gate on openvino") as err:
        Bundle(older, runtime="openvino")
    assert one_line(err.value) and "sentistream export gate" in str(err.value)
    only_openvino = copy_bundle(SHIPPED, tmp_path / "only-openvino",
                                runtimes={"openvino": Manifest.read(SHIPPED).runtimes["openvino"]})
    with pytest.raises(BundleError, match="has not passed the int8 gate on onnxruntime"):
        Bundle(only_openvino)
    env = {**os.environ, "SENTISTREAM_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "",
           "SENTISTREAM_BOOTSTRAP_SERVERS": ""}
    result = subprocess.run([sys.executable, "-m", "sentistream.cli", "worker", "--bundle", str(older),
                             "--runtime", "openvino"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "has not passed the int8 gate on openvino" in result.stderr
    assert "Traceback" not in result.stderr


# -- the same model on each runtime -----------------------------------------------------------------
@pytest.fixture(scope="module", params=RUNTIMES)
def on_runtime(request) -> Bundle:
    return Bundle(SHIPPED, runtime=request.param)


def test_a_sentence_gets_the_same_label_alone_and_in_a_batch_of_32_on_each_runtime(on_runtime) -> None:
    texts = ([*TEXTS, *TIMING_TEXTS] * 4)[:32]  # lengths from 3 to 64 tokens: the batch is padded
    batched = on_runtime.classify(texts)
    for text, in_batch in zip(texts, batched, strict=True):
        alone = on_runtime.classify([text])[0]
        assert alone.label == in_batch.label, text
        assert max(abs(alone.scores[k] - in_batch.scores[k]) for k in alone.scores) < 1e-3, text


def test_both_runtimes_give_the_shipped_labels_on_the_sample_sentences() -> None:
    labels = {r: [p.label for p in Bundle(SHIPPED, runtime=r).classify(list(TIMING_TEXTS))] for r in RUNTIMES}
    assert labels["openvino"] == labels["onnxruntime"]


# -- auto -----------------------------------------------------------------------------------------
def test_auto_picks_one_of_the_runtimes_the_bundle_passed_and_says_what_it_measured(tmp_path, caplog) -> None:
    with caplog.at_level("INFO", logger="sentistream.worker.bundle"):
        chosen = Bundle(SHIPPED, runtime="auto").runtime
    assert chosen in Manifest.read(SHIPPED).passed_runtimes()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("runtime auto:")]
    assert len(lines) == 1 and all(runtime in lines[0] for runtime in RUNTIMES), lines
    older = copy_bundle(SHIPPED, tmp_path / "older", runtimes=None)
    assert Bundle(older, runtime="auto").runtime == "onnxruntime"


class FakeSession:
    """Costs ``ticks`` of a fake clock per batch."""

    def __init__(self, runtime: str, ticks: float, clock: list[float]) -> None:
        self.runtime, self.ticks, self.clock, self.batches = runtime, ticks, clock, 0

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.clock[0] += self.ticks
        self.batches += 1
        return np.zeros((len(feeds["input_ids"]), 2), np.float32)


def test_fastest_chooses_by_sentences_per_second_and_stays_within_its_budget() -> None:
    clock = [0.0]
    slow, quick = FakeSession("onnxruntime", 0.02, clock), FakeSession("openvino", 0.01, clock)
    feeds = [{"input_ids": np.zeros((32, 8), np.int64)}] * 3
    timing = fastest([slow, quick], feeds, budget_s=0.5, rounds=5, clock=lambda: clock[0])
    assert timing.chosen is quick and timing.rates["openvino"] == pytest.approx(2 * timing.rates["onnxruntime"])
    assert timing.rates["openvino"] == pytest.approx(96 / 0.03)
    assert timing.rounds == 5 and timing.seconds == pytest.approx(0.03 + 5 * 0.09)
    clock[0] = 0.0
    tight = fastest([slow, quick], feeds, budget_s=0.25, rounds=5, clock=lambda: clock[0])
    assert tight.rounds == 2 and tight.seconds <= 0.25  # a third round would end past the budget
    clock[0] = 0.0
    assert fastest([slow, quick], feeds, budget_s=0.0, clock=lambda: clock[0]).rounds == 1  # at least one
    assert "openvino" in timing.line(3, 32, 1).split("(")[0]


# -- results and metrics ------------------------------------------------------------------------------
def test_results_and_the_model_metric_name_the_runtime(on_runtime) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.serving(on_runtime)
    pipeline = Pipeline(Settings(), on_runtime, metrics)
    records = [Rec("in", 0, 0, 0, None, json.dumps({"id": "a", "text": TEXTS[0]}).encode(), []),
               Rec("in", 0, 1, 0, None, json.dumps({"id": "b", "text": "Fine. Not great.", "split": True}).encode(), [])]
    results = [json.loads(m.value) for h in pipeline.handle([pipeline.decode(r) for r in records]) for m in h.messages]
    m = on_runtime.manifest
    assert {r["kind"] for r in results} == {"sentence", "review"}
    assert all(r["model"] == {"name": m.name, "version": m.version, "runtime": on_runtime.runtime} for r in results)
    assert registry.get_sample_value("sentistream_model_info", {"name": m.name, "version": m.version, "sha256": m.files[
        "model.onnx"], "runtime": on_runtime.runtime}) == 1
    assert CONTRACT_VERSION == "1.5"
    assert "runtime" in json_schemas()["result"]["$defs"]["ModelRef"]["properties"]


# -- the gate per runtime (export extra) ------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory) -> Path:
    from sentistream.export import cli
    from tests.tiny_models import make_checkpoint

    root = tmp_path_factory.mktemp("runtimes")
    checkpoint = make_checkpoint("bert", root / "ckpt")
    cli.build_bundle(checkpoint, root / "int8", quantize="int8", method="static-smoothed", name="tiny", version="1",
                     max_length=None)
    return root / "int8"


def export_main(*args: str) -> tuple[int, str]:
    """``sentistream export ARGS`` in this process: exit code and stderr."""
    import contextlib
    import io

    from sentistream.cli.app import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["export", *args])
    return exit_.value.code, err.getvalue()


@pytest.mark.export
def test_export_gates_every_installed_runtime_against_fp32_and_records_them(int8_bundle) -> None:
    import onnxruntime
    import openvino

    m = Manifest.read(int8_bundle)
    assert m.passed_runtimes() == RUNTIMES
    assert m.runtimes["onnxruntime"] == {"version": onnxruntime.__version__, "reference": "fp32",
                                         "gate": m.quantization["gate"]}
    assert m.runtimes["openvino"]["version"] == openvino.__version__.split("-")[0]
    assert m.runtimes["openvino"]["reference"] == "fp32" and m.runtimes["openvino"]["gate"]["batch_invariance"] >= 0.999
    assert Bundle(int8_bundle, runtime="openvino").runtime == "openvino"


@pytest.mark.export
def test_export_gate_adds_a_runtime_to_an_existing_bundle_without_changing_its_model(int8_bundle, tmp_path) -> None:
    older = copy_bundle(int8_bundle, tmp_path / "older", runtimes=None)
    model = (older / "model.onnx").read_bytes()
    code, err = export_main("gate", "--bundle", str(older), "--runtime", "openvino")
    assert code == 0, err
    m = Manifest.read(older)
    assert m.passed_runtimes() == RUNTIMES and m.runtimes["openvino"]["reference"] == "onnxruntime"
    assert m.runtimes["onnxruntime"]["version"] == m.onnxruntime_version  # seeded from the recorded gate
    assert (older / "model.onnx").read_bytes() == model and m.files == Manifest.read(int8_bundle).files
    assert Bundle(older, runtime="openvino").runtime == "openvino"

    fp32 = int8_bundle.with_name(int8_bundle.name + "-fp32")
    again = copy_bundle(int8_bundle, tmp_path / "again", runtimes=None)
    assert export_main("gate", "--bundle", str(again), "--runtime", "openvino", "--fp32", str(fp32))[0] == 0
    assert Manifest.read(again).runtimes["openvino"]["reference"] == "fp32"


@pytest.mark.export
def test_export_gate_refuses_in_one_line_and_writes_nothing(int8_bundle, tmp_path, monkeypatch) -> None:
    from sentistream.export import gate as int8_gate

    older = copy_bundle(int8_bundle, tmp_path / "older", runtimes=None)
    before = (older / MANIFEST).read_bytes()
    code, err = export_main("gate", "--bundle", str(older), "--runtime", "openvino", "--fp32", str(int8_bundle))
    assert code == 2 and "is not the fp32 export" in err and len(err.strip().splitlines()) == 1, err
    fp32 = int8_bundle.with_name(int8_bundle.name + "-fp32")
    code, err = export_main("gate", "--bundle", str(fp32), "--runtime", "openvino")
    assert code == 2 and "records no int8 gate" in err and len(err.strip().splitlines()) == 1, err

    real = int8_gate.measure_runtime
    monkeypatch.setattr(int8_gate, "measure_runtime", lambda *a, **k: dataclasses.replace(real(*a, **k),
                                                                                          batch_invariance=0.5))
    code, err = export_main("gate", "--bundle", str(older), "--runtime", "openvino")
    assert code == 2 and "int8 refused" in err and "batches" in err, err
    assert (older / MANIFEST).read_bytes() == before
