"""The fifth set (steering/eval/unseen_5), set aside after issue 22's seventh round: webcolors, tzdata, roman, num2words
and the standard library's unicodedata."""

from __future__ import annotations

import importlib.resources
import unicodedata
from collections.abc import Iterable

import num2words  # type: ignore[import-not-found]
import roman  # type: ignore[import-not-found]
import webcolors  # type: ignore[import-not-found]


def color_hex() -> Iterable[tuple[str, str]]:
    """A CSS3 colour name -> its hex code (`tomato` -> `#ff6347`)."""
    return ((name, webcolors.name_to_hex(name, spec="css3")) for name in webcolors.names("css3"))


def city_timezone() -> Iterable[tuple[str, str]]:
    """A city that names an IANA time zone -> the zone (`New York` -> `America/New_York`), from tzdata's own list
    of zones (not the system's), zones of one region and one city only."""
    zones = importlib.resources.files("tzdata").joinpath("zones").read_text().split()
    regions = {"Africa", "America", "Antarctica", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific"}
    for zone in zones:
        region, _, city = zone.partition("/")
        if region in regions and city and "/" not in city:
            yield city.replace("_", " "), zone


def roman_numeral() -> Iterable[tuple[str, str]]:
    """1 to 3999 -> its Roman numeral as the roman package writes it (`1994` -> `MCMXCIV`)."""
    return ((str(n), roman.toRoman(n)) for n in range(1, 4000))


def french_number() -> Iterable[tuple[str, str]]:
    """0 to 999 -> the number in French words as num2words writes it (`97` -> `quatre-vingt-dix-sept`)."""
    return ((str(n), num2words.num2words(n, lang="fr")) for n in range(1000))


def unicode_name() -> Iterable[tuple[str, str]]:
    """A letter of Latin-1, Greek or basic Cyrillic -> its Unicode name (`é` -> `LATIN SMALL LETTER E WITH ACUTE`)."""
    for block in (range(0xC0, 0x100), range(0x391, 0x3CA), range(0x410, 0x450)):
        for code in block:
            char = chr(code)
            if unicodedata.category(char).startswith("L") and unicodedata.name(char, ""):
                yield char, unicodedata.name(char)


TASKS = {
    "color_hex": color_hex,
    "city_timezone": city_timezone,
    "unicode_name": unicode_name,
    "roman_numeral": roman_numeral,
    "french_number": french_number,
}
