"""worker/splitting.py, the sentence splitter: the hard cases of bench/sentence_cases.py, its
interface, and properties on any text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentistream.bench.sentence_cases import CASES
from sentistream.worker.splitting import make_splitter, split


def _sentences(text: str) -> tuple[str, ...]:
    return tuple(piece.strip() for piece in split(text))


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
def test_hard_case(case) -> None:
    """A case the splitter gets wrong on purpose says why (Case.new_misses) and what it gives instead."""
    assert _sentences(case.text) == (case.instead if case.new_misses else case.expected)


def test_every_case_pysbd_gets_right_but_one_is_right_here_too() -> None:
    missed = [case.name for case in CASES if not case.pysbd_misses and _sentences(case.text) != case.expected]
    assert missed == ["numbered list in running text"]


def test_pieces_are_what_pysbd_returns_white_space_after_each() -> None:
    """pysbd (clean=False) returns these very strings: the callers strip them (worker/contract.py)."""
    assert split("Great cast.  Dull plot! Would I watch it again? No. ") == [
        "Great cast.  ", "Dull plot! ", "Would I watch it again? ", "No. "]
    assert split("Great film\nBad ending") == ["Great film\n", "Bad ending"]


@pytest.mark.parametrize("blank", ["", " ", "\n\t  \n"])
def test_a_blank_text_has_no_sentences(blank: str) -> None:
    assert split(blank) == []


def test_make_splitter_has_the_interface_of_worker_splitting() -> None:
    assert make_splitter() is split and make_splitter("en") is split
    with pytest.raises(ValueError, match="English only"):
        make_splitter("de")


def _check_pieces(text: str, pieces: list[str]) -> None:
    if not text.strip():
        assert pieces == []
        return
    assert "".join(pieces) == text  # nothing lost, nothing added, in order
    assert all(piece.strip() for piece in pieces)  # no empty or blank piece
    assert all(piece[:1].strip() for piece in pieces[1:])  # white space goes with the sentence before it


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_unicode_text_splits_into_pieces_that_join_back(text: str) -> None:
    _check_pieces(text, split(text))


_TOKENS = ("good", "Great", "film", "the", "It", "i", "Mr.", "Dr.", "U.S.", "e.g.", "etc.", "No.", "1", "3.5",
           "J.", "A.", "Pa.", ".", "..", "...", "\u2026", "!", "!!!", "?!", "?", '"', "'", "\u201d", ")", "(",
           ":)", ":-(", "\U0001F60D", "www.x.com", "a@b.com", "https://x.io/a?b=C.D", "'80s", "\n", "\n\n")
_GAPS = ("", " ", " ", "  ", "\t", "\n")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_TOKENS), st.sampled_from(_GAPS)), max_size=40))
def test_review_like_text_splits_into_pieces_that_join_back(tokens: list[tuple[str, str]]) -> None:
    text = "".join(token + gap for token, gap in tokens)
    _check_pieces(text, split(text))
