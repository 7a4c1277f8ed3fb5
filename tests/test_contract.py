import json
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from sentistream.worker.contract import (
    HEADER_PREFIX,
    ModelRef,
    Reason,
    Rejection,
    dead_letter_headers,
    decode,
    dump_schemas,
    result_headers,
    to_sentences,
)


def model_ref(name: str, version: str) -> ModelRef:
    return ModelRef(name=name, version=version, runtime="onnxruntime")


@dataclass
class Rec:
    value: bytes | None
    topic: str = "sentences"
    partition: int = 2
    offset: int = 41
    timestamp: int = 0
    key: bytes | None = None
    headers: list = field(default_factory=list)


LIMIT = 1024


def reason(value: bytes | None) -> Reason | None:
    out = decode(Rec(value), LIMIT)
    return out.reason if isinstance(out, Rejection) else None


def test_json_object_with_id_and_extras() -> None:
    out = decode(Rec(json.dumps({"id": "r42-s3", "text": "The acting is superb.", "lang": "en"}).encode()), LIMIT)
    assert out == ("r42-s3", "The acting is superb.", {"lang": "en"})


def test_numeric_id_becomes_a_string_and_missing_id_is_derived() -> None:
    assert decode(Rec(b'{"id": 7, "text": "ok"}'), LIMIT)[0] == "7"
    assert decode(Rec(b'{"text": "ok"}'), LIMIT)[0] == "sentences/2/41"


def test_plain_text_is_the_whole_value() -> None:
    assert decode(Rec("Très bien, ça marche.".encode()), LIMIT) == ("sentences/2/41", "Très bien, ça marche.", {})


def test_each_bad_input_has_its_reason() -> None:
    assert reason(b"\xff\xfe oops") is Reason.INVALID_UTF8
    assert reason(b"{not json") is Reason.INVALID_JSON
    assert reason(b'{"id": "x"}') is Reason.MISSING_TEXT
    assert reason(b'{"text": 5}') is Reason.INVALID_FIELD
    assert reason(b'{"text": "   "}') is Reason.EMPTY_TEXT
    assert reason(b"   ") is Reason.EMPTY_TEXT
    assert reason(None) is Reason.EMPTY_TEXT
    assert reason(b"x" * (LIMIT + 1)) is Reason.TOO_LARGE
    assert reason(b"x" * LIMIT) is None


def test_splitting_gives_ordered_sentences_with_doc_id() -> None:
    from sentistream.worker.splitting import make_splitter

    record = Rec(b"")
    sentences = to_sentences(record, ("doc1", "Great cast. Dull plot! Would I watch it again? No.", {}),
                             make_splitter())
    assert [s.text for s in sentences] == ["Great cast.", "Dull plot!", "Would I watch it again?", "No."]
    assert [(s.id, s.doc_id, s.sentence_index) for s in sentences][:2] == [("doc1#0", "doc1", 0),
                                                                          ("doc1#1", "doc1", 1)]


def test_headers_carry_the_users_and_add_ours() -> None:
    record = Rec(b"x", headers=[("trace", b"abc"), (f"{HEADER_PREFIX}model", b"old")])
    headers = dict(result_headers(record, model_ref("m", "1")))
    assert headers["trace"] == b"abc" and headers[f"{HEADER_PREFIX}model"] == b"m:1"
    dlq = dict(dead_letter_headers(Rejection(record, Reason.TOO_LARGE, "big")))
    assert dlq[f"{HEADER_PREFIX}dlq-reason"] == b"too_large"
    assert dlq[f"{HEADER_PREFIX}source-offset"] == b"41" and dlq["trace"] == b"abc"


def test_published_schema_is_current() -> None:
    from pathlib import Path

    published = Path(__file__).parents[1] / "worker" / "schemas" / "contract.schema.json"
    assert published.read_text() == dump_schemas(), "run: sentistream schema > worker/schemas/contract.schema.json"


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=300).map(str.encode),
    st.dictionaries(st.sampled_from(["id", "text", "meta", "x"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=40), st.lists(st.integers())),
                    max_size=4).map(lambda d: json.dumps(d).encode()),
))
def test_decoder_never_raises(value: bytes) -> None:
    out = decode(Rec(value), LIMIT)
    if isinstance(out, Rejection):
        assert isinstance(out.reason, Reason) and out.detail
        dead_letter_headers(out)  # and its headers can be built
    else:
        msg_id, text, meta = out
        assert isinstance(msg_id, str) and text.strip() and isinstance(meta, dict)


