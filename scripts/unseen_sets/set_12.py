"""The twelfth set (steering/eval/unseen_12), set aside unmeasured after the eleventh: bokeh-sampledata's films (from
Wikidata) and their directors, cron-descriptor's cron schedules in words, anyascii's ASCII transliteration on
wordfreq's Polish list, and pyspellchecker's French, German, Spanish and Italian word lists."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from itertools import islice

import wordfreq  # type: ignore[import-not-found]
from anyascii import anyascii  # type: ignore[import-not-found]
from bokeh_sampledata.movies_data import movie_path  # type: ignore[import-not-found]
from cron_descriptor import Options, get_description  # type: ignore[import-not-found]
from spellchecker import SpellChecker  # type: ignore[import-not-found]

MIN_OSCARS = 2


def film_director() -> Iterable[tuple[str, str]]:
    """A film -> its director (`Jaws` -> `Steven Spielberg`, `Amadeus` -> `Miloš Forman`, `Argo` -> `Ben Affleck`):
    bokeh-sampledata's table of 17,472 films of 1940 to 2014 (a Wikidata snapshot), for films that won at least two
    Oscars (as the table counts them), have one director, and whose title no other film in the table has. That leaves
    out films by two directors or more (`West Side Story`, `No Country for Old Men`), titles the table has for two
    films or more (`Titanic` three times, `Gladiator` twice), and the films with one Oscar or none, most of them
    little known, whose director would be a guess."""
    with sqlite3.connect(movie_path) as db:
        films = db.execute("SELECT Title, Director, Oscars FROM omdb").fetchall()
    titles = Counter(title for title, _, _ in films)
    for title, director, oscars in films:
        if titles[title] == 1 and director and "," not in director and (oscars or 0) >= MIN_OSCARS:
            yield title, director


# cron's day-of-week field (Sunday is 0) for every day and for Monday to Friday; a third schedule names one day.
EVERY_DAY, WEEKDAYS = "*", "1-5"


def cron_description() -> Iterable[tuple[str, str]]:
    """A cron schedule of one time a day -> what it says in words, as cron-descriptor writes it in US English
    (`30 17 * * 1-5` -> `At 05:30 PM, Monday through Friday`, `15 6 * * 0` -> `At 06:15 AM, only on Sunday`, `0 0 * *
    *` -> `At 12:00 AM`): each quarter hour of the day (minutes 0, 15, 30 and 45 of hours 0 to 23, 96 times), every
    day, on weekdays (`1-5`) and on one day of the week (the 96 times take the days 0 to 6 in turn). The locale and
    the 12-hour clock are set, not read from the machine."""
    options = Options(locale_code="en_US", use_24hour_time_format=False)
    times = [(hour, minute) for hour in range(24) for minute in (0, 15, 30, 45)]
    for turn, (hour, minute) in enumerate(times):
        for days in (EVERY_DAY, WEEKDAYS, str(turn % 7)):
            cron = f"{minute} {hour} * * {days}"
            yield cron, get_description(cron, options)


POLISH_TAKEN = 300


def polish_ascii() -> Iterable[tuple[str, str]]:
    """A Polish word -> the same in plain ASCII letters as anyascii writes it (`będzie` -> `bedzie`, `źródło` ->
    `zrodlo`, `miłość` -> `milosc`): the 300 most frequent words of three letters or more in wordfreq's Polish list
    that have a letter outside ASCII, so no answer is a copy of its input. Every such letter is one of Polish's nine
    (`ą ć ę ł ń ó ś ź ż`), each written as its base letter (`ł` -> `l`), so two forms of one word can share an answer
    (`która` and `którą` -> `ktora`)."""
    words = [w for w in wordfreq.top_n_list("pl", 20_000) if w.isalpha() and not w.isascii() and len(w) >= 3]
    return [(word, anyascii(word)) for word in words[:POLISH_TAKEN]]


# The languages asked about, and the other lists a word must be absent from (English, Portuguese, Dutch).
LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish", "it": "Italian"}
ALSO_CHECKED = ("en", "pt", "nl")
# Swear words among the most frequent (the lists are built from film subtitles).
SWEAR_WORDS = {"cazzo", "mierda"}
LANGUAGE_TAKEN = 75


def word_language() -> Iterable[tuple[str, str]]:
    """A word -> the language it is a word of, one of `French`, `German`, `Spanish` and `Italian` (`avec` ->
    `French`, `jetzt` -> `German`, `ahora` -> `Spanish`, `questo` -> `Italian`): for each language, the 75 most
    frequent words of four letters or more in pyspellchecker's list for it that are in none of six other lists it
    ships (the other three languages', English, Portuguese and Dutch), so no input is in two of these languages' lists
    (`casa`, `hotel` and `come` are left out). Written in lower case as the lists have them; two swear words among the
    most frequent left out."""
    lists = {code: SpellChecker(language=code).word_frequency.dictionary for code in (*LANGUAGES, *ALSO_CHECKED)}
    for code, language in LANGUAGES.items():
        others = [words for other, words in lists.items() if other != code]
        ranked = sorted(lists[code].items(), key=lambda item: (-item[1], item[0]))
        own = (w for w, _ in ranked if len(w) >= 4 and w.isalpha() and w not in SWEAR_WORDS)
        unique = (w for w in own if not any(w in words for words in others))
        yield from ((word, language) for word in islice(unique, LANGUAGE_TAKEN))


TASKS = {
    "film_director": film_director,
    "cron_description": cron_description,
    "polish_ascii": polish_ascii,
    "word_language": word_language,
}
