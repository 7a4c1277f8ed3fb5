"""One record is one fault domain (worker/faults.py), without Kafka: whatever one record makes the
worker raise, at any stage, ends as that record's dead letter (``internal_error``, or
``model_error`` for the tokenizer and the model) and every other record gets its results."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest

from sentistream.worker import pipeline as pipeline_module
from sentistream.worker.bundle import Bundle, default_bundle_path
from sentistream.worker.contract import Reason
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.pipeline import Pipeline
from sentistream.worker.settings import Settings

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")
POISON = "poison"


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic in tokenizers: a BaseException."""


FAULTS = [PanicException("called `Option::unwrap()` on a `None` value"), RecursionError("maximum recursion depth"),
          MemoryError(), ValueError("odd"), AssertionError("broken invariant")]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle(default_bundle_path())


class Faulty:
    """The real bundle, except that tokenizing or classifying the poisoned text raises ``fault``."""

    def __init__(self, bundle: Bundle, fault: BaseException, where: str) -> None:
        self.bundle, self.manifest, self.runtime = bundle, bundle.manifest, bundle.runtime
        self.fault, self.where = fault, where
        self.poison_ids = bundle.tokenize([POISON])[0].ids

    def tokenize(self, texts):
        if self.where == "tokenize" and POISON in texts:
            raise self.fault
        return self.bundle.tokenize(texts)

    def token_count(self, text):
        if self.where == "count" and POISON in text:
            raise self.fault
        return self.bundle.token_count(text)

    def classify_encoded(self, encodings):
        if self.where == "classify" and any(e.ids == self.poison_ids for e in encodings):
            raise self.fault
        return self.bundle.classify_encoded(encodings)


def records(values: list[bytes]) -> list[Rec]:
    return [Rec("in", 0, i, 0, None, v, []) for i, v in enumerate(values)]


def texts_with_poison_at(n: int, at: int) -> list[bytes]:
    return [json.dumps({"id": f"m{i}", "text": POISON if i == at else f"A fine film, number {i}."}).encode()
            for i in range(n)]


def outcome(pipeline: Pipeline, values: list[bytes]) -> dict[int, str]:
    """Per offset: 'ok' or the dead letter's reason."""
    handled = pipeline.handle([pipeline.decode(r) for r in records(values)])
    assert [h.record.offset for h in handled] == list(range(len(values))), "a record was lost or repeated"
    return {h.record.offset: h.rejection.reason.value if h.rejection else "ok" for h in handled}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: type(f).__name__)
@pytest.mark.parametrize("where", ["tokenize", "classify", "count"])
def test_a_fault_in_the_model_stages_is_confined_to_its_record(bundle, fault, where) -> None:
    values = texts_with_poison_at(20, at=13)
    if where == "count":  # the true length is counted only for a text longer than the model reads
        values[13] = json.dumps({"id": "m13", "text": POISON + " word" * 600}).encode()
    got = outcome(Pipeline(Settings(batch_size=8), Faulty(bundle, fault, where), WorkerMetrics(None)), values)
    assert got[13] in ("model_error", "internal_error")
    assert all(v == "ok" for k, v in got.items() if k != 13), got


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: type(f).__name__)
def test_a_fault_while_decoding_is_its_records_internal_error(bundle, fault, monkeypatch) -> None:
    real = pipeline_module.parse

    def parse(record, max_bytes):
        if b"poison" in record.value:
            raise fault
        return real(record, max_bytes)

    monkeypatch.setattr(pipeline_module, "parse", parse)
    pipeline = Pipeline(Settings(), bundle, WorkerMetrics(None))
    got = outcome(pipeline, texts_with_poison_at(5, at=2))
    assert got == {0: "ok", 1: "ok", 2: "internal_error", 3: "ok", 4: "ok"}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: type(f).__name__)
