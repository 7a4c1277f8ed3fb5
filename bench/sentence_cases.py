"""Hard cases for a sentence splitter, with the sentences a reader would expect (stripped).

Scored for pysbd and worker/splitting.py by bench/splitter_study.py, and the new splitter's unit
tests (tests/test_splitting.py). ``pysbd_misses`` marks where pysbd 0.3.4 (clean=False) gets a
case wrong; ``new_misses`` where worker/splitting.py does, with why it is left so.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    name: str
    text: str
    expected: tuple[str, ...]
    pysbd_misses: bool = False
    new_misses: str = ""  # why worker/splitting.py is left to get it wrong
    instead: tuple[str, ...] = ()  # what it gives then


def _case(name: str, text: str, *expected: str, pysbd_misses: bool = False, new_misses: str = "",
          instead: tuple[str, ...] = ()) -> Case:
    return Case(name, text, expected or (text.strip(),), pysbd_misses, new_misses, instead)


CASES: tuple[Case, ...] = (
    # abbreviations
    _case("title Mr.", "Mr. Smith was great. The plot was not.", "Mr. Smith was great.", "The plot was not."),
    _case("title Dr.", "Dr. Strange is fun. I liked it.", "Dr. Strange is fun.", "I liked it."),
    _case("Mr. and Mrs.", "Mr. and Mrs. Smith is fun. Go see it.", "Mr. and Mrs. Smith is fun.", "Go see it."),
    _case("St.", "It is set in St. Louis. Nice views.", "It is set in St. Louis.", "Nice views."),
    _case("U.S. then lower case", "It was shot in the U.S. and Canada. Nice views.",
          "It was shot in the U.S. and Canada.", "Nice views."),
    _case("U.S. ends a sentence", "It was shot in the U.S. It shows.", "It was shot in the U.S.", "It shows."),
    _case("U.S. before a name", "The U.S. Army helped. It shows.", "The U.S. Army helped.", "It shows."),
    _case("e.g.", "Some scenes, e.g. the chase, drag. Still fun.", "Some scenes, e.g. the chase, drag.", "Still fun."),
    _case("e.g. then a title", "Some remakes, e.g. The Thing, are great. This is not.",
          "Some remakes, e.g. The Thing, are great.", "This is not."),
    _case("i.e.", "The lead, i.e. Pitt, is good. The rest are not.", "The lead, i.e. Pitt, is good.",
          "The rest are not."),
    _case("vs.", "It is Alien vs. Predator again. Skip it.", "It is Alien vs. Predator again.", "Skip it."),
    _case("etc. ends a sentence", "Guns, cars, explosions, etc. Nothing new.", "Guns, cars, explosions, etc.",
          "Nothing new."),
    _case("etc. goes on", "Guns, cars, etc. are everywhere. Fun though.", "Guns, cars, etc. are everywhere.",
          "Fun though."),
    _case("No. 1", "It ranks No. 1 for me. Great.", "It ranks No. 1 for me.", "Great."),
    _case("Jan. 5", "Released Jan. 5 in theaters. Go.", "Released Jan. 5 in theaters.", "Go."),
    _case("p.m. goes on", "It starts at 9 p.m. on Friday. Go early.", "It starts at 9 p.m. on Friday.", "Go early."),
    _case("a.m. ends a sentence", "It starts at 7 a.m. The crowd waits.", "It starts at 7 a.m.", "The crowd waits."),
    _case("Ph.D. ends a sentence", "He has a Ph.D. Students love him.", "He has a Ph.D.", "Students love him."),
    _case("state abbreviation", "Scotland, Pa. is a drab romp. Skip it.", "Scotland, Pa. is a drab romp.", "Skip it."),
    _case("approx.", "It lasts approx. two hours. Too long.", "It lasts approx. two hours.", "Too long.",
          pysbd_misses=True),
    _case("joined initials", "It stars director D.J. Caruso's wife. Fine.", "It stars director D.J. Caruso's wife.",
          "Fine."),
    _case("initials end a sentence", "There's plenty to impress about E.T. The music soars.",
          "There's plenty to impress about E.T.", "The music soars.", pysbd_misses=True),
    # quotes and brackets
    _case("quote ends a sentence", 'He said "Great." Then he left.', 'He said "Great."', "Then he left."),
    _case("curly quote ends a sentence", "She called it \u201ca triumph.\u201d I disagree.",
          "She called it \u201ca triumph.\u201d", "I disagree."),
    _case("single quote ends a sentence", "He said: 'Wow.' Then he left.", "He said: 'Wow.'", "Then he left."),
    _case("quote then comma", '"Great," he said. I agree.', '"Great," he said.', "I agree."),
    _case("quote then attribution", '"Great!" he said. I agree.', '"Great!" he said.', "I agree."),
    _case("bracket ends a sentence", "(It was better than I expected.) The cast shines.",
          "(It was better than I expected.)", "The cast shines."),
    # ellipses
    _case("ellipsis goes on", "I waited... and waited. Nothing happened.", "I waited... and waited.",
          "Nothing happened."),
    _case("ellipsis ends a sentence", "It was slow... The ending saved it.", "It was slow...", "The ending saved it."),
    _case("unicode ellipsis", "It was slow\u2026 The ending saved it.", "It was slow\u2026", "The ending saved it.",
          pysbd_misses=True),
    _case("spaced ellipsis", "I waited . . . and waited. Done.", "I waited . . . and waited.", "Done."),
    _case("sentence starts with an ellipsis", "It moved me. ...too slow, though.", "It moved me.",
          "...too slow, though."),
    # "..." alone is no sentence to classify: pysbd returns it as one
    _case("leading ellipsis", "... Great film.", pysbd_misses=True),
    # numbers
    _case("decimal", "I give it 3.5 stars. Worth it.", "I give it 3.5 stars.", "Worth it."),
    _case("number ends a sentence", "I would rate it a 2. Bad plot.", "I would rate it a 2.", "Bad plot."),
    _case("rating", "I rate it 8/10. Great.", "I rate it 8/10.", "Great."),
    _case("numbered lines", "1. Great acting\n2. Bad plot", "1. Great acting", "2. Bad plot"),
    _case("numbered list in running text", "1. Great acting 2. Bad plot", "1. Great acting", "2. Bad plot",
          new_misses="pysbd finds a list by its numbers in sequence; here a number then a period ends a sentence "
                     "('rate it a 2. Bad plot.') and a list needs its own lines, which split",
          instead=("1. Great acting 2.", "Bad plot")),
    # apostrophes
    _case("stray apostrophes", "It's rock 'n' roll. The '80s vibe works. Don't miss it.", "It's rock 'n' roll.",
          "The '80s vibe works.", "Don't miss it.", pysbd_misses=True),
    _case("quoted word", "They call it 'art'. It isn't.", "They call it 'art'.", "It isn't."),
    _case("plural possessive", "The actors' timing is off. Still fun.", "The actors' timing is off.", "Still fun."),
    # initials
    _case("initials", "J. R. R. Tolkien would approve. It is epic.", "J. R. R. Tolkien would approve.",
          "It is epic."),
    _case("middle initial", "Starring Samuel L. Jackson. Good.", "Starring Samuel L. Jackson.", "Good."),
    _case("first initial", "Directed by M. Night Shyamalan. It twists.", "Directed by M. Night Shyamalan.",
          "It twists."),
    _case("critic's initials", "A. O. Scott liked it. I did not.", "A. O. Scott liked it.", "I did not."),
    # addresses
    _case("domain", "Watch it on Netflix.com tonight. Fun.", "Watch it on Netflix.com tonight.", "Fun."),
    _case("www address", "See www.example.com for more. It is great.", "See www.example.com for more.",
          "It is great."),
    _case("URL with a query", "Read it at https://example.com/review?id=3. Then decide.",
          "Read it at https://example.com/review?id=3.", "Then decide.", pysbd_misses=True),
    _case("e-mail address", "Write to me@example.com. I reply.", "Write to me@example.com.", "I reply."),
    # emoticons and emoji
    _case("emoticon ends a sentence", "Loved it :) Would watch again.", "Loved it :)", "Would watch again.",
          pysbd_misses=True),
    _case("emoticon then period", "Great fun :-). Bring kids.", "Great fun :-).", "Bring kids."),
    _case("emoticon mid-sentence", "The ending :( was sad. Still good.", "The ending :( was sad.", "Still good."),
    _case("emoji ends a sentence", "Loved it \U0001F60D Would watch again.", "Loved it \U0001F60D",
          "Would watch again.", pysbd_misses=True),
    # runs of ! and ?
    _case("?!", "Really?! It was awful. Never again.", "Really?!", "It was awful.", "Never again."),
    _case("!!!", "It was awful!!! Never again.", "It was awful!!!", "Never again.", pysbd_misses=True),
    _case("! in a title", "Kung Pow! is the kind of film you love. Go.", "Kung Pow! is the kind of film you love.", "Go."),
    _case("??", "What?? No way.", "What??", "No way."),
    _case("short answers", "Would I watch it again? No. Never.", "Would I watch it again?", "No.", "Never."),
    # lower-case starts
    _case("lower case after a period", "I loved it. the ending was perfect.", "I loved it.",
          "the ending was perfect."),
    _case("lower case after !!", "Wow!! what a film. Loved it.", "Wow!!", "what a film.", "Loved it."),
    _case("lower case after ?", "Is it good? yes it is.", "Is it good?", "yes it is."),
    # no space after the mark
    _case("no space after a period", "Great acting.Terrible plot.", "Great acting.", "Terrible plot.",
          pysbd_misses=True),
    _case("no space after !", "A must see!My favourite.", "A must see!", "My favourite."),
    # line breaks and plain text
    _case("line break", "Great film\nBad ending", "Great film", "Bad ending"),
    _case("paragraph", "Great film.\n\nBad ending.", "Great film.", "Bad ending."),
    _case("no punctuation", "A chiller without chills"),
    _case("trailing space", "Hello.   ", "Hello."),
)
