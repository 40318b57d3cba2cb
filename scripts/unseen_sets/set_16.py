"""The sixteenth set (steering/eval/unseen_16), set aside unmeasured after the fifteenth: the names of ICD-10-CM's
categories of disease (as simple-icd-10-cm ships them), the recognition sites of restriction enzymes in REBASE's
table (as Biopython ships it), the language that English borrowed a word from, as ety's Etymological Wordnet gives
it for words of wordfreq's English list, and the standard library's symbolic form of a file's permission bits."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable

import ety  # type: ignore[import-not-found]
import simple_icd_10_cm as icd  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from Bio.Restriction.Restriction_Dictionary import rest_dict  # type: ignore[import-not-found]

from scripts.unseen_sets.shared import CATALOGUE_FORM

# Chapters 1 to 14 of ICD-10-CM (A00 to N99: infections, neoplasms, blood, endocrine, nervous system, eye, ear,
# circulatory, respiratory, digestive, skin, musculoskeletal, genitourinary), less chapter 5 (F01 to F99, mental and
# behavioural disorders, several of whose names are contested).
LAST_CHAPTER_LETTER, LEFT_OUT_CHAPTER_LETTER = "N", "F"
ICD_MOST_WORDS = 3
# A residual category's name says only what it is not (`Other hypothyroidism`, `Unspecified malaria`).
RESIDUAL = re.compile(r"\b(other|unspecified)\b", re.IGNORECASE)


def icd10_condition() -> Iterable[tuple[str, str]]:
    """An ICD-10-CM category code -> the condition it names, as ICD-10-CM names it (`J45` -> `Asthma`, `A00` ->
    `Cholera`, `B05` -> `Measles`, `G20` -> `Parkinson's disease`, `K35` -> `Acute appendicitis`): every
    three-character category of chapters 1 to 14 (A00 to N99) but chapter 5's (F, mental and behavioural disorders),
    in the April 2026 tables that simple-icd-10-cm ships, whose name has at most three words, is not in catalogue
    form (no comma, semicolon or bracket: `Essential (primary) hypertension` is left out) and is not a residual
    category (no `other` or `unspecified`: `Other hypothyroidism`). Codes are written as ICD writes them, a letter and
    two characters, the last sometimes a letter (`C4A` -> `Merkel cell carcinoma`)."""
    for code in icd.get_all_codes(with_dots=False):
        if not icd.is_category(code) or code[0] > LAST_CHAPTER_LETTER or code[0] == LEFT_OUT_CHAPTER_LETTER:
            continue
        name = icd.get_description(code)
        if len(name.split()) <= ICD_MOST_WORDS and not CATALOGUE_FORM.search(name) and not RESIDUAL.search(name):
            yield code, name


# A site of four to eight bases, each one of A, C, G and T (not IUPAC's codes for several: `GANTC`, `GGCCNNNNNGGCC`).
PLAIN_SITE = re.compile(r"[ACGT]{4,8}")


def restriction_site() -> Iterable[tuple[str, str]]:
    """A restriction enzyme -> the DNA sequence it recognizes, as REBASE gives it (`EcoRI` -> `GAATTC`, `BamHI` ->
    `GGATCC`, `HindIII` -> `AAGCTT`, `NotI` -> `GCGGCCGC`, `AluI` -> `AGCT`): every enzyme in the table of REBASE
    that Biopython 1.88 ships (`Bio.Restriction.Restriction_Dictionary`) that at least one supplier in it sells and
    whose site is four to eight bases written with A, C, G and T only, 5' to 3' on one strand; enzymes whose site has
    an ambiguity code (`HinfI`, `GANTC`) are left out. Enzymes from different bacteria can share a site
    (isoschizomers: `SmaI` and `XmaI` -> `CCCGGG`), so answers repeat."""
    for name, enzyme in rest_dict.items():
        if enzyme["suppl"] and PLAIN_SITE.fullmatch(enzyme["site"]):
            yield name, enzyme["site"]


# The answers: the five living languages other than French with the most words below (Spanish, Italian, German,
# Japanese, Arabic), and Hindi, which has a few fewer than Dutch but Dutch's hold more of the Wordnet's slips (`moose`,
# misattributed; `clove` and `pram`, rarer homographs). French, Latin, Ancient Greek, Sanskrit and the older stages of
# languages (Old and Middle English, Old French, Anglo-Norman, Old Norse) gave English most of its vocabulary, words
# seldom felt as borrowed.
ORIGIN_LANGUAGES = ("Arabic", "German", "Hindi", "Italian", "Japanese", "Spanish")
ORIGIN_WORDS = 200_000
ORIGIN_TAKEN = 42
# Words that English text mostly uses as a name of a person, place or company rather than as the borrowed word.
NAMES = {
    "amir",
    "anna",
    "atari",
    "donna",
    "frankfurt",
    "ghazi",
    "ghibli",
    "hakim",
    "hamza",
    "hilal",
    "horst",
    "iman",
    "jaeger",
    "malta",
    "medina",
    "mona",
    "mukhtar",
    "rani",
    "reis",
    "riad",
    "ritter",
    "seif",
    "sharif",
    "stein",
    "tonga",
    "uber",
    "wasserman",
    "yumi",
    "yuri",
}
# Words whose everyday sense is English's own or another language's, the borrowed one a rarer homograph: `quite` (a
# bullfighter's pass in Spanish), `shrub` (a fruit drink, from Arabic), `hooch` (a hut, from Japanese; liquor comes from
# Tlingit), `kama` (a sickle in Japanese; in English mostly the Sanskrit word) and `maru` (a word of Japanese ships'
# names).
HOMOGRAPHS = {"hooch", "kama", "maru", "quite", "shrub"}
# Vulgar words or slurs, or words mostly used for pornography.
OFFENSIVE_WORDS = {"bint", "hentai", "wiener", "yaoi"}
LEFT_OUT = NAMES | HOMOGRAPHS | OFFENSIVE_WORDS


def word_origin() -> Iterable[tuple[str, str]]:
    """An English word -> the language English took it from, as the Etymological Wordnet gives it through ety (`sushi`
    -> `Japanese`, `kindergarten` -> `German`, `tomato` -> `Spanish`, `opera` -> `Italian`, `shampoo` -> `Hindi`,
    `henna` -> `Arabic`): the 42 most frequent words of each of six living languages (Arabic, German, Hindi, Italian,
    Japanese, Spanish) among the 200,000 most frequent of wordfreq's English list, of four or more plain letters,
    whose immediate origins in ety (one step back) are all words of that one language; names, homographs whose
    everyday sense is not the borrowed word, and vulgar or pornographic words and slurs are left out. The answer is
    the language the word came into English from, not its ultimate source (`coffee` -> `Italian`, from caffè, itself
    from Turkish)."""
    taken: dict[str, list[str]] = {language: [] for language in ORIGIN_LANGUAGES}
    for word in wordfreq.top_n_list("en", ORIGIN_WORDS):
        if not (word.isascii() and word.isalpha() and len(word) >= 4) or word in LEFT_OUT:
            continue
        languages = {origin.language.name for origin in ety.origins(word)}
        if len(languages) == 1 and (language := languages.pop()) in taken and len(taken[language]) < ORIGIN_TAKEN:
            taken[language].append(word)
    for language, words in taken.items():
        for word in words:
            yield word, language


def chmod_symbolic() -> Iterable[tuple[str, str]]:
    """A file's permission bits in octal -> the same in symbolic form, as `ls -l` writes them and the standard
    library's `stat.filemode` gives them (`755` -> `rwxr-xr-x`, `644` -> `rw-r--r--`, `600` -> `rw-------`, `000` ->
    `---------`): every mode of three octal digits, `000` to `777`, for the owner, the group and others in that
    order, each digit the sum of read (4), write (2) and execute (1); no set-user-ID, set-group-ID or sticky bit, and
    no file-type letter."""
    for mode in range(0o1000):
        yield f"{mode:03o}", stat.filemode(stat.S_IFREG | mode)[1:]


TASKS = {
    "chmod_symbolic": chmod_symbolic,
    "icd10_condition": icd10_condition,
    "restriction_site": restriction_site,
    "word_origin": word_origin,
}
