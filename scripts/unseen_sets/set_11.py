"""The eleventh set (steering/eval/unseen_11), set aside unmeasured after the tenth: faker-vehicle's table of car
makes and models, humanize's durations in words, the Snowball English stemmer (snowballstemmer) on wordfreq's common
English words, and faker-biology's enzymes under their EC classes."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

import humanize  # type: ignore[import-not-found]
import snowballstemmer  # type: ignore[import-not-found]
from faker_biology.mol_biol.enzyme_data import enzymes  # type: ignore[import-not-found]
from faker_vehicle.vehicle_dict import vehicles  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import common_words

# Body styles and a drivetrain that the table lists as models of one make (`Convertible`, `Quattro`), not model names.
NOT_MODELS = {"Classic", "Convertible", "Coupe", "Hardtop", "Quattro", "Roadster", "Spider"}


def car_model_make() -> Iterable[tuple[str, str]]:
    """A car model -> its make (`Civic` -> `Honda`, `Mustang` -> `Ford`, `Outback` -> `Subaru`): faker-vehicle's
    table (US models, 1992 to 2020), for models named by one capitalised word (`LeBaron` and `GranTurismo` too) and
    listed under one make only. That leaves out letter and number codes (`MDX`, `Q3`, `C-Class`, `F-150`), trims and
    cabs (`Silverado 1500 Crew Cab`), models that several makes sold (`Voyager`, `Continental`), body styles
    (`Convertible`), and names that are a make as well (`Genesis`). Makes the table writes in capitals are written as
    people write them (`MAZDA` -> `Mazda`, `INFINITI` -> `Infiniti`); `GMC` and `BMW` stay."""
    makes: dict[str, set[str]] = defaultdict(set)
    for vehicle in vehicles:
        makes[vehicle["Model"]].add(vehicle["Make"])
    all_makes = set().union(*makes.values())
    for model, its in makes.items():
        if len(its) == 1 and re.fullmatch(r"[A-Z][a-z]+([A-Z][a-z]+)?", model):
            make = next(iter(its))
            if model not in NOT_MODELS and model not in all_makes:
                yield model, make.title() if make.isupper() and len(make) > 3 else make


def seconds_duration() -> Iterable[tuple[str, str]]:
    """A number of seconds -> the same in hours, minutes and seconds, in words as humanize's `precisedelta` writes it
    (`3725` -> `1 hour, 2 minutes and 5 seconds`, `5820` -> `1 hour and 37 minutes`): every multiple of 97 below
    30,000 (97 is prime to 60, so most answers have all three units and none is a whole number of hours)."""
    for seconds in range(97, 30_000, 97):
        yield str(seconds), humanize.precisedelta(timedelta(seconds=seconds))


STEM_TAKEN = 300


def word_stem() -> Iterable[tuple[str, str]]:
    """An English word -> its stem as the Snowball English (Porter2) stemmer cuts it (`running` -> `run`,
    `happiness` -> `happi`, `organised` -> `organis`): the 300 most frequent of wordfreq's common English words (3 to
    8 plain letters) whose stem differs from the word, so no answer is a copy of its input. Stems are the algorithm's,
    often not words (`happi`, `countri`)."""
    stemmer = snowballstemmer.stemmer("english")
    pairs = ((word, stemmer.stemWord(word)) for word in common_words(5000))
    return [(word, stem) for word, stem in pairs if stem != word][:STEM_TAKEN]


def enzyme_class() -> Iterable[tuple[str, str]]:
    """An enzyme -> its class among the six of the EC classification (`Lactate dehydrogenase` -> `Oxidoreductases`,
    `Amylase` -> `Hydrolases`, `Phosphoglucomutase` -> `Isomerases`): faker-biology's tree of enzymes (from
    Wikipedia's categories), for names of one to three words ending in `-ase`, under one class only. That leaves out
    codes and proteins not named as enzymes (`EC 2.5.1.18`, `FKBP`, `Thrombin`, `Lysozyme`) and the long chemical
    names (`4-coumarate-CoA ligase`, `Nicotinate dehydrogenase (cytochrome)`)."""
    classes: dict[str, set[str]] = defaultdict(set)

    def walk(tree: dict, top: str) -> None:
        for name, below in tree.items():
            classes[name].add(top)
            walk(below, top)

    for category, tree in enzymes.items():
        walk(tree, category.removeprefix("Category:"))
    for name, its in classes.items():
        if len(its) == 1 and re.fullmatch(r"[A-Z]?[a-z-]+( [a-z-]+){0,2}ase", name):
            yield name, next(iter(its))


TASKS = {
    "car_model_make": car_model_make,
    "seconds_duration": seconds_duration,
    "word_stem": word_stem,
    "enzyme_class": enzyme_class,
}
