"""The message contract (see README "Message contract"): input, output and dead-letter records.

``parse`` turns one raw Kafka record into its id, text and carried fields, or a rejection with a
reason code; it never raises on bad input (``decode`` is its tuple form). ``to_sentences`` cuts a
parsed record into what is classified. The result and review schemas and the headers of results and
dead letters are defined here; worker/pipeline.py and worker/dead_letters.py build the messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from sentistream.worker.status import WorkerStatus  # the status topic's records (sentistream console)

# 1.1: results gained "tokens" and "truncated"; 1.2: input "split", results "kind", review results;
# 1.3: dead-letter reasons internal_error and crashed_worker; 1.4: dead letters name the source
# record's timestamp, the group, the worker, the model, the exception type, and the replay count;
# 1.5: a result's "model" names the runtime that ran it
CONTRACT_VERSION = "1.5"
REPLAY_COUNT = "sentistream-replay-count"
HEADER_PREFIX = "sentistream-"


class Reason(StrEnum):
    """Dead-letter reason codes (header ``sentistream-dlq-reason``)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    MISSING_TEXT = "missing_text"
    INVALID_FIELD = "invalid_field"
    EMPTY_TEXT = "empty_text"
    NOT_AN_OBJECT = "not_an_object"
    TOO_LARGE = "too_large"
    TOO_MANY_SENTENCES = "too_many_sentences"
    MODEL_ERROR = "model_error"
    RESULT_TOO_LARGE = "result_too_large"
    PUBLISH_FAILED = "publish_failed"
    UNREADABLE_RECORD = "unreadable_record"
    INTERNAL_ERROR = "internal_error"
    CRASHED_WORKER = "crashed_worker"


class RawRecord(Protocol):
    """What the run loop hands us: kafka-python's ConsumerRecord fits."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A record the Kafka client could not parse (e.g. a header key that is not UTF-8): its
    coordinates and the client's error; key, value and headers are unknown (worker/intake.py)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    error: str
    key: None = None
    value: None = None
    headers: tuple = ()


# -- schemas ---------------------------------------------------------------------------------
class InputMessage(BaseModel):
    """A JSON input record. Extra fields are carried through under ``meta``."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=False)
    id: StrictStr | StrictInt | None = Field(default=None, description="your id (string or integer); "
                                             "default: topic/partition/offset")
    text: StrictStr = Field(description="a sentence, or a whole review when sentence splitting is on")
    split: StrictBool | None = Field(default=None, description="true: the text is a whole review, split it into "
                                     "sentences (and get a review result); default: the worker's split_sentences")


class ModelRef(BaseModel):
    name: str
    version: str
    runtime: str = Field(description="what ran the model: onnxruntime or openvino (contract 1.5)")


class SourceRef(BaseModel):
    topic: str
    partition: int
    offset: int


class Result(BaseModel):
    """One classified sentence on the output topic."""

    kind: Literal["sentence"] = "sentence"
    id: str
    text: str
    label: str
    label_id: int
    scores: dict[str, float]
    tokens: int = Field(description="the sentence's length in tokens (with the model's special tokens)")
    truncated: bool = Field(default=False, description="longer than the model's max length: only its "
                                                        "first tokens were read")
    model: ModelRef
    source: SourceRef
    meta: dict[str, Any] = Field(default_factory=dict)
    doc_id: str | None = Field(default=None, description="set when sentence splitting is on")
    sentence_index: int | None = Field(default=None, description="0-based, with doc_id")


class ReviewResult(BaseModel):
    """One split record (a whole review) on the output topic, after its sentences' results and in
    the same delivery unit (transaction) as they are."""

    kind: Literal["review"] = "review"
    id: str = Field(description="the record's id; its sentences' results carry it as doc_id")
    sentences: int
    label_counts: dict[str, int] = Field(description="sentences per label (every label of the model)")
    scores: dict[str, float] = Field(description="the mean of the sentences' class probabilities")
    label: str = Field(description="the label with the highest mean probability")
    label_id: int
    score: float = Field(ge=-1, le=1, description="expected position on the label scale, read from most "
                         "negative (first label, -1) to most positive (last label, +1)")
    model: ModelRef
    source: SourceRef
    meta: dict[str, Any] = Field(default_factory=dict)


def review_of(review_id: str, labels: list[str], predicted: list[str], scores: list[dict[str, float]],
              model: ModelRef, source: SourceRef, meta: dict[str, Any]) -> ReviewResult:
    """The review result of one record from its sentences' labels and class probabilities;
    ``labels``: the model's, in order."""
    counts = dict.fromkeys(labels, 0)
    for label in predicted:
        counts[label] += 1
    mean = {label: round(sum(row[label] for row in scores) / len(scores), 6) for label in labels}
    best = max(range(len(labels)), key=lambda i: mean[labels[i]])
    steps = len(labels) - 1
    score = sum(mean[label] * (2 * i / steps - 1) for i, label in enumerate(labels)) if steps else 0.0
    return ReviewResult(id=review_id, sentences=len(scores), label_counts=counts, scores=mean, label=labels[best],
                        label_id=best, score=round(max(-1.0, min(1.0, score)), 6), model=model, source=source,
                        meta=meta)


