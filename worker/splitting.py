"""Sentence splitting for whole reviews (option ``split_sentences``): one regular expression finds
where a sentence may end, a few rules about the words on either side decide whether it does.

It replaced pysbd at a small part of its cost: pysbd runs dozens of regular-expression passes
over the text per call, this runs one, and looks only at the places where a sentence may end.
``python -m sentistream.bench.splitter_study`` measures both, for quality and speed.

Where a sentence may end: a run of ``.``, ``!``, ``?`` or ``…`` (then any closing quotes or
brackets) followed by white space, or by a capitalised word with no space between; a line break;
an emoticon or emoji followed by white space and a capitalised word. Where it does not:

* after a title or a Latin abbreviation (``Mr.``, ``Dr.``, ``St.``, ``e.g.``, ``vs.``);
* after ``No.``, ``Vol.``, ``Jan.`` and the like when a number follows (``No. 1``, ``Jan. 5``);
* after ``etc.``, ``Inc.``, ``Jr.``, ``hrs.`` and the like unless a capitalised word follows;
* after letters joined by periods (``a.m.``, ``Ph.D.``) unless a capitalised word follows;
* after initials (``J. R. R. Tolkien``, ``M. Night``, ``J.K. Rowling``, ``U.S. Army``) unless
  a word that often starts a sentence (``The``, ``It``, ``But`` …) follows (``U.S. It shows``);
* after a single ``!`` when a lower-case word follows (``Kung Pow! is``), as pysbd does;
* after an ellipsis (``...``, ``…``, ``. . .``) unless a capitalised word follows;
* after a quote or bracket closed on the mark when a lower-case word follows
  (``"Great!" he said``);
* with no space after the mark, unless a lower-case letter comes before it and the word is not
  part of an address (``acting.Terrible`` splits, ``Netflix.com`` and ``a.b/C.Html`` do not);
* until the sentence so far holds a letter: ``... Great`` and ``1. Great`` stay whole.

Like pysbd with ``clean=False``, it returns the sentences as strings with the white space that
follows each one (the callers strip them), nothing for a blank text, and splits at every line break.
Unlike pysbd, the pieces join back into the text exactly (pysbd drops leading white space).
"""

from __future__ import annotations

import re
from collections.abc import Callable


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Never end a sentence: titles (always followed by a name) and Latin or editorial abbreviations.
_NEVER_FINAL = _words("""
    mr mrs ms messrs mme mlle dr prof rev hon gen sen rep gov pres capt lt col sgt cpl maj adm
    cmdr st mt fr vs v e.g i.e cf viz approx ca dir feat a.k.a aka
""")
# End a sentence unless a number follows: "No. 1", "Vol. 2", "Jan. 5", "pp. 10".
_BEFORE_NUMBERS = _words("""
    no nos nr vol vols pp p fig figs ch chap sec ep pt op art
    jan feb mar apr jun jul aug sep sept oct nov dec
""")
# End a sentence only when a capitalised word follows: "etc. Nothing new" but "etc. are",
# "Scotland, Pa. is".
_FINAL_WHEN_CAPITALISED = _words("""
    etc inc ltd co corp bros jr sr al esp incl min mins hr hrs yr yrs ft lbs oz dept govt ave blvd rd
    ala ariz ark calif colo conn fla ga ill ind kan ky la md mass mich minn mo mont neb nev okla ore pa
    tenn tex va vt wash wis wyo
""")
# Words that often start a sentence: after initials ("J. K.", "U.S.") one of these starts a new one
# ("U.S. It shows"), any other capitalised word is more likely a name going on ("U.S. Army").
_STARTERS = _words("""
    a an the this that these those it it's its he he's she she's they they're we we're i i'm i've you
    you're his her their our my your there there's here what when where why how who which but and
    so yet still then now also however if as at in on for not no yes well overall all some most one
    after before while though although even just only
""")
_INITIALS = re.compile(r"[A-Z](?:\.[A-Z])*")
_LETTERS_AND_DOTS = re.compile(r"[A-Za-z]{1,3}(?:\.[A-Za-z]{1,3})+")
_LETTER = re.compile(r"[^\W\d_]")
_OPENING = "\"'\u201c\u2018\u00ab([{\u00bf\u00a1"
_NEXT_WORD = re.compile(r"[\"'\u201c\u2018\u00ab(\[{\u00bf\u00a1]*([\w'\u2019]*)")
_EMOJI = "\U0001F300-\U0001FAFF\u2600-\u27BF"
_MARKS = ".!?\u2026\u203c\u2047-\u2049"
# Each alternative opens on a character class (most places fail at once), then checks it stands
# where its run starts ((?<!X.)); runs are possessive (++, *+): a long run of dots or emoji costs
# one pass, not one per character.
_BREAK = re.compile(rf"""
    (?P<mark>[{_MARKS}](?<![{_MARKS}].)[{_MARKS}]*+)   # where a sentence may end
    (?P<close>["'\u201d\u2019\u00bb)\]}}]*+)          # quotes and brackets closed there
    (?P<gap>\s++|(?=[A-Z][a-z]))                       # then space, or a capitalised word at once
  | (?:(?:[:;=](?<!\S.)'?-?[()\[\]DPpOo/\\|*3]++|<(?<!\S.)3++|[xX](?<!\S.)D++|\^(?<!\S.)_*\^)  # an emoticon
     |[{_EMOJI}](?<![{_EMOJI}].)[{_EMOJI}]*+)           # or emoji
    (?P<emoticon_gap>\s++)
  | \n\s*+                                             # a line break
""", re.VERBOSE)


