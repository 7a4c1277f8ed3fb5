"""From raw records to what must be published for them: decode → split → tokenize → infer →
result or dead-letter messages. No Kafka here: the run loop polls, the delivery strategy sends.

The pipeline holds what serves: the bundle and its model, the shadow beside it, and the worker's
dead letters. Only its own methods change them (:meth:`Pipeline.swap`, :meth:`Pipeline.set_shadow`,
which worker/model_ops.py calls between two pieces of work); everyone else reads them.

Every record ends as one :class:`Handled`: its result messages, or one dead-letter message with a
reason. One bad record never costs the others their results: a failing tokenizer or model call
is retried once, then the batch is bisected until the guilty sentence is found.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sentistream.worker.batching import length_sorted_batches
from sentistream.worker.contract import (
    BATCH_OVERHEAD,
    ModelRef,
    RawRecord,
    Reason,
    Rejection,
    Result,
    Sentence,
    SourceRef,
    UnreadableRecord,
    encoded_size,
    parse,
    result_headers,
    review_of,
    to_sentences,
)
from sentistream.worker.dead_letters import DeadLetters
from sentistream.worker.faults import contained, kept, one_line
from sentistream.worker.outgoing import Handled, Outgoing

if TYPE_CHECKING:
    from tokenizers import Encoding

    from sentistream.worker.batching import CostModel
    from sentistream.worker.bundle import Bundle, Prediction
    from sentistream.worker.metrics import WorkerMetrics
    from sentistream.worker.settings import Settings
    from sentistream.worker.shadow import Shadow

log = logging.getLogger(__name__)

RETRY_DELAY_S = 0.05
# A cheap estimate of sentence ends, so that a "split bomb" is refused before the splitter ever sees
# it (the count after splitting is checked as well).
_SENTENCE_END = re.compile(r"[.!?\u2026\n]+")


@dataclass(slots=True)
class Decoded:
    """One input record: its sentences to classify, or why it cannot be."""

    record: RawRecord
    sentences: list[Sentence]
    rejection: Rejection | None = None
    review: bool = False  # split into sentences: one review result follows its sentences' results
    deferred: bool = False  # not decoded yet: its partition is careful (worker/quarantine.py)
    size: int = 0  # at least this many bytes of messages will come of it (output_floor)

    @property
    def weight(self) -> int:
        return max(1, len(self.sentences))


@dataclass(frozen=True, slots=True)
class Classified:
    """One sentence's prediction, its length in tokens, and whether the model read only part of it."""

    prediction: Prediction
    tokens: int
    truncated: bool = False


