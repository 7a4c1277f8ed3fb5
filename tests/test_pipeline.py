"""The pipeline without Kafka: one bad sentence never costs the others their results."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest

from sentistream.worker.bundle import Bundle, default_bundle_path
from sentistream.worker.contract import Reason, UnreadableRecord
from sentistream.worker.metrics import WorkerMetrics
from sentistream.worker.pipeline import Pipeline
from sentistream.worker.settings import Settings
from sentistream.worker.splitting import make_splitter

Rec = namedtuple("Rec", "topic partition offset timestamp key value headers")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle(default_bundle_path())


class Poisoned:
    """The real bundle, except that any batch holding the poisoned text fails like onnxruntime."""

    def __init__(self, bundle: Bundle, poison: str, transient: int = 0) -> None:
        self.bundle, self.manifest, self.runtime, self.calls = bundle, bundle.manifest, bundle.runtime, 0
        self.poison_ids = bundle.tokenize([poison])[0].ids
        self.transient = transient  # the first N calls fail whatever they hold

    def tokenize(self, texts):
        return self.bundle.tokenize(texts)

    def token_count(self, text):
        return self.bundle.token_count(text)

    def classify_encoded(self, encodings):
        self.calls += 1
        if self.calls <= self.transient or any(e.ids == self.poison_ids for e in encodings):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")
        return self.bundle.classify_encoded(encodings)


def records(texts: list[str]) -> list[Rec]:
    return [Rec("in", 0, i, 0, None, json.dumps({"id": f"m{i}", "text": t}).encode(), []) for i, t in enumerate(texts)]


def run(pipeline: Pipeline, texts: list[str]):
    return pipeline.handle([pipeline.decode(r) for r in records(texts)])


def test_a_sentence_that_breaks_inference_is_found_by_bisection_and_only_it_is_dead_lettered(bundle) -> None:
    texts = [f"A fine film, number {i}." for i in range(31)] + ["The one sentence that breaks the model."]
    texts[17] = "The one sentence that breaks the model."
    fake = Poisoned(bundle, "The one sentence that breaks the model.")
    out = run(Pipeline(Settings(batch_size=32), fake, WorkerMetrics(None)), texts)
    rejected = [h.record.offset for h in out if h.rejection is not None]
    assert rejected == [17, 31]
    assert all(h.rejection.reason is Reason.MODEL_ERROR for h in out if h.rejection)
    assert sum(len(h.messages) for h in out if h.rejection is None) == 30  # the innocent are classified


def test_a_transient_inference_error_is_retried_before_anything_is_dead_lettered(bundle) -> None:
    fake = Poisoned(bundle, "never sent", transient=1)
    out = run(Pipeline(Settings(), fake, WorkerMetrics(None)), ["Good.", "Bad."])
    assert [h.rejection for h in out] == [None, None]


def test_split_bombs_and_too_many_sentences_are_refused_before_and_after_splitting(bundle) -> None:
    p = Pipeline(Settings(max_sentences=5, split_sentences=True), bundle, WorkerMetrics(None), make_splitter())
    bomb, six, five = p.decode(records(["a. " * 21_000])[0]), p.decode(records(["Mr Smith. " * 6])[0]), \
        p.decode(records(["Fine. " * 5])[0])
    assert bomb.rejection.reason is Reason.TOO_MANY_SENTENCES
    assert six.rejection is not None and six.rejection.reason is Reason.TOO_MANY_SENTENCES
    assert five.rejection is None and len(five.sentences) == 5


def test_long_text_is_flagged_truncated_with_its_true_token_count(bundle) -> None:
    p = Pipeline(Settings(), bundle, WorkerMetrics(None))
    long_text = "good " * 300
    short, long_ = run(p, ["Short and sweet.", long_text])
    short_result, long_result = json.loads(short.messages[0].value), json.loads(long_.messages[0].value)
    assert short_result["truncated"] is False and short_result["tokens"] == len(bundle.tokenize(["Short and sweet."])[0].ids)
    assert long_result["truncated"] is True and long_result["tokens"] == 302  # 300 words + [CLS] + [SEP]


def test_unreadable_record_becomes_a_dead_letter_with_the_clients_error(bundle) -> None:
    p = Pipeline(Settings(), bundle, WorkerMetrics(None))
    [h] = p.handle([p.decode(UnreadableRecord("in", 3, 7, 0, "CorruptRecordError: bad header key"))])
    assert h.rejection.reason is Reason.UNREADABLE_RECORD
    [m] = h.messages
    headers = dict(m.headers)
    assert m.value == b"" and headers["sentistream-source-offset"] == b"7"
    assert b"bad header key" in headers["sentistream-dlq-detail"]


def test_results_over_the_topic_limit_are_dead_lettered_and_huge_dead_letters_become_stubs(bundle) -> None:
    p = Pipeline(Settings(), bundle, WorkerMetrics(None))
    p.fit_topics({"sentences.labeled": 3000, "sentences.dlq": 3000})
    [h] = run(p, ["x" * 2900])
    assert h.rejection.reason is Reason.RESULT_TOO_LARGE
    assert h.messages[0].stub and h.messages[0].value == b""  # the record itself is over the DLQ's limit too


def _values(h) -> list[dict]:
    return [json.loads(m.value) for m in h.messages]


def test_a_split_review_yields_its_sentences_then_one_review_result_in_the_same_handled(bundle) -> None:
    p = Pipeline(Settings(split_sentences=True), bundle, WorkerMetrics(None), make_splitter())
    [h] = run(p, ["The acting is superb. A dull, lifeless film. An instant classic!"])
    *sentences, review = _values(h)
    assert [s["kind"] for s in sentences] == ["sentence"] * 3 and review["kind"] == "review"
    assert review["id"] == "m0" and review["sentences"] == 3 and h.labels == [s["label"] for s in sentences]
    assert review["label_counts"] == {label: h.labels.count(label) for label in bundle.labels}
    for label in bundle.labels:  # the mean of the sentences' class probabilities
        assert review["scores"][label] == pytest.approx(sum(s["scores"][label] for s in sentences) / 3, abs=1e-5)
    assert review["label"] == max(review["scores"], key=review["scores"].get)
    expected = sum(review["scores"][label] * (i / 2 - 1) for i, label in enumerate(bundle.labels))
    assert -1 <= review["score"] <= 1 and review["score"] == pytest.approx(expected, abs=1e-5)
    assert dict(h.messages[-1].headers)["sentistream-kind"] == b"review"
    assert dict(h.messages[0].headers)["sentistream-kind"] == b"sentence"


def test_a_message_can_ask_for_splitting_and_a_splitting_worker_can_be_told_not_to(bundle) -> None:
    text = "Great cast. Dull plot!"
    plain = Pipeline(Settings(), bundle, WorkerMetrics(None))
    asks = plain.decode(Rec("in", 0, 0, 0, None, json.dumps({"id": "a", "text": text, "split": True}).encode(), []))
    silent = plain.decode(Rec("in", 0, 1, 0, None, json.dumps({"id": "b", "text": text}).encode(), []))
    assert [s.text for s in asks.sentences] == ["Great cast.", "Dull plot!"] and asks.review
    assert len(silent.sentences) == 1 and not silent.review
    [h] = plain.handle([asks])
    assert [v["kind"] for v in _values(h)] == ["sentence", "sentence", "review"]
    assert "split" not in _values(h)[0]["meta"]  # a field of the contract, not carried through
    splitting = Pipeline(Settings(split_sentences=True), bundle, WorkerMetrics(None), make_splitter())
    told = splitting.decode(Rec("in", 0, 2, 0, None, json.dumps({"text": text, "split": False}).encode(), []))
    assert len(told.sentences) == 1 and not told.review


def test_a_review_result_over_the_limit_dead_letters_the_whole_record(bundle) -> None:
    p = Pipeline(Settings(split_sentences=True), bundle, WorkerMetrics(None), make_splitter())
    # its sentence results are 1,193 and 1,195 bytes (value, key, headers), its review result 1,231
    p.fit_topics({"sentences.labeled": 1213 + 512, "sentences.dlq": 1_000_000})
    meta = {"note": "x" * 700}  # carried on each sentence result and on the review result
    [h] = p.handle([p.decode(Rec("in", 0, 0, 0, None, json.dumps({"text": "Fine. Good.", **meta}).encode(), []))])
    assert len(h.messages) == 1 and h.messages[0].dead_letter  # no sentence result went without its review
    assert h.rejection is not None and h.rejection.reason is Reason.RESULT_TOO_LARGE
