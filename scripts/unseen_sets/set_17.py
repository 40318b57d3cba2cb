"""The seventeenth set (steering/eval/unseen_17), set aside unmeasured after the sixteenth: the active ingredient of a
brand-name drug (as drug-named-entity-recognition's dictionary gives it), the message ID of a pylint check, the type of
a Pokémon in the games' current data (as poke-env ships Pokémon Showdown's Pokédex), and the standard library's
fractions in lowest terms."""

from __future__ import annotations

import bz2
import pickle
from collections.abc import Iterable
from fractions import Fraction
from importlib.resources import files
from math import gcd

import wordfreq  # type: ignore[import-not-found]
from poke_env.data import GenData  # type: ignore[import-not-found]
from pylint import checkers  # type: ignore[import-not-found]
from pylint.lint import PyLinter  # type: ignore[import-not-found]

# The dictionary lists beside a drug's brands its other names; these are not brands. Initialisms of a chemical name
# (APAP for acetaminophen, HCTZ, CDDP, DTIC, ATRA, SAHA, DOPS), written in capitals, and DDAVP, a brand written so.
INITIALISMS = {"apap", "atra", "cddp", "ddavp", "dops", "dtic", "hctz", "saha"}
# The drug's international or older nonproprietary name, or a chemical's: `paracetamol` and `salbutamol` are what
# most of the world calls acetaminophen and albuterol, `cortisol` is the hormone that hydrocortisone is.
OTHER_NAMES = {
    "actinomycin",
    "ciclosporin",
    "cortisol",
    "dexamphetamine",
    "glibenclamide",
    "hexamine",
    "nicotinate",
    "paracetamol",
    "pethidine",
    "rapamycin",
    "salbutamol",
    "tetrahydrocannabinol",
}
# Brands of a mixture or of a line of products with other ingredients than the one the dictionary names (`adderall`,
# four amphetamine salts; `neosporin`, three antibiotics; `midol`, `vicks`, `robitussin`, `zicam`, `maalox`, and three
# toothpastes, whose answer would be `fluoride`), and `zantac`, ranitidine until 2020 and famotidine since.
PRODUCT_LINES = {
    "adderall",
    "aquafresh",
    "colgate",
    "maalox",
    "midol",
    "neosporin",
    "pepsodent",
    "robitussin",
    "vicks",
    "zantac",
    "zicam",
}
# Brands whose answer names a class or part of a name, not the drug: `estrogen` (`premarin`, conjugated estrogens;
# `ogen`), `thyroid` (`armour`), `potassium` (`kaon`, potassium gluconate or chloride), `isosorbide` (`ismo`,
# isosorbide mononitrate), and the botulinum toxins (`botox`, `dysport`), whose names the dictionary writes in lower
# case (`onabotulinumtoxina`).
VAGUE_ANSWERS = {"armour", "botox", "dysport", "ismo", "kaon", "ogen", "premarin"}
# Brands somewhere that English text mostly writes as another word or as a name (`emend`, `luminal`, `modus`,
# `generics`; `exelon`, `creon`, `alli`, `kendrick`, `fortum`; `vanos`, `rayos`), or that are not a drug's at all
# (`fivb`, the volleyball federation's initials; `sone`, a unit of loudness).
WORDS_AND_NAMES = {
    "agit",
    "alli",
    "amias",
    "avita",
    "banan",
    "bicol",
    "biomet",
    "cambia",
    "capex",
    "copal",
    "creon",
    "dagan",
    "dolin",
    "emend",
    "exelon",
    "fivb",
    "fortum",
    "gana",
    "generics",
    "hemel",
    "jumex",
    "kalma",
    "kendrick",
    "lodine",
    "luminal",
    "modus",
    "ovide",
    "planum",
    "prent",
    "rayos",
    "rela",
    "rexer",
    "sone",
    "tipuric",
    "tobi",
    "vanos",
    "zeven",
}
NOT_BRANDS = INITIALISMS | OTHER_NAMES | PRODUCT_LINES | VAGUE_ANSWERS | WORDS_AND_NAMES
# A "brand" that begins as its generic name does is another language's spelling of it (`ibuprofeno`, `sertralina`).
SAME_START = 4


def brand_generic() -> Iterable[tuple[str, str]]:
    """A brand-name drug -> its active ingredient's generic name, as MedlinePlus names it (`Lipitor` -> `atorvastatin`,
    `Tylenol` -> `acetaminophen`, `Zoloft` -> `sertraline`, `Viagra` -> `sildenafil`, `Xanax` -> `alprazolam`): every
    name that drug-named-entity-recognition 2.0.9's dictionary resolves to one drug with a MedlinePlus monograph
    whose generic name is one word (one active ingredient), that is one word itself, does not begin with the same
    four letters as the generic name (`ibuprofeno`, `atorvastatina` are spellings) and is in wordfreq's English list,
    at any frequency; initialisms (`APAP`), other nonproprietary names (`paracetamol`, `salbutamol`), brands of a
    mixture or a product line (`Adderall`, `Vicks`), brands whose answer would name a class (`Premarin` ->
    `estrogen`), and brands that English text mostly writes as another word or name (`Emend`, `Exelon`) are left out.
    The brand is written with a capital, the generic name in lower case, in its US form (`acetaminophen`, `albuterol`,
    `epinephrine`); several brands can share a generic name (`Advil`, `Motrin` and `Nurofen` -> `ibuprofen`)."""
    # The package ships its dictionary only as a pickle; this offline script unpickles that file of the pinned wheel in
    # its scratch venv, nothing the service stores or receives.
    with bz2.open(files("drug_named_entity_recognition") / "drug_ner_dictionary.pkl.bz2") as dictionary:
        tables = pickle.load(dictionary)
    drugs = tables["drug_canonical_to_data"]
    for brand, generics in tables["drug_variant_to_canonical"].items():
        if len(generics) != 1 or brand in NOT_BRANDS:
            continue
        generic = generics[0]
        if not drugs.get(generic, {}).get("medline_plus_id") or brand[:SAME_START] == generic[:SAME_START]:
            continue  # no MedlinePlus monograph, or a spelling of the generic name
        plain = brand.isascii() and brand.isalpha() and generic.isascii() and generic.isalpha()
        if plain and wordfreq.zipf_frequency(brand, "en") > 0:
            yield brand.capitalize(), generic


