"""The hiragana classes kana can read: char_id, character, romanization, allowed stroke counts.

The table is the original app's `hiragana.json` with the obsolete ゐ (wi) and ゑ (we) dropped, as
the notebook did. Its order defines the class sets: the first 46 rows are `basic46` (the notebook's
"reduced" set), the next 26 add dakuten, handakuten and ゔ (`extended`), and the rest are the yōon
compounds such as きゃ (`all`, 108 classes).

One change from the app's table: そ (so) may have 1 or 2 strokes (and ぞ 3 or 4), because its
two-stroke form (a tick, then the rest) is standard and common; the app's table allowed only the
one-stroke form, so a real two-stroke そ was dropped on loading and never learned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# (char_id, character, romanization, stroke counts as the app's table writes them)
_TABLE: tuple[tuple[str, str, str, str], ...] = (
    ('a', 'あ', 'a', '3'),
    ('i', 'い', 'i', '2'),
    ('u', 'う', 'u', '2'),
    ('e', 'え', 'e', '2'),
    ('o', 'お', 'o', '3'),
    ('ka', 'か', 'ka', '3'),
    ('ki', 'き', 'ki', '3 or 4'),
    ('ku', 'く', 'ku', '1'),
    ('ke', 'け', 'ke', '3'),
    ('ko', 'こ', 'ko', '2'),
    ('sa', 'さ', 'sa', '2 or 3'),
    ('si', 'し', 'shi', '1'),
    ('su', 'す', 'su', '2'),
    ('se', 'せ', 'se', '3'),
    ('so', 'そ', 'so', '1 or 2'),  # not the app's '1': see module docstring
    ('ta', 'た', 'ta', '4'),
    ('ti', 'ち', 'chi', '2'),
    ('tu', 'つ', 'tsu', '1'),
    ('te', 'て', 'te', '1'),
    ('to', 'と', 'to', '2'),
    ('na', 'な', 'na', '4'),
    ('ni', 'に', 'ni', '3'),
    ('nu', 'ぬ', 'nu', '2'),
    ('ne', 'ね', 'ne', '2'),
    ('no', 'の', 'no', '1'),
    ('ha', 'は', 'ha', '3'),
    ('hi', 'ひ', 'hi', '1'),
    ('hu', 'ふ', 'fu', '4'),
    ('he', 'へ', 'he', '1'),
    ('ho', 'ほ', 'ho', '4'),
    ('ma', 'ま', 'ma', '3'),
    ('mi', 'み', 'mi', '2'),
    ('mu', 'む', 'mu', '3'),
    ('me', 'め', 'me', '2'),
    ('mo', 'も', 'mo', '3'),
    ('ya', 'や', 'ya', '3'),
    ('yu', 'ゆ', 'yu', '2'),
    ('yo', 'よ', 'yo', '2'),
    ('ra', 'ら', 'ra', '2'),
    ('ri', 'り', 'ri', '2'),
    ('ru', 'る', 'ru', '1'),
    ('re', 'れ', 're', '2'),
    ('ro', 'ろ', 'ro', '1'),
    ('wa', 'わ', 'wa', '2'),
    ('wo', 'を', 'wo', '3'),
    ('-n', 'ん', 'n', '1'),
    ('ga', 'が', 'ga', '5'),
    ('gi', 'ぎ', 'gi', '5 or 6'),
    ('gu', 'ぐ', 'gu', '3'),
    ('ge', 'げ', 'ge', '5'),
    ('go', 'ご', 'go', '4'),
    ('za', 'ざ', 'za', '4 or 5'),
    ('zi', 'じ', 'ji', '3'),
    ('zu', 'ず', 'zu', '4'),
    ('ze', 'ぜ', 'ze', '5'),
    ('zo', 'ぞ', 'zo', '3 or 4'),  # the app's '3', plus そ's two-stroke form
    ('da', 'だ', 'da', '6'),
    ('di', 'ぢ', 'dji', '4'),
    ('du', 'づ', 'dzu', '3'),
    ('de', 'で', 'de', '3'),
    ('do', 'ど', 'do', '4'),
    ('ba', 'ば', 'ba', '5'),
    ('bi', 'び', 'bi', '3'),
    ('bu', 'ぶ', 'bu', '6'),
    ('be', 'べ', 'be', '3'),
    ('bo', 'ぼ', 'bo', '6'),
    ('pa', 'ぱ', 'pa', '4'),
    ('pi', 'ぴ', 'pi', '2'),
    ('pu', 'ぷ', 'pu', '5'),
    ('pe', 'ぺ', 'pe', '2'),
    ('po', 'ぽ', 'po', '5'),
    ('vu', 'ゔ', 'vu', '4'),
    ('kya', 'きゃ', 'kya', '6 or 7'),
    ('kyu', 'きゅ', 'kyu', '5 or 6'),
    ('kyo', 'きょ', 'kyo', '5 or 6'),
    ('sya', 'しゃ', 'sha', '4'),
    ('syu', 'しゅ', 'shu', '3'),
    ('syo', 'しょ', 'sho', '3'),
    ('tya', 'ちゃ', 'cha', '5'),
    ('tyu', 'ちゅ', 'chu', '4'),
    ('tyo', 'ちょ', 'cho', '4'),
    ('nya', 'にゃ', 'nya', '6'),
    ('nyu', 'にゅ', 'nyu', '5'),
    ('nyo', 'にょ', 'nyo', '5'),
    ('hya', 'ひゃ', 'hya', '4'),
    ('hyu', 'ひゅ', 'hyu', '3'),
    ('hyo', 'ひょ', 'hyo', '3'),
    ('mya', 'みゃ', 'mya', '5'),
    ('myu', 'みゅ', 'myu', '4'),
    ('myo', 'みょ', 'myo', '4'),
    ('rya', 'りゃ', 'rya', '5'),
    ('ryu', 'りゅ', 'ryu', '4'),
    ('ryo', 'りょ', 'ryo', '4'),
    ('gya', 'ぎゃ', 'gya', '8 or 9'),
    ('gyu', 'ぎゅ', 'gyu', '7 or 8'),
    ('gyo', 'ぎょ', 'gyo', '7 or 8'),
    ('zya', 'じゃ', 'ja', '6'),
    ('zyu', 'じゅ', 'ju', '5'),
    ('zyo', 'じょ', 'jo', '5'),
    ('dya', 'ぢゃ', 'dja', '7'),
    ('dyu', 'ぢゅ', 'dju', '6'),
    ('dyo', 'ぢょ', 'djo', '6'),
    ('bya', 'びゃ', 'bya', '6'),
    ('byu', 'びゅ', 'byu', '5'),
    ('byo', 'びょ', 'byo', '5'),
    ('pya', 'ぴゃ', 'pya', '5'),
    ('pyu', 'ぴゅ', 'pyu', '4'),
    ('pyo', 'ぴょ', 'pyo', '4'),
)

CLASS_SET_SIZES = {"basic46": 46, "extended": 72, "all": 108}
CLASS_SETS = tuple(CLASS_SET_SIZES)


@dataclass(frozen=True)
class KanaClass:
    """One class: `char_id` is what raw file names start with; `stroke_counts` are the allowed counts."""

    char_id: str
    character: str
    romanization: str
    stroke_counts: tuple[int, ...]

    @property
    def is_compound(self) -> bool:
        return len(self.character) > 1

    def strokes_off(self, n_strokes: int) -> int:
        """How many strokes `n_strokes` is off this class's table: 0 when the table allows it."""
        return min(abs(n_strokes - allowed) for allowed in self.stroke_counts)


