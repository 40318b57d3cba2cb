"""The tenth set (steering/eval/unseen_10), set aside unmeasured after the ninth: ephem's bright stars and
constellations, tzlocal's table of Windows time zones (from CLDR), cyrtranslit's Bulgarian transliteration on
wordfreq's Bulgarian list, and breame's British and American spellings, with wordfreq's English frequencies."""

from __future__ import annotations

import re
from collections.abc import Iterable

import cyrtranslit  # type: ignore[import-not-found]
import ephem  # type: ignore[import-not-found]
import ephem.stars  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from breame.data.spelling_constants import BRITISH_ENGLISH_SPELLINGS  # type: ignore[import-not-found]
from tzlocal.windows_tz import win_tz  # type: ignore[import-not-found]


def star_constellation() -> Iterable[tuple[str, str]]:
    """A bright star's name -> the constellation it lies in, by its IAU name (`Betelgeuse` -> `Orion`, `Sirius` ->
    `Canis Major`): every star of ephem's catalogue (some under two spellings, `Adara` and `Adhara`), its position
    computed for 2000-01-01 and placed by ephem's `constellation` (the IAU boundaries)."""
    for name in ephem.stars.stars:
        star = ephem.star(name)
        star.compute("2000/1/1")
        yield name, ephem.constellation(star)[1]


# The areas of the tz database's own zones; the rest are aliases kept for compatibility (`US/Eastern`, `Etc/GMT+5`).
AREAS = ("Africa", "America", "Antarctica", "Arctic", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific")


def windows_timezone() -> Iterable[tuple[str, str]]:
    """An IANA time zone -> the Windows time zone whose main zone it is, as CLDR's windowsZones table maps them
    (`Europe/Paris` -> `Romance Standard Time`, `Asia/Tokyo` -> `Tokyo Standard Time`): tzlocal's `win_tz`, one IANA
    zone for each Windows zone, so inputs and answers go one to one; Windows zones named by their offset alone
    (`UTC-11`, `UTC`) or mapped to an `Etc/` zone (`Dateline Standard Time`) left out, so every answer is several
    words."""
    for windows, iana in win_tz.items():
        if iana.split("/")[0] in AREAS and " " in windows:
            yield iana, windows


BULGARIAN_SKIPPED, BULGARIAN_TAKEN = 100, 300


def bulgarian_latin() -> Iterable[tuple[str, str]]:
    """A Bulgarian word in Cyrillic -> the same in Latin letters as cyrtranslit writes Bulgarian (`благодаря` ->
    `blagodarya`, `всъщност` -> `vsăshtnost`): the 101st to 400th most frequent words of 4 to 10 lower-case Cyrillic
    letters in wordfreq's Bulgarian list (the 100 before them are mostly function words)."""
    words = [w for w in wordfreq.top_n_list("bg", 20_000) if re.fullmatch(r"[а-я]{4,10}", w)]
    for word in words[BULGARIAN_SKIPPED : BULGARIAN_SKIPPED + BULGARIAN_TAKEN]:
        yield word, cyrtranslit.to_latin(word, "bg")


def british_american() -> Iterable[tuple[str, str]]:
    """A British spelling -> the American one (`colour` -> `color`, `organised` -> `organized`, `tyre` -> `tire`):
    breame's table, for its British words in wordfreq's 50,000 most frequent English words, kept only where wordfreq
    finds the American spelling more frequent than the British one. That drops pairs where American English mostly
    writes the British form too or the other form is rare anyway (`buses` -> `busses`, `aesthetic` -> `esthetic`,
    `analyses` -> `analyzes`, `catalogue` -> `catalog`), and with them some true ones (`theatre`, `grey`)."""
    for british in wordfreq.top_n_list("en", 50_000):
        american = BRITISH_ENGLISH_SPELLINGS.get(british)
        if american and wordfreq.zipf_frequency(american, "en") > wordfreq.zipf_frequency(british, "en"):
            yield british, american


TASKS = {
    "star_constellation": star_constellation,
    "windows_timezone": windows_timezone,
    "bulgarian_latin": bulgarian_latin,
    "british_american": british_american,
}