# pylint's categories for problems in the code (convention, refactor, warning, error); informational (I) and fatal (F)
# messages are about the run itself (`locally-disabled`, `astroid-error`).
CODE_CATEGORIES = "CRWE"


def pylint_code() -> Iterable[tuple[str, str]]:
    """A pylint check's symbolic name -> its message ID, as pylint 4.1.5 gives them (`unused-import` -> `W0611`,
    `line-too-long` -> `C0301`, `missing-module-docstring` -> `C0114`, `too-many-arguments` -> `R0913`,
    `undefined-variable` -> `E0602`): every message of the checkers pylint loads by default (no plugins) in the
    categories convention (C), refactor (R), warning (W) and error (E), less those that renamed an older message
    (`broad-exception-caught`, `W0718`, was `broad-except`, `W0703`; `missing-module-docstring` was part of
    `missing-docstring`, `C0111`), whose older ID a model may give instead. The ID is the category's letter and four
    digits, the first two the checker's."""
    linter = PyLinter()
    checkers.initialize(linter)
    for message in linter.msgs_store.messages:
        if message.msgid[0] in CODE_CATEGORIES and not message.old_names:
            yield message.symbol, message.msgid


# The six types with the most Pokémon of that type alone (Water, Normal, Grass, Psychic, Fire, Electric), and as many
# of each as Electric has (35), taken in National Pokédex order: the earliest games' Pokémon, the best known.
POKEMON_TYPES = ("Electric", "Fire", "Grass", "Normal", "Psychic", "Water")
POKEMON_TAKEN = 35
FIRST_GENERATION, LAST_GENERATION = 1, 9


def pokemon_type() -> Iterable[tuple[str, str]]:
    """A Pokémon -> its type (`Pikachu` -> `Electric`, `Charmander` -> `Fire`, `Squirtle` -> `Water`, `Chikorita` ->
    `Grass`, `Abra` -> `Psychic`, `Snorlax` -> `Normal`): the first 35 Pokémon in National Pokédex order of each of
    six types, Electric, Fire, Grass, Normal, Psychic and Water, among those with one type only, in the Pokédex of
    generation 9 that poke-env 0.16.1 ships (Pokémon Showdown's), whose name is plain letters (no `Porygon2`);
    Pokémon of two types, alternate and regional forms (`Raichu-Alola`), fan-made Pokémon and Pokémon whose type
    changed between generations (`Clefairy`, Normal until generation 6, Fairy since; `Magnemite`, Electric, then
    Electric and Steel) are left out, so each has had its one type in every game."""
    pokedexes = [GenData.from_gen(generation).pokedex for generation in range(FIRST_GENERATION, LAST_GENERATION + 1)]
    taken: dict[str, list[str]] = {kind: [] for kind in POKEMON_TYPES}
    for key, entry in sorted(pokedexes[-1].items(), key=lambda item: item[1]["num"]):
        if entry["num"] <= 0 or key != entry["baseSpecies"] or "forme" in entry or not entry["name"].isalpha():
            continue  # fan-made Pokémon (numbered below 1), forms, and names with other characters
        types = entry["types"]
        # Some generations' entries inherit their types from the next and give none.
        if any(dex[key].get("types", types) != types for dex in pokedexes if key in dex) or len(types) != 1:
            continue
        if (kind := types[0]) in taken and len(taken[kind]) < POKEMON_TAKEN:
            taken[kind].append(entry["name"])
    for kind, names in taken.items():
        for name in names:
            yield name, kind


LARGEST_DENOMINATOR = 40


def fraction_lowest() -> Iterable[tuple[str, str]]:
    """A fraction -> the same in lowest terms, as the standard library's `fractions.Fraction` writes it (`6/8` ->
    `3/4`, `10/15` -> `2/3`, `12/36` -> `1/3`, `26/39` -> `2/3`): every proper fraction (numerator below the
    denominator) with a denominator from 2 to 40 that is not already in lowest terms, each divided through by the
    greatest common divisor of its numerator and denominator; the answer is never a whole number."""
    for denominator in range(2, LARGEST_DENOMINATOR + 1):
        for numerator in range(1, denominator):
            if gcd(numerator, denominator) > 1:
                yield f"{numerator}/{denominator}", str(Fraction(numerator, denominator))


TASKS = {
    "brand_generic": brand_generic,
    "fraction_lowest": fraction_lowest,
    "pokemon_type": pokemon_type,
    "pylint_code": pylint_code,
}