# -- decoding --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence to classify, with where it came from."""

    record: RawRecord
    id: str
    text: str
    meta: dict[str, Any]
    doc_id: str | None = None
    sentence_index: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    record: RawRecord
    reason: Reason
    detail: str
    exception: str | None = None  # the exception's type, when one was raised


@dataclass(frozen=True, slots=True)
class Origin:
    """Who dead-letters: written onto every dead letter (contract 1.4)."""

    group: str
    worker: str  # host/pid
    model: ModelRef


def derived_id(record: RawRecord) -> str:
    return f"{record.topic}/{record.partition}/{record.offset}"


BOM = "\ufeff"
_JSON_SCALAR = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|null|true|false")


@dataclass(frozen=True, slots=True)
class Parsed:
    """A readable input record: its id, text, carried fields, and whether it asked to be split
    (``None``: it did not say)."""

    id: str
    text: str
    meta: dict[str, Any]
    split: bool | None = None

    def as_tuple(self) -> tuple[str, str, dict[str, Any]]:
        return self.id, self.text, self.meta


def decode(record: RawRecord, max_bytes: int) -> tuple[str, str, dict[str, Any]] | Rejection:
    """Raw record -> (id, text, meta), or the reason it cannot be classified (:func:`parse`)."""
    out = parse(record, max_bytes)
    return out if isinstance(out, Rejection) else out.as_tuple()


def parse(record: RawRecord, max_bytes: int) -> Parsed | Rejection:
    """Raw record -> :class:`Parsed`, or the reason it cannot be classified. Never raises.

    A JSON object is the structured form; a JSON string's content is the text; any other JSON
    value (null, a number, a boolean, an array) is refused; anything else is plain text. A UTF-8
    byte order mark is dropped; NUL bytes stay in the text (the tokenizer ignores them)."""
    value = record.value
    if value is None:
        return Rejection(record, Reason.EMPTY_TEXT, "record value is null")
    if len(value) > max_bytes:
        return Rejection(record, Reason.TOO_LARGE, f"{len(value)} bytes > limit {max_bytes}")
    try:
        text = value.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as exc:
        return Rejection(record, Reason.INVALID_UTF8, f"byte {exc.start}: {exc.reason}")
    stripped = text.strip()
    if stripped.startswith("{"):
        return _decode_object(record, text)
    if stripped[:1] in ("[", '"') or _JSON_SCALAR.fullmatch(stripped):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = text  # not JSON after all: plain text
        except RecursionError:  # e.g. an array nested thousands deep
            return Rejection(record, Reason.INVALID_JSON, "JSON nested too deeply")
        if parsed is None:
            return Rejection(record, Reason.EMPTY_TEXT, "record value is JSON null")
        if not isinstance(parsed, str):
            kind = {bool: "boolean", int: "number", float: "number", list: "array"}[type(parsed)]
            return Rejection(record, Reason.NOT_AN_OBJECT, f"a JSON {kind}; expected an object or plain text")
        text = parsed
    if not _has_text(text):
        return Rejection(record, Reason.EMPTY_TEXT, "text is empty")
    if _lone_surrogate(text):
        return Rejection(record, Reason.INVALID_UTF8, "the JSON string escapes a lone surrogate (not Unicode text)")
    return Parsed(derived_id(record), text, {})


def _lone_surrogate(text: str) -> bool:
    """JSON may escape half of a surrogate pair (``"\\ud800"``): such a string is not text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_text(text: str) -> bool:
    return bool(text.replace("\x00", "").strip())


def _decode_object(record: RawRecord, text: str) -> Parsed | Rejection:
    try:
        message = InputMessage.model_validate_json(text)
    except ValidationError as exc:
        return _rejection_from(record, exc)
    except RecursionError:  # nesting deeper than the parser allows
        return Rejection(record, Reason.INVALID_JSON, "JSON nested too deeply")
    if not _has_text(message.text):
        return Rejection(record, Reason.EMPTY_TEXT, "field 'text' is empty")
    if _lone_surrogate(message.text):
        return Rejection(record, Reason.INVALID_FIELD, "field 'text' escapes a lone surrogate (not Unicode text)")
    meta = dict(message.model_extra or {})
    msg_id = derived_id(record) if message.id is None else str(message.id)
    return Parsed(msg_id, message.text, meta, message.split)


def _rejection_from(record: RawRecord, exc: ValidationError) -> Rejection:
    error = exc.errors(include_url=False)[0]
    kind, loc = error["type"], tuple(error["loc"])
    if kind == "json_invalid" or kind == "model_type":
        return Rejection(record, Reason.INVALID_JSON, error["msg"][:200])
    if loc[:1] == ("text",) and kind == "missing":
        return Rejection(record, Reason.MISSING_TEXT, "JSON object has no 'text' field")
    where = ".".join(str(p) for p in loc)
    return Rejection(record, Reason.INVALID_FIELD, f"field '{where}': {error['msg']}"[:200])


def to_sentences(record: RawRecord, decoded: tuple[str, str, dict[str, Any]],
                 splitter=None) -> list[Sentence]:
    """One sentence, or (with a splitter) one per sentence of the text, ids ``<id>#<index>``."""
    msg_id, text, meta = decoded
    if splitter is None:
        return [Sentence(record, msg_id, text, meta)]
    parts = [p for p in splitter(text) if p.strip()] or [text]
    return [Sentence(record, f"{msg_id}#{i}", p.strip(), meta, msg_id, i) for i, p in enumerate(parts)]