def test_json_values_that_are_not_objects() -> None:
    assert decode(Rec(b'"A JSON string is its text."'), LIMIT)[1] == "A JSON string is its text."
    assert reason(b"null") is Reason.EMPTY_TEXT
    for value in (b"42", b"-1.5e3", b"true", b"[1, 2]", b' ["a"] '):
        assert reason(value) is Reason.NOT_AN_OBJECT, value
    # text that merely starts like JSON is plain text
    assert decode(Rec(b"[Spoiler] the end is great"), LIMIT)[1] == "[Spoiler] the end is great"
    assert decode(Rec(b"42 minutes of joy"), LIMIT)[1] == "42 minutes of joy"


def test_byte_order_mark_nul_bytes_and_id_types() -> None:
    assert decode(Rec(b'\xef\xbb\xbf{"id": "b", "text": "With a BOM."}'), LIMIT)[:2] == ("b", "With a BOM.")
    assert decode(Rec("\ufeffPlain text.".encode()), LIMIT)[1] == "Plain text."
    assert decode(Rec(b"Nul\x00 inside"), LIMIT)[1] == "Nul\x00 inside"  # kept; the tokenizer drops it
    assert reason(b"\x00\x00 \x00") is Reason.EMPTY_TEXT
    assert reason(b'{"id": true, "text": "ok"}') is Reason.INVALID_FIELD
    assert reason(b'{"id": 1.5, "text": "ok"}') is Reason.INVALID_FIELD
    deep = b"{\"text\": " + b"[" * 5000 + b"]" * 5000 + b"}"
    assert isinstance(decode(Rec(deep), 100_000), Rejection)  # nested too deep or not a string: refused, no crash


def test_null_header_values_are_carried_as_empty() -> None:
    headers = dict(result_headers(Rec(b"x", headers=[("name", None)]), model_ref("m", "1")))
    assert headers["name"] == b""


def test_split_is_read_from_the_object_and_must_be_a_boolean() -> None:
    from sentistream.worker.contract import parse

    assert parse(Rec(b'{"text": "A. B.", "split": true}'), LIMIT).split is True
    assert parse(Rec(b'{"text": "A. B."}'), LIMIT).split is None
    assert parse(Rec(b"A. B."), LIMIT).split is None
    assert reason(b'{"text": "A. B.", "split": "yes"}') is Reason.INVALID_FIELD


def test_review_score_runs_from_minus_one_to_one_over_the_label_order() -> None:
    from sentistream.worker.contract import SourceRef, review_of

    labels, model, src = ["neg", "neu", "pos"], model_ref("m", "1"), SourceRef(topic="t", partition=0, offset=0)
    def one(rows: list[dict[str, float]], predicted: list[str]):
        return review_of("r", labels, predicted, rows, model, src, {})

    assert one([{"neg": 1.0, "neu": 0.0, "pos": 0.0}], ["neg"]).score == -1.0
    assert one([{"neg": 0.0, "neu": 0.0, "pos": 1.0}], ["pos"]).score == 1.0
    mixed = one([{"neg": 0.8, "neu": 0.2, "pos": 0.0}, {"neg": 0.0, "neu": 0.2, "pos": 0.8}], ["neg", "pos"])
    assert mixed.score == 0.0 and mixed.label == "neg"  # a tie goes to the first label
    assert mixed.label_counts == {"neg": 1, "neu": 0, "pos": 1} and mixed.scores == {"neg": 0.4, "neu": 0.2,
                                                                                      "pos": 0.4}


def test_results_say_their_model_and_a_shadow_that_saw_them() -> None:
    headers = dict(result_headers(Rec(b"x"), model_ref("m", "2"), model_ref("c", "3")))
    assert headers[f"{HEADER_PREFIX}model"] == b"m:2" and headers[f"{HEADER_PREFIX}shadow"] == b"c:3"
    assert f"{HEADER_PREFIX}shadow" not in dict(result_headers(Rec(b"x"), model_ref("m", "2")))