def test_a_fault_in_the_splitter_is_its_records_internal_error(bundle, fault) -> None:
    def splitter(text: str) -> list[str]:
        if POISON in text:
            raise fault
        return text.split(". ")

    pipeline = Pipeline(Settings(split_sentences=True), bundle, WorkerMetrics(None), splitter)
    got = outcome(pipeline, texts_with_poison_at(5, at=0))
    assert got == {0: "internal_error", 1: "ok", 2: "ok", 3: "ok", 4: "ok"}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: type(f).__name__)
def test_a_fault_while_building_results_is_its_records_internal_error(bundle, fault, monkeypatch) -> None:
    pipeline = Pipeline(Settings(), bundle, WorkerMetrics(None))
    real = pipeline._results

    def results(d, classified, shadow=None):
        if d.sentences[0].text == POISON:
            raise fault
        return real(d, classified, shadow)

    monkeypatch.setattr(pipeline, "_results", results)
    got = outcome(pipeline, texts_with_poison_at(6, at=5))
    assert got == {0: "ok", 1: "ok", 2: "ok", 3: "ok", 4: "ok", 5: "internal_error"}
    handled = pipeline.handle([pipeline.decode(r) for r in records(texts_with_poison_at(1, at=0))])
    detail = dict(handled[0].messages[0].headers)["sentistream-dlq-detail"].decode()
    assert detail.startswith(f"building results: {type(fault).__name__}")


def test_a_fault_in_the_shared_step_is_bisected_to_its_record(bundle, monkeypatch) -> None:
    """Even a fault outside the per-sentence guards (here: in the shadow's comparison hook, which
    runs once for the whole window) costs only the record that causes it."""
    pipeline = Pipeline(Settings(batch_size=4), bundle, WorkerMetrics(None))
    real = pipeline._classify

    def classify(sentences):
        if any(s.text == POISON for s in sentences):
            raise PanicException("a panic in the shared step")
        return real(sentences)

    monkeypatch.setattr(pipeline, "_classify", classify)
    got = outcome(pipeline, texts_with_poison_at(11, at=6))
    assert got[6] == "internal_error" and sum(v == "ok" for v in got.values()) == 10


def test_a_process_exit_is_not_kept_by_the_boundary(bundle, monkeypatch) -> None:
    pipeline = Pipeline(Settings(), bundle, WorkerMetrics(None))
    monkeypatch.setattr(pipeline, "_classify", lambda sentences: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        outcome(pipeline, texts_with_poison_at(3, at=1))


@pytest.mark.parametrize("value", [b"[" * 5000 + b"]" * 5000, b"[" * 100_000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                                   b'"' + b"\\ud800" * 10 + b'"', b"9" * 5000, b"-" + b"1" * 4400 + b"e99999"])
def test_top_level_values_that_broke_the_parser_are_dead_lettered_or_classified(bundle, value) -> None:
    got = outcome(Pipeline(Settings(max_message_bytes=1 << 20), bundle, WorkerMetrics(None)), [value])
    assert got[0] in ("ok", "invalid_json", "invalid_utf8", "not_an_object", "empty_text", "invalid_field"), got


def test_results_of_one_record_are_bounded_together_headers_and_meta_included(bundle) -> None:
    """A review split into many sentences repeats its headers and meta on each result: the record
    is refused (result_too_large) before it is classified, not published as hundreds of MB."""
    text = " ".join(f"Sentence number {i} is fine." for i in range(200))
    value = json.dumps({"id": "r", "text": text, "split": True, "extra": "m" * 20_000}).encode()
    record = Rec("in", 0, 0, 0, b"k", value, [("h", b"x" * 50_000)])
    pipeline = Pipeline(Settings(max_message_bytes=1 << 20), bundle, WorkerMetrics(None))
    decoded = pipeline.decode(record)
    assert decoded.rejection is not None and decoded.rejection.reason is Reason.RESULT_TOO_LARGE
    assert "max_output_bytes" in decoded.rejection.detail
    small = Rec("in", 0, 1, 0, b"k", json.dumps({"id": "s", "text": "One. Two. Three.", "split": True}).encode(), [])
    [h] = pipeline.handle([pipeline.decode(small)])
    assert h.rejection is None and len(h.messages) == 4  # three sentences and the review