# -- output ----------------------------------------------------------------------------------
def result_headers(record: RawRecord, model: ModelRef, shadow: ModelRef | None = None,
                   kind: str = "sentence") -> list[tuple[str, bytes]]:
    """Ours: the model that made the result, the contract, the result's kind, and (while a
    candidate runs beside the serving model) ``sentistream-shadow``: the candidate that saw it too."""
    own = [(f"{HEADER_PREFIX}model", f"{model.name}:{model.version}".encode()),
           (f"{HEADER_PREFIX}contract", CONTRACT_VERSION.encode()),
           (f"{HEADER_PREFIX}kind", kind.encode())]
    if shadow is not None:
        own.append((f"{HEADER_PREFIX}shadow", f"{shadow.name}:{shadow.version}".encode()))
    return _carried(record) + own


def dead_letter_headers(rejection: Rejection, origin: Origin | None = None,
                        carried: bool = True) -> list[tuple[str, bytes]]:
    """Ours (docs/contract.md), after the record's own headers when ``carried``."""
    r = rejection.record
    own = [
        (f"{HEADER_PREFIX}dlq-reason", rejection.reason.value.encode()),
        (f"{HEADER_PREFIX}dlq-detail", rejection.detail.encode("utf-8", "replace")),
        (f"{HEADER_PREFIX}source-topic", r.topic.encode()),
        (f"{HEADER_PREFIX}source-partition", str(r.partition).encode()),
        (f"{HEADER_PREFIX}source-offset", str(r.offset).encode()),
        (f"{HEADER_PREFIX}source-timestamp", str(r.timestamp).encode()),
        (REPLAY_COUNT, str(replay_count(r)).encode()),
        (f"{HEADER_PREFIX}contract", CONTRACT_VERSION.encode()),
    ]
    if origin is not None:
        own += [(f"{HEADER_PREFIX}group", origin.group.encode("utf-8", "replace")),
                (f"{HEADER_PREFIX}worker", origin.worker.encode("utf-8", "replace")),
                (f"{HEADER_PREFIX}model", f"{origin.model.name}:{origin.model.version}".encode())]
    if rejection.exception:
        own.append((f"{HEADER_PREFIX}dlq-exception", rejection.exception.encode("utf-8", "replace")))
    return _carried(r) + own if carried else own


def replay_count(record: RawRecord) -> int:
    """How many times ``sentistream dlq replay`` has put this record back (its header; 0 if none)."""
    for key, value in record.headers or []:
        if key == REPLAY_COUNT:
            try:
                return max(0, int((value or b"0").decode("ascii")))
            except (UnicodeDecodeError, ValueError):
                return 0
    return 0


def _carried(record: RawRecord) -> list[tuple[str, bytes]]:
    """The record's own headers, minus ours (a re-processed record gets fresh ones). Kafka allows
    a null header value; Kafka clients here cannot write one, so it is carried as empty bytes."""
    return [(k, b"" if v is None else v) for k, v in (record.headers or []) if not k.startswith(HEADER_PREFIX)]


# A topic's max.message.bytes where it sets none (the broker's default), and what a record batch's
# header and one record's framing add to its key, value and headers, generously.
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
BATCH_OVERHEAD = 512


def encoded_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """What a record's key, value and headers take on the wire (the broker's limit counts these
    plus ~100 bytes of batch overhead: BATCH_OVERHEAD, generously)."""
    return (len(key or b"") + len(value or b"")
            + sum(len(k.encode()) + len(v) + 10 for k, v in headers))


def json_schemas() -> dict[str, dict]:
    return {"input": InputMessage.model_json_schema(), "result": Result.model_json_schema(),
            "review": ReviewResult.model_json_schema(), "status": WorkerStatus.model_json_schema()}


def dump_schemas() -> str:
    return json.dumps(json_schemas(), indent=2, sort_keys=True) + "\n"
