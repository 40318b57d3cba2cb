"""The thirteenth set (steering/eval/unseen_13), set aside unmeasured after the twelfth: faker-literature's books and
their authors, python-metar's cloud layers in words, ftfy's repair of mojibake on wordfreq's French list, and the
part of speech that TextBlob's English lexicon (Brill's) gives wordfreq's common English words."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from importlib.resources import files

import ftfy  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from metar.Metar import Metar  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import common_words


def book_author() -> Iterable[tuple[str, str]]:
    """A book -> its author (`Jane Eyre` -> `Charlotte Brontë`, `The Great Gatsby` -> `F. Scott Fitzgerald`, `The
    Three Musketeers` -> `Alexandre Dumas`): every book in faker-literature's table of 164 authors and 425 books, by
    its English title, for titles that name one author's book only (`The Lost World`, Conan Doyle's and Crichton's,
    is left out). Titles and names are the table's as shipped."""
    table = json.loads((files("faker_literature") / "DATAS" / "literature.json").read_text(encoding="utf-8"))
    authors: dict[str, set[str]] = defaultdict(set)
    for author in table["authors"]:
        for book in author["books"]:
            authors[book["title"]["en_US"]].add(author["name"])
    for title, its in authors.items():
        if len(its) == 1:
            yield title, next(iter(its))


# Heights of a cloud layer in hundreds of feet, in the steps METAR reports them: 100 feet up to 5,000, 500 up to
# 10,000, 1,000 above (to 25,000).
CLOUD_HEIGHTS = (*range(1, 51), *range(55, 101, 5), *range(110, 251, 10))
CLOUD_COVERS = ("FEW", "SCT", "BKN", "OVC")
# No cloud type, cumulonimbus, towering cumulus.
CLOUD_TYPES = ("", "CB", "TCU")


def cloud_layer() -> Iterable[tuple[str, str]]:
    """A METAR cloud group -> what it says in words, as python-metar writes it (`BKN020` -> `broken clouds at 2000
    feet`, `FEW030TCU` -> `a few towering cumulus at 3000 feet`, `OVC008CB` -> `overcast cumulonimbus at 800 feet`):
    each of the four covers (`FEW`, `SCT`, `BKN`, `OVC`) at each of 75 heights from 100 to 25,000 feet, in the steps
    METAR reports them; the 300 groups take no cloud type, `CB` and `TCU` in turn. Each group is read in a report
    otherwise fixed, and its sky conditions written out."""
    groups = (f"{cover}{height:03d}" for height in CLOUD_HEIGHTS for cover in CLOUD_COVERS)
    for turn, group in enumerate(groups):
        code = group + CLOUD_TYPES[turn % len(CLOUD_TYPES)]
        report = Metar(f"METAR KJFK 011251Z 27010KT 10SM {code} 20/10 A3000")
        yield code, report.sky_conditions()


MOJIBAKE_TAKEN = 300


def mojibake_french() -> Iterable[tuple[str, str]]:
    """A French word garbled as mojibake -> the word, as ftfy repairs it (`trÃ¨s` -> `très`, `Ã©tÃ©` -> `été`,
    `franÃ§ais` -> `français`): the 300 most frequent words of three letters or more in wordfreq's French list that
    have a letter outside ASCII, each written in UTF-8 and read back as Windows-1252 (the commonest mojibake), for
    those whose garbled form has no invisible character (`à`'s second byte reads as a no-break space, so `déjà` is
    left out). The answer is ftfy's `fix_text` of the garbled form, which gives back every word taken."""
    words = (w for w in wordfreq.top_n_list("fr", 20_000) if w.isalpha() and not w.isascii() and len(w) >= 3)
    garbled = ((w.encode("utf-8").decode("windows-1252"), w) for w in words)
    taken = [(bad, word) for bad, word in garbled if bad.isprintable()][:MOJIBAKE_TAKEN]
    for bad, word in taken:
        fixed = ftfy.fix_text(bad)
        assert fixed == word, (bad, fixed, word)
        yield bad, fixed


# The lexicon's Penn Treebank tags taken, each a base form: singular noun, verb, adjective, adverb.
PARTS_OF_SPEECH = {"NN": "noun", "VB": "verb", "JJ": "adjective", "RB": "adverb"}
POS_TAKEN = 75
# Swear words among the most frequent (wordfreq's list draws on social media and film subtitles).
SWEAR_WORDS = {"fuck", "fucking", "shit"}


def word_pos() -> Iterable[tuple[str, str]]:
    """A word -> its part of speech, one of `noun`, `verb`, `adjective` and `adverb` (`house` -> `noun`, `make` ->
    `verb`, `good` -> `adjective`, `quickly` -> `adverb`), as TextBlob's English lexicon tags it (Brill's lexicon,
    from the Brown corpus and the Penn Treebank, one tag a word, its commonest): for each part, the 75 most frequent
    of wordfreq's common English words (3 to 8 plain letters) that the lexicon tags `NN`, `VB`, `JJ` or `RB`. A word
    of two parts gets its commonest (`work` -> `noun`, `run` -> `verb`, `fast` -> `adverb`); words tagged otherwise
    (plurals, past forms, names, function words) are left out, and three swear words among the most frequent."""
    lexicon: dict[str, str] = {}
    for line in (files("textblob") / "en" / "en-lexicon.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) == 2 and not line.startswith(";"):
            lexicon[fields[0]] = fields[1]
    taken: dict[str, int] = defaultdict(int)
    for word in common_words(20_000):
        part = PARTS_OF_SPEECH.get(lexicon.get(word, ""))
        if part and taken[part] < POS_TAKEN and word not in SWEAR_WORDS:
            taken[part] += 1
            yield word, part


TASKS = {
    "book_author": book_author,
    "cloud_layer": cloud_layer,
    "mojibake_french": mojibake_french,
    "word_pos": word_pos,
}
