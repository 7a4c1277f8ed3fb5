"""Live model operations without Kafka: a shadow beside the serving bundle, promotion, rollback,
refused commands (worker/shadow.py, worker/model_ops.py, worker/control.py)."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sentistream.worker.bundle import Bundle, Manifest, default_bundle_path
from sentistream.worker.control import Command, ControlRecord, Received, State, manifest_digest, read_command
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.model_ops import ModelOps
from sentistream.worker.pipeline import Pipeline
from sentistream.worker.settings import Settings
from sentistream.worker.swap_rule import SwapRule
from tests.candidates import SHORT, candidate_bundle
from tests.streams import TEXTS

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")
SERVING = Manifest.read(default_bundle_path()).version  # the shipped bundle's


@pytest.fixture(scope="module")
def candidate(tmp_path_factory) -> Path:
    return candidate_bundle(tmp_path_factory.mktemp("candidate") / "short")


def make_ops(roots: list[Path], **settings) -> tuple[ModelOps, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    s = Settings(batch_size=4, bundle_roots=":".join(str(r) for r in roots), **settings)
    pipeline = Pipeline(s, Bundle(default_bundle_path()), metrics)
    return ModelOps(s, pipeline, metrics), registry


@pytest.fixture
def ops(candidate, tmp_path) -> tuple[ModelOps, CollectorRegistry]:
    return make_ops([default_bundle_path().parent, candidate.parent, tmp_path])


def handle(ops: ModelOps, texts: list[str], first: int = 0) -> list[dict]:
    p = ops.pipeline
    handled = p.handle([p.decode(Rec("in", 0, first + i, 0, None, json.dumps({"id": f"m{first + i}", "text": t})
                                     .encode(), [])) for i, t in enumerate(texts)])
    return [{**json.loads(m.value), "headers": dict(m.headers)} for h in handled for m in h.messages]


def record(name: str, path: Path | str, offset: int = 7, sha256: str | None = None, **extra) -> ControlRecord:
    """The control record ``sentistream model`` would write (``extra``: more JSON fields)."""
    cmd = Command(command=name, bundle=str(path), sha256=sha256 or manifest_digest(Path(path)))
    key, value = cmd.encode()
    fields = {**json.loads(value), **({"sha256": sha256} if sha256 else {}), **extra}  # the hash as given
    return ControlRecord(f"ctl[0]@{offset}", key, json.dumps(fields).encode())


def command(name: str, path: Path, offset: int = 7) -> Received:
    return read_command(record(name, path, offset))


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float:
    return registry.get_sample_value(metric, labels) or 0.0


def refused(registry: CollectorRegistry) -> dict[str, float]:
    return {s.labels["reason"]: s.value for m in registry.collect() for s in m.samples
            if s.name == "sentistream_control_refused_total" and s.value}


def test_the_shadow_sees_every_sentence_and_its_agreement_matches_an_offline_comparison(ops, candidate) -> None:
    ops_, registry = ops
    assert ops_.start_shadow(candidate)
    texts = TEXTS * 9 + TEXTS[:2]  # 47 sentences, several batches
    results = handle(ops_, texts)
    serving, shadow = Bundle(default_bundle_path()), Bundle(candidate)
    offline = [a.label == b.label for a, b in zip(serving.classify(texts), shadow.classify(texts), strict=True)]
    assert 0 < sum(offline) < len(texts)  # the two disagree on some sentences: the test can tell
    assert value(registry, "sentistream_shadow_agreement_ratio") == pytest.approx(sum(offline) / len(texts))
    confusion = {(s.labels["serving"], s.labels["shadow"]): s.value for s in registry.collect()
                 for s in s.samples if s.name == "sentistream_shadow_predictions_total"}
    assert sum(confusion.values()) == len(texts)
    assert sum(n for (a, b), n in confusion.items() if a == b) == sum(offline)
    # only the serving model's results are published; each says the shadow saw it
    assert {r["model"]["version"] for r in results} == {SERVING}
    assert {r["headers"]["sentistream-shadow"] for r in results} == {f"sst5-minilm:{SHORT}".encode()}
    assert [r["label"] for r in results] == [p.label for p in serving.classify(texts)]
    assert value(registry, "sentistream_shadow_inference_seconds_count") >= 2


def test_a_shadow_that_crashes_is_dropped_and_serving_goes_on(ops, candidate) -> None:
    ops_, registry = ops
    ops_.start_shadow(candidate)

    def broken(_encodings):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory")

    ops_.shadow.bundle.classify_encoded = broken
    results = handle(ops_, TEXTS)
    assert len(results) == len(TEXTS) and all("sentistream-shadow" not in r["headers"] for r in results)
    assert ops_.shadow is None and value(registry, "sentistream_shadow_dropped_total", reason="crashed") == 1
    assert value(registry, "sentistream_shadow_info", name="sst5-minilm", version=SHORT,
                 sha256=Bundle(candidate).manifest.files["model.onnx"]) == 0
    assert len(handle(ops_, TEXTS, first=10)) == len(TEXTS)


def test_a_shadow_that_cannot_load_is_dropped_with_a_metric(ops, tmp_path) -> None:
    ops_, registry = ops
    broken = candidate_bundle(tmp_path / "broken")
    (broken / "model.onnx").unlink()
    (broken / "model.onnx").write_bytes(b"not a model")
    assert not ops_.start_shadow(broken)
    assert ops_.shadow is None and value(registry, "sentistream_shadow_dropped_total", reason="load_failed") == 1
    assert len(handle(ops_, TEXTS)) == len(TEXTS)


def test_shadow_then_promote_switches_between_batches_and_results_say_which_version(ops, candidate) -> None:
    ops_, registry = ops
    assert ops_.handle(record("shadow", candidate))
    before = handle(ops_, TEXTS)
    assert ops_.handle(record("promote", candidate))
    after = handle(ops_, TEXTS, first=5)
    assert {r["model"]["version"] for r in before} == {SERVING}
    assert {r["model"]["version"] for r in after} == {SHORT}
    assert {r["headers"]["sentistream-model"] for r in after} == {f"sst5-minilm:{SHORT}".encode()}
    assert [r["label"] for r in after] == [p.label for p in Bundle(candidate).classify(TEXTS)]
    assert ops_.shadow is None and value(registry, "sentistream_model_swaps_total", command="promote") == 1
    sha = Bundle(default_bundle_path()).manifest.files["model.onnx"]
    assert value(registry, "sentistream_model_info", name="sst5-minilm", version=SERVING, sha256=sha,
                 runtime="onnxruntime") == 0
    assert value(registry, "sentistream_model_info", name="sst5-minilm", version=SHORT, sha256=sha,
                 runtime="onnxruntime") == 1
    assert ops_.handle(record("rollback", default_bundle_path()))
    assert {r["model"]["version"] for r in handle(ops_, TEXTS, first=10)} == {SERVING}


def test_bad_commands_are_refused_and_change_nothing(ops, candidate, tmp_path, caplog) -> None:
    ops_, registry = ops
    other_labels = candidate_bundle(tmp_path / "labels", version="2.0.0", labels=["a", "b", "c", "d", "e"])
    for bad in (record("promote", candidate, offset=8, sha256="0" * 64), record("promote", other_labels),
                record("shadow", tmp_path / "nowhere", sha256="ab" * 32),
                ControlRecord("ctl[0]@10", b"serving", b'{"command": "explode"}')):
        assert not ops_.handle(bad)
    assert ops_.pipeline.model.version == SERVING and ops_.shadow is None and ops_.state == State()
    assert refused(registry) == {"hash_mismatch": 1, "label_change": 1, "unknown_bundle": 1, "invalid_command": 1}
    assert "ctl[0]@8" in caplog.text and "hash_mismatch" in caplog.text
    # a command grants nothing: the field earlier versions wrote is read and ignored
    assert not ops_.handle(record("promote", other_labels, allow_label_change=True))
    assert ops_.pipeline.model.version == SERVING and refused(registry)["label_change"] == 2
    allowing, _ = make_ops([tmp_path], allow_label_change=True)  # the worker's own setting does
    assert allowing.handle(record("promote", other_labels))
    assert allowing.pipeline.model.version == "2.0.0"


def test_swap_when_promotes_the_shadow_once_it_has_agreed_often_enough(candidate) -> None:
    assert SwapRule.parse("agreement>=0.97,after=10000") == SwapRule(0.97, 10000)
    for bad in ("agreement>0.9", "agreement>=1.5,after=10", "after=10"):
        with pytest.raises(ValueError):
            SwapRule.parse(bad)
    metrics = WorkerMetrics(None)
    settings = Settings(swap_when="agreement>=0.75,after=10", shadow_bundle=candidate)
    pipeline = Pipeline(settings, Bundle(default_bundle_path()), metrics)
    ops_ = ModelOps(settings, pipeline, metrics)
    ops_.start_shadow(candidate)
    handle(ops_, TEXTS)
    ops_.check_rule()  # 5 sentences compared: not yet
    assert pipeline.model.version == SERVING
    handle(ops_, TEXTS, first=5)
    ops_.check_rule()  # 10 compared, agreement 0.8
    assert pipeline.model.version == SHORT and ops_.shadow is None


def test_a_starting_worker_replays_the_commands_that_can_be_carried_out(ops, candidate) -> None:
    ops_, registry = ops
    forged = record("promote", candidate, offset=3, sha256="0" * 64)
    ops_.replay([record("shadow", candidate, 1), record("promote", candidate, 2), forged])
    assert ops_.pipeline.model.version == SHORT and ops_.shadow is None  # promoted: no shadow of itself
    assert refused(registry) == {"hash_mismatch": 1}


@pytest.mark.parametrize(("args", "says"), [
    (["shadow", "/nonexistent"], "bundle directory /nonexistent does not exist"),
    (["promote", str(default_bundle_path()), "--sha256", "0" * 64], "refused: "),
])
def test_the_model_command_refuses_a_bad_command_in_one_line_before_any_kafka_call(args, says) -> None:
    import subprocess
    import sys

    # no broker answers at port 1: a command that got as far as Kafka would fail otherwise
    done = subprocess.run([sys.executable, "-m", "sentistream.cli", "model", *args, "--bootstrap", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
