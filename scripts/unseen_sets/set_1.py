"""The first set (steering/eval/unseen), set aside before issue 22's second round: pycountry and periodictable."""

from __future__ import annotations

import re
from collections.abc import Iterable

import periodictable  # type: ignore[import-not-found]
import pycountry  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM

# Currencies that are funds, metals, units of account or test codes, not a country's money.
NOT_MONEY = re.compile(r"Fund|Unit|Unidad|Gold|Silver|Platinum|Palladium|SDR|Code|No currency|WIR|Mvdol|ADB|Sucre")


def countries() -> list[tuple[str, object]]:
    """(the name people use, the record) for every country whose name is not a catalogue form."""
    named = [(getattr(c, "common_name", c.name), c) for c in pycountry.countries]
    return [(name, c) for name, c in named if not CATALOGUE_FORM.search(name)]


def country_alpha3() -> Iterable[tuple[str, str]]:
    return ((name, c.alpha_3) for name, c in countries())


def country_official_name() -> Iterable[tuple[str, str]]:
    for name, c in countries():
        official = getattr(c, "official_name", None)
        if official and official != name and not CATALOGUE_FORM.search(official):
            yield name, official


def currency_code() -> Iterable[tuple[str, str]]:
    for cur in pycountry.currencies:
        if not NOT_MONEY.search(cur.name) and not CATALOGUE_FORM.search(cur.name):
            yield cur.name, cur.alpha_3


def language_name() -> Iterable[tuple[str, str]]:
    for lang in pycountry.languages:
        code = getattr(lang, "alpha_2", None)
        if code and not CATALOGUE_FORM.search(lang.name):
            yield code, lang.name


def element_name() -> Iterable[tuple[str, str]]:
    return ((el.symbol, el.name) for el in periodictable.elements if el.number >= 1)


def element_number() -> Iterable[tuple[str, str]]:
    return ((el.name, str(el.number)) for el in periodictable.elements if el.number >= 1)


TASKS = {
    "country_alpha3": country_alpha3,
    "country_official_name": country_official_name,
    "currency_code": currency_code,
    "language_name": language_name,
    "element_name": element_name,
    "element_number": element_number,
}