def split(text: str) -> list[str]:
    """The sentences of ``text``, each with the white space after it; [] for a blank text."""
    if not text or text.isspace():
        return []
    starts = [0]
    letter = _LETTER.search(text)  # the first letter of the sentence going on: none, no end yet
    for match in _BREAK.finditer(text):
        end = match.end()
        if letter and letter.start() < match.start() and end < len(text) and _ends_sentence(text, match):
            starts.append(end)
            letter = _LETTER.search(text, end)
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def make_splitter(language: str = "en") -> Callable[[str], list[str]]:
    """worker/splitting.py's interface: a splitter for ``language`` (English only)."""
    if language != "en":
        raise ValueError(f"the sentence splitter knows English only, not {language!r}")
    return split


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    """Whether the place ``match`` found (followed by more text) ends a sentence."""
    if "\n" in match.group():
        return True  # a line break, alone or after a mark
    following = _NEXT_WORD.match(text, match.end()).group(1)  # type: ignore[union-attr]
    capitalised = following[:1].isupper()
    if match.group("emoticon_gap") is not None:
        return capitalised and (len(following) == 1 or not following.isupper())  # not "I ❤ NY"
    gap, close, mark = match.group("gap"), match.group("close"), match.group("mark")
    if close and following[:1].islower():
        return False  # "Great!" he said.
    if text.startswith(".", match.end()) and text[match.end() + 1:match.end() + 2] in ("", " "):
        return False  # a spaced ellipsis goes on: ". . ." (a sentence may start with "...")
    before = _word_before(text, match.start())
    if not gap and not _joined_at_once(before):
        return False
    if not before or ("." in mark and mark != ".") or "\u2026" in mark:
        return capitalised  # an ellipsis: "...", "…", or the last dot of ". . ."
    if mark != ".":
        return mark != "!" or not following[:1].islower()  # "?", "?!", "!!!"; not "Kung Pow! is"
    return _period_ends_sentence(before, following, capitalised)


def _period_ends_sentence(before: str, following: str, capitalised: bool) -> bool:
    """Whether a single period after the word ``before`` ends a sentence."""
    word = before.lower()
    if word in _NEVER_FINAL:
        return False
    if word in _BEFORE_NUMBERS:
        return not following[:1].isdigit()
    if word in _FINAL_WHEN_CAPITALISED:
        return capitalised
    if _INITIALS.fullmatch(before):  # "J.K. Rowling", "M. Night", "U.S. Army"; "E.T. The", "U.S. It"
        return following.lower() in _STARTERS and capitalised
    if _LETTERS_AND_DOTS.fullmatch(before):
        return capitalised  # "9 a.m. on Friday", "a Ph.D. Students love him"
    return True


def _word_before(text: str, end: int) -> str:
    """The word that ends at ``end`` (its last 100 characters at most: a text without spaces costs
    no more per mark), without the quotes or brackets that open it."""
    floor = max(0, end - 100)
    start = max(text.rfind(" ", floor, end), text.rfind("\n", floor, end), text.rfind("\t", floor, end), floor - 1) + 1
    return text[start:end].lstrip(_OPENING)


def _joined_at_once(before: str) -> bool:
    """With no space after the mark (``acting.Terrible``): a lower-case word of two letters or
    more (not ``e.g.The``), not an address (``a.b/C.Html``)."""
    last = before.rsplit(".", 1)[-1]
    return len(last) > 1 and last[-1].islower() and not any(sign in before for sign in ("/", "@", "www", ":"))
