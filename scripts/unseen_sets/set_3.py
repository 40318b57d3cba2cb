"""The third set (steering/eval/unseen_3), set aside before issue 22's fifth round: countryinfo, phonenumbers and
emoji."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import emoji  # type: ignore[import-not-found]
import phonenumbers  # type: ignore[import-not-found]
from countryinfo import all_countries  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM, ENGLISH


def _countryinfo() -> list[dict]:
    """countryinfo's records whose English name is not a catalogue form."""
    records = [country.info() for country in all_countries()]
    return [c for c in records if c.get("name") and not CATALOGUE_FORM.search(c["name"])]


def province_country() -> Iterable[tuple[str, str]]:
    """Province or state -> its country, for province names no other country (or country) uses."""
    records = _countryinfo()
    owners = Counter(p for c in records for p in set(c.get("provinces") or ()))
    countries = {c["name"] for c in records}
    for c in records:
        for province in sorted(set(c.get("provinces") or ())):
            if owners[province] == 1 and province not in countries and not CATALOGUE_FORM.search(province):
                yield province, c["name"]


def country_demonym() -> Iterable[tuple[str, str]]:
    """Country -> what its people are called (`France` -> `French`)."""
    for c in _countryinfo():
        demonym = (c.get("demonym") or "").strip()
        if demonym and not CATALOGUE_FORM.search(demonym):
            yield c["name"], demonym


def country_calling_code() -> Iterable[tuple[str, str]]:
    """Country or territory (CLDR's English name) -> its international calling code (`France` -> `+33`)."""
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        name = ENGLISH.territories.get(region)
        if name and not CATALOGUE_FORM.search(name):
            yield name, f"+{phonenumbers.country_code_for_region(region)}"


def emoji_name() -> Iterable[tuple[str, str]]:
    """A single-code-point, fully qualified emoji -> its English CLDR name (`🐶` -> `dog face`)."""
    for char, data in emoji.EMOJI_DATA.items():
        if len(char) == 1 and data.get("status") == emoji.STATUS["fully_qualified"]:
            yield char, data["en"].strip(":").replace("_", " ")


TASKS = {
    "province_country": province_country,
    "country_demonym": country_demonym,
    "country_calling_code": country_calling_code,
    "emoji_name": emoji_name,
}