def _parse_stroke_counts(text: str) -> tuple[int, ...]:
    """'3 or 4' -> (3, 4), as the notebook read the app's table."""
    return tuple(int(m) for m in re.findall(r"\d+", text))


ALL_CLASSES: tuple[KanaClass, ...] = tuple(
    KanaClass(cid, ch, rom, _parse_stroke_counts(counts)) for cid, ch, rom, counts in _TABLE
)
_BY_ID = {c.char_id: c for c in ALL_CLASSES}
# Longest ids first, so "kya00012" is read as kya and never as ka.
_IDS_LONGEST_FIRST = sorted(_BY_ID, key=len, reverse=True)


def class_set(name: str) -> tuple[KanaClass, ...]:
    """The classes of a named set, in label order (label i is `class_set(name)[i]`)."""
    if name not in CLASS_SET_SIZES:
        raise ValueError(f"unknown class_set {name!r}; choose one of {', '.join(CLASS_SETS)}")
    return ALL_CLASSES[: CLASS_SET_SIZES[name]]


def get_class(char_id: str) -> KanaClass:
    try:
        return _BY_ID[char_id]
    except KeyError:
        raise KeyError(f"unknown char_id {char_id!r}") from None


@lru_cache(maxsize=4096)
def char_id_from_filename(name: str) -> str | None:
    """The class id that begins a raw file name (`ka00012.pickle` -> `ka`, `-n3.pickle` -> `-n`).

    The longest matching id wins, so `kya1.pickle` is `kya`. Returns None when no id matches.
    """
    for cid in _IDS_LONGEST_FIRST:
        if name.startswith(cid):
            return cid
    return None


