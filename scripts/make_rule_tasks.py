"""Regenerate the rule-based tasks in `steering/tasks/data/` (deterministic: seeded random).

Usage: python scripts/make_rule_tasks.py [--out DIR]

The hand-written knowledge tasks (antonyms, country_capital, ...) live in the same folder and are
not touched by this script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

SEED = 1234
N_LIST_ITEMS = 150
N_SEQUENCE_ITEMS = 120
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "steering" / "tasks" / "data"


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Common, lowercase, purely alphabetic English words that a small model has seen many times.
WORDS = _words(
    """
    apple bread chair table house water river mountain garden window door floor paper pencil book
    music money family friend mother father sister brother child baby school teacher student
    doctor nurse city town village street road car truck train plane boat ship bicycle horse
    cow pig sheep goat chicken duck bird fish dog cat mouse rabbit tiger lion bear wolf fox
    snake frog monkey elephant zebra camel whale shark orange banana lemon grape cherry peach
    carrot potato tomato onion rice cheese butter milk coffee sugar salt pepper honey cake cookie
    soup pizza summer winter spring autumn morning evening night today yellow green purple brown
    black white silver golden happy angry quiet loud small large little early late heavy light
    strong simple clean dirty young old warm cold bright dark sweet bitter rich poor fast slow
    kitchen bedroom office market hospital library church bridge castle forest island ocean
    desert valley beach cloud rain snow storm wind thunder planet star moon sun sky earth
    stone metal glass wood plastic cotton silk leather shirt jacket dress shoe hat glove sock
    button pocket basket bottle cup plate spoon fork knife bowl candle lamp clock phone camera
    computer letter picture story song dance game party holiday birthday dream idea question
    answer number color shape circle square line point corner center edge middle bottom top
    """
)

# Shorter, very frequent nouns for the list tasks (items in a list should be easy to copy).
LIST_WORDS = _words(
    """
    apple bread chair table house water river garden window door paper book music money friend
    child school doctor city road car train boat horse cow pig sheep bird fish dog cat mouse lion
    bear fox frog orange banana lemon grape cake milk tea rice cheese salt summer winter night
    yellow green black white red blue stone glass shirt hat shoe cup plate spoon fork lamp clock
    phone letter song game king queen tree flower grass sun moon star cloud rain snow ship
    """
)

ONES = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
)
TENS = _words("_ _ twenty thirty forty fifty sixty seventy eighty ninety")


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 1000, American style: 123 -> 'one hundred twenty-three'."""
    if not 0 <= n < 1000:
        raise ValueError(f"out of range: {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + (f"-{ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    head = f"{ONES[hundreds]} hundred"
    return head if rest == 0 else f"{head} {number_to_words(rest)}"


Pair = tuple[str, str]


def word_task(fn: Callable[[str], str]) -> list[Pair]:
    return [(w, fn(w)) for w in WORDS]


def list_task(rng: random.Random, lo: int, hi: int, fn: Callable[[list[str]], str]) -> list[Pair]:
    seen: set[str] = set()
    pairs: list[Pair] = []
    while len(pairs) < N_LIST_ITEMS:
        items = rng.sample(LIST_WORDS, rng.randint(lo, hi))
        text = ", ".join(items)
        if text in seen:
            continue
        seen.add(text)
        pairs.append((text, fn(items)))
    return pairs


def sequence_task(rng: random.Random) -> list[Pair]:
    """Arithmetic progressions of 3 or 4 numbers -> the next number (`3, 5, 7` -> `9`)."""
    seen: set[str] = set()
    pairs: list[Pair] = []
    while len(pairs) < N_SEQUENCE_ITEMS:
        start, step, count = rng.randint(1, 60), rng.randint(1, 9), rng.choice((3, 4))
        text = ", ".join(str(start + i * step) for i in range(count))
        if text in seen:
            continue
        seen.add(text)
        pairs.append((text, str(start + count * step)))
    return pairs


def build_tasks(seed: int = SEED) -> dict[str, list[Pair]]:
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    tasks: dict[str, list[Pair]] = {
        "uppercase": word_task(str.upper),
        "first_letter": word_task(lambda w: w[0]),
        "last_letter": word_task(lambda w: w[-1]),
        "word_length": word_task(lambda w: str(len(w))),
        "next_letter": [(a, b) for a, b in itertools.pairwise(letters)],
        "number_to_word": [(str(n), number_to_words(n)) for n in range(200)],
        "first_item": list_task(rng, 3, 5, lambda xs: xs[0]),
        "last_item": list_task(rng, 3, 5, lambda xs: xs[-1]),
        "reverse_list": list_task(rng, 3, 3, lambda xs: ", ".join(reversed(xs))),
        # Its own generator, added last: the tasks above come out byte for byte as before it existed.
        "next_number": sequence_task(random.Random(seed + 1)),
    }
    for name, pairs in tasks.items():
        rng.shuffle(pairs)
        if len({i for i, _ in pairs}) != len(pairs):
            raise AssertionError(f"duplicate inputs in {name}")
    return tasks


def write_jsonl(path: Path, pairs: list[Pair]) -> None:
    lines = [json.dumps({"input": i, "output": o}, ensure_ascii=False) for i, o in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if len(set(WORDS)) != len(WORDS) or len(set(LIST_WORDS)) != len(LIST_WORDS):
        raise AssertionError("duplicate words in the word lists")
    for name, pairs in build_tasks().items():
        write_jsonl(args.out / f"{name}.jsonl", pairs)
        print(f"{name}: {len(pairs)} items")


if __name__ == "__main__":
    main()