class Pipeline:
    """``splitter``: the sentence splitter (default: worker/splitting.py's, made at once when the worker splits
    by default, else on first use); ``cost``: a model of batch costs that learns from every batch
    (a latency-target worker's, worker/batching.py)."""

    def __init__(self, settings: Settings, bundle: Bundle, metrics: WorkerMetrics,
                 splitter: Callable[[str], list[str]] | None = None, cost: CostModel | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._bundle = bundle
        self._model = _model_of(bundle)
        self._shadow: Shadow | None = None  # a candidate classifying every batch beside the bundle
        self._cost = cost
        self._splitter = splitter
        if settings.split_sentences:
            self._sentence_splitter()  # made before the first record, not while it waits
        self._dead_letters = DeadLetters(settings.dlq_topic, settings.group_id, lambda: self._model)
        self.result_limit = settings.max_result_bytes

    # -- what serves ---------------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        """The serving bundle."""
        return self._bundle

    @property
    def model(self) -> ModelRef:
        """The serving bundle's model: named on every result and dead letter."""
        return self._model

    @property
    def shadow(self) -> Shadow | None:
        """The candidate running beside the serving bundle, if any (worker/shadow.py)."""
        return self._shadow

    @property
    def dead_letters(self) -> DeadLetters:
        """This worker's dead letters, which worker/delivery.py builds too."""
        return self._dead_letters

    def swap(self, bundle: Bundle) -> None:
        """Serve ``bundle`` from the next piece of work on."""
        self._bundle = bundle
        self._model = _model_of(bundle)

    def set_shadow(self, shadow: Shadow | None) -> None:
        """Run ``shadow`` beside the serving bundle from the next piece of work on (None: no
        shadow); the one running before, if another, is retired."""
        if self._shadow is not None and self._shadow is not shadow:
            self._shadow.retire()
        self._shadow = shadow

    def fit_topics(self, max_message_bytes: dict[str, int]) -> None:
        """Size checks against what the output and dead-letter topics accept (their
        ``max.message.bytes``, less a record batch's overhead)."""
        s = self.settings
        self.result_limit = min(s.max_result_bytes, max_message_bytes[s.output_topic] - BATCH_OVERHEAD)
        self._dead_letters.fit(max_message_bytes[s.dlq_topic])

    # -- decode --------------------------------------------------------------------------------
    def decode(self, record: RawRecord) -> Decoded:
        """The record's sentences, or why it cannot be classified; whatever decoding it raises
        is its own dead letter (worker/faults.py)."""
        return contained(lambda: self._decode(record),
                         lambda exc: Decoded(record, [], self.internal_error(record, exc, "decoding")))

    def _decode(self, record: RawRecord) -> Decoded:
        if isinstance(record, UnreadableRecord):
            return Decoded(record, [], Rejection(record, Reason.UNREADABLE_RECORD, record.error[:300]))
        parsed = parse(record, self.settings.max_message_bytes)
        if isinstance(parsed, Rejection):
            return Decoded(record, [], parsed)
        split = self.settings.split_sentences if parsed.split is None else parsed.split
        limit = self.settings.max_sentences
        if split:
            estimate = len(_SENTENCE_END.findall(parsed.text))
            if estimate > limit:
                return Decoded(record, [], Rejection(record, Reason.TOO_MANY_SENTENCES,
                                                     f"about {estimate} sentences > limit {limit}"))
        sentences = to_sentences(record, parsed.as_tuple(), self._sentence_splitter() if split else None)
        if len(sentences) > limit:
            return Decoded(record, [], Rejection(record, Reason.TOO_MANY_SENTENCES,
                                                 f"{len(sentences)} sentences > limit {limit}"))
        # Each result repeats the record's key, headers and meta: refuse before classifying what
        # could never be published.
        floor = output_floor(record, sentences, split)
        if floor > self.settings.max_output_bytes:
            return Decoded(record, [], self._too_large(record, floor))
        return Decoded(record, sentences, review=split, size=floor)

    def internal_error(self, record: RawRecord, exc: BaseException, stage: str) -> Rejection:
        r = record
        log.error("%s[%d]@%d: %s raised %s; dead-lettering the record", r.topic, r.partition, r.offset, stage,
                  one_line(exc))
        return Rejection(record, Reason.INTERNAL_ERROR, f"{stage}: {one_line(exc)}"[:300], type(exc).__name__)

    def _too_large(self, record: RawRecord, size: int) -> Rejection:
        return Rejection(record, Reason.RESULT_TOO_LARGE, f"its results take {size} bytes together (values, keys and "
                         f"headers) > max_output_bytes {self.settings.max_output_bytes}")

    def _sentence_splitter(self) -> Callable[[str], list[str]]:
        """The sentence splitter, made on first use (a message may ask for splitting when the
        worker does not split by default)."""
        if self._splitter is None:
            from sentistream.worker.splitting import make_splitter

            self._splitter = make_splitter()
        return self._splitter

    # -- classify and build messages -----------------------------------------------------------
    def handle(self, decoded: Sequence[Decoded]) -> list[Handled]:
        """Classify the records' sentences together (batched by token count) and build, per
        record, its result messages or its dead letter. Whatever the shared step raises is
        confined by bisection to the record that causes it; building one record's messages is
        a boundary of its own (worker/faults.py)."""
        try:
            outcomes = self._classify_records(decoded)
        except BaseException as exc:
            kept(exc)
            if len(decoded) == 1:
                return [self._dead_letters.build(self.internal_error(decoded[0].record, exc, "classifying"))]
            half = len(decoded) // 2
            return self.handle(decoded[:half]) + self.handle(decoded[half:])
        return [contained(lambda d=d, mine=mine, shadow=shadow: self._outcome(d, mine, shadow),
                          lambda exc, d=d: self._dead_letters.build(self.internal_error(d.record, exc, "building results")))
                for d, mine, shadow in outcomes]

    def _classify_records(self, decoded: Sequence[Decoded]) -> list[tuple[Decoded, list, ModelRef | None]]:
        """Per record: its sentences' classifications (or errors) and the shadow that saw them."""
        sentences = [s for d in decoded if d.rejection is None for s in d.sentences]
        classified = self._classify(sentences)
        shadowed = self._compare_with_shadow(sentences, classified)
        outcomes = iter(classified)
        return [(d, [] if d.rejection else [next(outcomes) for _ in d.sentences], shadowed) for d in decoded]

    def _outcome(self, d: Decoded, mine: list[Classified | BaseException], shadow: ModelRef | None) -> Handled:
        if d.rejection is not None:
            return self._dead_letters.build(d.rejection)
        error = next((o for o in mine if isinstance(o, BaseException)), None)
        if error is not None:
            return self._dead_letters.build(Rejection(d.record, Reason.MODEL_ERROR, one_line(error), type(error).__name__))
        return self._results(d, mine, shadow)  # type: ignore[arg-type]

    def _compare_with_shadow(self, sentences: list[Sentence],
                             classified: list[Classified | BaseException]) -> ModelRef | None:
        """Have the shadow (if any) classify the sentences the serving model classified and
        compare; a shadow that fails is dropped here and serving goes on. Returns the shadow's
        model when it saw these sentences."""
        shadow = self._shadow
        if shadow is None:
            return None
        pairs = [(s.text, c.prediction.label) for s, c in zip(sentences, classified, strict=True)
                 if isinstance(c, Classified)]
        if not pairs:
            return shadow.model
        compared = contained(lambda: shadow.compare([t for t, _ in pairs], [label for _, label in pairs]),
                             lambda exc: log.error("shadow dropped: %s", one_line(exc)) or False)
        if not compared:
            self.set_shadow(None)
            return None
        return shadow.model

    def _results(self, d: Decoded, classified: list[Classified], shadow: ModelRef | None = None) -> Handled:
        """The record's sentence results and, for a split record, its review result: one Handled,
        so they share the delivery unit (exactly-once: one transaction)."""
        r = d.record
        headers = result_headers(r, self._model, shadow)
        source = SourceRef(topic=r.topic, partition=r.partition, offset=r.offset)
        values, labels = [], []
        for s, c in zip(d.sentences, classified, strict=True):
            p = c.prediction
            values.append((Result(id=s.id, text=s.text, label=p.label, label_id=p.label_id, scores=p.scores,
                                  tokens=c.tokens, truncated=c.truncated, model=self._model, source=source,
                                  meta=s.meta, doc_id=s.doc_id, sentence_index=s.sentence_index)
                           .model_dump_json().encode(), headers))
            labels.append(p.label)
        if d.review:
            first = d.sentences[0]
            review = review_of(first.doc_id or first.id, list(self._bundle.manifest.labels), labels,
                               [c.prediction.scores for c in classified], self._model, source, first.meta)
            values.append((review.model_dump_json().encode(), result_headers(r, self._model, shadow, kind="review")))
        messages, total = [], 0
        for value, own in values:
            size = encoded_size(r.key, value, own)
            if size > self.result_limit:
                return self._dead_letters.build(Rejection(r, Reason.RESULT_TOO_LARGE, f"a result of {size} bytes "
                                                          f"(value, key and headers) > limit {self.result_limit}"))
            total += size
            messages.append(Outgoing(self.settings.output_topic, r.key, value, own))
        if total > self.settings.max_output_bytes:
            return self._dead_letters.build(self._too_large(r, total))
        return Handled(r, messages, labels=labels)

    def _classify(self, sentences: list[Sentence]) -> list[Classified | BaseException]:
        """Per sentence, in order: its classification, or the error that isolates it."""
        out: list[Classified | BaseException | None] = [None] * len(sentences)
        encoded: list[tuple[int, Encoding]] = []
        for i, e in enumerate(self._tokenize([s.text for s in sentences])):
            if isinstance(e, BaseException):
                out[i] = e
            else:
                encoded.append((i, e))
        if self._cost is not None:
            self._cost.observe_texts(sum(len(sentences[i].text) for i, _ in encoded), sum(len(e.ids) for _, e in encoded))
        for batch in length_sorted_batches(encoded, self.settings.batch_size, lambda pair: len(pair[1].ids)):
            for (i, e), p in zip(batch, self._predict([e for _, e in batch]), strict=True):
                if isinstance(p, BaseException):
                    out[i] = p
                elif e.overflowing:  # longer than the model reads: say so, with its true length
                    out[i] = Classified(p, self._bundle.token_count(sentences[i].text), truncated=True)
                else:
                    out[i] = Classified(p, len(e.ids))
        return out  # type: ignore[return-value]

    def _tokenize(self, texts: list[str]) -> list[Encoding | BaseException]:
        try:
            return list(self._bundle.tokenize(texts))
        except BaseException as exc:  # untyped errors, or a Rust panic: find the guilty text(s) one by one
            log.warning("tokenizing %d texts failed (%s); isolating the guilty one(s)", len(texts), one_line(kept(exc)))
            return [contained(lambda text=text: self._bundle.tokenize([text])[0], lambda fault: fault) for text in texts]

    def _predict(self, encodings: list[Encoding], retry: bool = True) -> list[Prediction | BaseException]:
        """Classify one batch. On an error: retry once after a short pause (a transient error
        passes), then bisect; a single sentence that still fails gets its error."""
        started = time.perf_counter()
        try:
            predictions = self._bundle.classify_encoded(encodings)
        except BaseException as exc:  # onnxruntime's errors are untyped
            kept(exc)
            if retry:
                log.warning("inference failed on a batch of %d (%s); retrying once", len(encodings), one_line(exc))
                time.sleep(RETRY_DELAY_S)
                return self._predict(encodings, retry=False)
            if len(encodings) == 1:
                return [exc]
            half = len(encodings) // 2
            return self._predict(encodings[:half], retry=False) + self._predict(encodings[half:], retry=False)
        seconds = time.perf_counter() - started
        self.metrics.inference_seconds.observe(seconds)
        if self._cost is not None:
            self._cost.observe_batch(len(encodings) * max(len(e.ids) for e in encodings), seconds)
        self.metrics.batch_size.observe(len(encodings))
        return list(predictions)


def _model_of(bundle: Bundle) -> ModelRef:
    m = bundle.manifest
    return ModelRef(name=m.name, version=m.version, runtime=bundle.runtime)


def output_floor(record: RawRecord, sentences: list[Sentence], review: bool) -> int:
    """A lower bound of what a record's results take together: each repeats its key and carried
    headers, its text and its meta (measured once, as compact JSON)."""
    key = len(record.key or b"")
    headers = sum(len(k.encode()) + len(v or b"") + 10 for k, v in (record.headers or []))
    meta = len(json.dumps(sentences[0].meta, separators=(",", ":"), default=str)) if sentences else 0
    each = key + headers + meta
    return sum(each + len(s.text.encode("utf-8", "replace")) for s in sentences) + (each if review else 0)
