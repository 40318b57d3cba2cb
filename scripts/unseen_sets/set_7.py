"""The seventh set (steering/eval/unseen_7), set aside in issue 22's ninth round: nicknames, pytickersymbols, pychord
and jellyfish, words from wordfreq's list."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import jellyfish  # type: ignore[import-not-found]
import nicknames  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from pychord import Chord  # type: ignore[import-not-found]
from pychord.quality import QualityManager  # type: ignore[import-not-found]
from pytickersymbols import PyTickerSymbols  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM, common_words


def nickname_name() -> Iterable[tuple[str, str]]:
    """A nickname -> the one given name the nicknames package has it for (`Dottie` -> `Dorothy`): nicknames shorter
    than the name, of one name only and not given names of their own, and names that are no one's nickname and are
    common words in wordfreq's list."""
    names: dict[str, set[str]] = {}
    for name, relationship, nick in nicknames.name_triplets():
        if relationship == "has_nickname":
            names.setdefault(nick, set()).add(name)
    given = set().union(*names.values())
    common = set(wordfreq.top_n_list("en", 50_000))
    for nick, of in names.items():
        name = min(of)
        one = len(of) == 1 and nick.isalpha() and nick not in given and len(nick) < len(name)
        if one and name in common and name not in names:
            yield nick.capitalize(), name.capitalize()


# A company's legal form at the end of its name ("Apple Inc.", "Tapestry, Inc."), not in "Carnival Corporation & plc".
LEGAL_FORM = re.compile(r"(?<!&),? (?:Inc\.|Incorporated|Corporation|Corp|plc|Limited)$")


def ticker_company() -> Iterable[tuple[str, str]]:
    """An S&P 500 ticker -> the company (`JNJ` -> `Johnson & Johnson`), its legal form dropped, for names that no
    other ticker of the index has (so not a company's second class of shares)."""
    stocks = [(s["symbol"], LEGAL_FORM.sub("", s["name"])) for s in PyTickerSymbols().get_stocks_by_index("S&P 500")]
    counts = Counter(name for _, name in stocks)
    for symbol, name in stocks:
        if counts[name] == 1 and not CATALOGUE_FORM.search(name):
            yield symbol, name


# The 17 roots with at most one sharp or flat.
ROOTS = ("C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb", "B")


def chord_notes() -> Iterable[tuple[str, str]]:
    """A chord symbol -> its notes as pychord spells them, apart by a space (`Cmaj7` -> `C E G B`): each quality by its
    first name in pychord's table without `+`, `-`, `M`, `min` or brackets, on each of `ROOTS`, chords with a double
    sharp or flat left out."""
    qualities: dict[tuple[str, ...], str] = {}
    for name, quality in QualityManager().get_qualities().items():
        if not re.search(r"[-+()M]|min", name):
            qualities.setdefault(tuple(quality.intervals), name)
    for root in ROOTS:
        for name in qualities.values():
            notes = Chord(root + name).components()
            if not any("##" in note or "bb" in note for note in notes):
                yield root + name, " ".join(notes)


def word_soundex() -> Iterable[tuple[str, str]]:
    """A common English word -> its American Soundex code as jellyfish computes it (`robert` -> `R163`)."""
    return ((word, jellyfish.soundex(word)) for word in common_words(2000))


TASKS = {
    "nickname_name": nickname_name,
    "ticker_company": ticker_company,
    "chord_notes": chord_notes,
    "word_soundex": word_soundex,
}