def max_strokes(name: str) -> int:
    """The largest stroke count any class of the set allows."""
    return max(max(c.stroke_counts) for c in class_set(name))


# A class whose table does not allow a sample's stroke count counts for this much of what a model
# says of it. Models learn only samples with an allowed count (the notebook's rule, kept), yet a
# raster carries no count: 112 of the CNN's 115 test errors went to a class whose table does not
# allow the sample's count (ば/ぱ, びゃ/ぴゃ, にゃ/にゅ: the marks and small kana differ by a stroke).
# With the weight at 0.1, on two sets of models, the CNNs' test errors fell from 115-129 and
# 189-191 to 11-12 and 14-19 of 5,184 (the ensemble's from 6-7 to 1-2). A class that a model finds
# more than 10x likelier than every class with the right count still wins; a smaller weight read
# more of the rest but fewer of those (docs/experiments.md, "The stroke-count prior"). Since the
# eighteenth session it weighs counts two or more strokes off the table; one off, OFF_BY_ONE_WEIGHT.
WRONG_COUNT_WEIGHT = 0.1
# A count one stroke off a class's table (two strokes joined, one lifted midway, a stray dot: what
# writers do) weighs this much instead. Chosen on validation from the logged probabilities of three
# champions of the default dataset: their ensembles' errors fell from 15-22 to 9-14 of 5,184 (on
# test from 33-45 to 16-22 of 10,368), 0.5 read about as many; it costs the CNNs some ba/pa (their
# marks differ by a stroke), the ensemble 1-3 samples with their table's count (docs/experiments.md).
OFF_BY_ONE_WEIGHT = 0.3


@lru_cache(maxsize=16)
def _strokes_off(class_ids: tuple[str, ...]) -> np.ndarray:
    """(largest count + 3, n_classes) ints: row n says how many strokes n is off each class's
    table, 0, 1 or 2 (2 or more); counts beyond the last row are 2 or more off every class."""
    classes = [get_class(c) for c in class_ids]
    counts = range(max(max(c.stroke_counts) for c in classes) + 3)
    return np.array([[min(c.strokes_off(n), 2) for c in classes] for n in counts])


def apply_stroke_count_prior(probs: np.ndarray, stroke_counts, class_ids, wrong_count_weight: float,
                             off_by_one_weight: float | None = None) -> np.ndarray:
    """Class probabilities (n_samples, n_classes) given each sample's stroke count too: classes
    whose table does not allow the count are weighted by `wrong_count_weight`, or by
    `off_by_one_weight` where the count is one stroke off theirs (None: the same weight, as for
    models made before it), then renormalised. Weights of 1 return `probs` as they are."""
    if off_by_one_weight is None:
        off_by_one_weight = wrong_count_weight
    for name, weight in (("wrong_count_weight", wrong_count_weight),
                         ("off_by_one_weight", off_by_one_weight)):
        if not 0.0 < weight <= 1.0:  # NaN too; 0 would leave nothing when no class fits
            raise ValueError(f"{name} must be in (0, 1] (1: the stroke count ignored), got {weight}")
    if (wrong_count_weight == 1.0 and off_by_one_weight == 1.0) or len(probs) == 0:
        return probs
    table = _strokes_off(tuple(class_ids))
    rows = np.minimum(np.asarray(stroke_counts, dtype=np.intp), len(table) - 1)
    weights = np.array([1.0, off_by_one_weight, wrong_count_weight])[table[rows]]
    weighted = probs * weights
    return weighted / weighted.sum(axis=1, keepdims=True)
