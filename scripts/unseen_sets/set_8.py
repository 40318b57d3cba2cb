"""The eighth set (steering/eval/unseen_8), set aside in issue 22's tenth round when the seventh was measured: Pygments'
lexers, pypinyin's dictionary, lemminflect's verb forms and the standard library's HTML 4 entities, with wordfreq's
English and Chinese word lists."""

from __future__ import annotations

import html.entities
from collections.abc import Iterable

import lemminflect  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from pygments.lexers import get_all_lexers  # type: ignore[import-not-found]
from pypinyin.constants import PINYIN_DICT  # type: ignore[import-not-found]


def extension_language() -> Iterable[tuple[str, str]]:
    """A file extension -> the language Pygments names for it (`.kts` -> `Kotlin`), for plain extensions
    (`*.` and lower-case letters or digits) that one lexer claims."""
    claims: dict[str, set[str]] = {}
    for name, _aliases, patterns, _mimes in get_all_lexers():
        for pattern in patterns:
            suffix = pattern[2:]
            if pattern.startswith("*.") and suffix.isascii() and suffix.isalnum() and suffix == suffix.lower():
                claims.setdefault(pattern[1:], set()).add(name)
    for extension, names in claims.items():
        if len(names) == 1:
            yield extension, next(iter(names))


def hanzi_pinyin() -> Iterable[tuple[str, str]]:
    """A common Chinese character with one reading in pypinyin's dictionary -> that reading, tone marked
    (`我` -> `wǒ`); characters by wordfreq's Chinese list."""
    for word in wordfreq.top_n_list("zh", 20000):
        if len(word) == 1 and "\u4e00" <= word <= "\u9fff":
            reading = PINYIN_DICT.get(ord(word))
            if reading is not None and "," not in reading:
                yield word, reading


def verb_past() -> Iterable[tuple[str, str]]:
    """A common English verb whose past tense lemminflect does not form with -ed -> that past tense (`go` ->
    `went`); verbs by wordfreq's list, each its own lemma, modals (no -ing form) left out."""
    for word in wordfreq.top_n_list("en", 20000):
        if not (word.isascii() and word.isalpha()):
            continue
        lemmas = lemminflect.getAllLemmas(word, upos="VERB").get("VERB", ())
        forms = lemminflect.getAllInflections(word, upos="VERB")
        if not lemmas or lemmas[0] != word or "VBG" not in forms or "VBD" not in forms:
            continue
        past = forms["VBD"][0]
        if not past.endswith("ed"):
            yield word, past


def entity_character() -> Iterable[tuple[str, str]]:
    """An HTML 4 character entity's name -> its character (`eacute` -> `é`, `rarr` -> `→`); the standard library's
    table of HTML 4.01's 252 entities, those of spaces and invisible marks (`nbsp`, `shy`, `zwj`) left out."""
    for name, codepoint in html.entities.name2codepoint.items():
        char = chr(codepoint)
        if char.isprintable() and not char.isspace():
            yield name, char


TASKS = {
    "extension_language": extension_language,
    "hanzi_pinyin": hanzi_pinyin,
    "verb_past": verb_past,
    "entity_character": entity_character,
}
