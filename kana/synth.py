"""Synthetic handwriting in the app's raw format, from KanjiVG stroke-order vectors.

The original app's data were never published, so kana makes its default training data here:
each sample starts from a KanjiVG glyph (strokes in drawing order, shipped in the `kanjivg` PyPI
package, CC BY-SA 3.0) and is written the way a finger or pen on a touch screen records it:

- the whole character varies in size, position, slant (rotation), shear and aspect;
- each stroke is placed a little off (shift, turn, scale about its centre) and wobbles smoothly,
  and the whole character is bent by a smooth random displacement field; a third of the samples
  come from messier writers, whose strokes stray and bend 1-2x as far (the app is a study app,
  written in with a finger);
- points are recorded at a fixed rate while the pen moves with a speed profile that slows at
  stroke ends and corners, so points crowd there and thin out on fast straight runs; fast writers
  and pen-input dictionaries give few points per stroke (a quarter of the samples are their
  turning points alone);
- sometimes strokes are joined where the class allows the lower count, and one sample in ten has
  two strokes of its kana's body joined where it does not (writers who don't lift the pen; the
  models had read few such samples: the LSTM, which counts strokes, 8%), and one in twenty has one
  stroke lifted midway where it allows no more (a finger that loses the glass); stroke ends get
  small hooks towards the next stroke;
- half the そ and ぞ are written in their two-stroke form (a tick, then the rest from the top
  right), a standard form that KanjiVG, with one stroke, does not have;
- one sample in ten has two consecutive strokes in the wrong order (people do, and a model that
  only ever saw the textbook order reads them badly: the LSTM read 56% of samples whose last two
  strokes were swapped);
- one sample in twenty has one stroke drawn backwards (learners do; the LSTM, which reads the
  pen's direction, read 46% of samples with one stroke reversed before it saw any);
- a third of the voiced samples (が, ぱ, ぎゃ...) have their voicing mark drawn small and quick, a
  third to four fifths of KanjiVG's size: KanjiVG draws every ゛ and ゜ the same size, and the
  CNNs trained on that read 68-71% of samples whose marks were a third of it (a tiny ゜ was missed);
  one ゛ in ten is written in one stroke, its ticks joined (which gives ゜'s stroke count: ば has
  ぱ's; 32 of the 40 errors the twentieth session's champion made on the check's samples with two
  strokes joined were a ゛ so joined read as ゜);
- compounds (きゃ...) are a full kana plus a small ゃ/ゅ/ょ at lower right, a third to four fifths
  its size; one in five is written as vertical text sets it, the small kana under the kana in the
  right half of its column.

Everything is driven by one numpy Generator, so a seed gives the same samples on every machine.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from kana.classes import KanaClass
from kana.classes import max_strokes as class_set_max_strokes

KANJIVG_CREDIT = "KanjiVG (c) Ulrich Apel, CC BY-SA 3.0, https://kanjivg.tagaini.net"
_KVG_SIZE = 109.0
_NUMBER = re.compile(r"[-+]?(?:\d*\.\d+|\d+\.?)(?:[eE][-+]?\d+)?")
_COMMAND = re.compile(r"[MmCcSsLlHhVvZzQqTt]")


# --------------------------------------------------------------------------- KanjiVG templates


@lru_cache(maxsize=1)
def kanjivg_dir() -> Path:
    """The folder of KanjiVG SVGs that the `kanjivg` package installs (no download)."""
    try:
        path = Path(metadata.distribution("kanjivg").locate_file("kanji"))
    except metadata.PackageNotFoundError:
        raise RuntimeError("the kanjivg package is not installed: pip install kanjivg") from None
    if not path.is_dir():
        raise RuntimeError(f"kanjivg is installed but {path} is missing")
    return path


def _cubic(p0, p1, p2, p3, n: int = 12) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[1:, None]
    mt = 1.0 - t
    return mt**3 * p0 + 3 * mt**2 * t * p1 + 3 * mt * t**2 * p2 + t**3 * p3


def parse_svg_path(d: str) -> np.ndarray:
    """An SVG path (the subset KanjiVG uses: M, C, S, L, H, V, Z, absolute or relative) -> polyline."""
    tokens = re.findall(rf"{_COMMAND.pattern}|{_NUMBER.pattern}", d)
    pts: list[np.ndarray] = []
    cur = np.zeros(2)
    start = np.zeros(2)
    last_ctrl = None
    cmd = None
    i = 0

    def take(k):
        nonlocal i
        vals = np.array([float(v) for v in tokens[i : i + k]])
        i += k
        return vals

    while i < len(tokens):
        if _COMMAND.fullmatch(tokens[i]):
            cmd = tokens[i]
            i += 1
            if cmd in "Zz":
                pts.append(start.copy())
                cur = start.copy()
                continue
        rel = cmd.islower()
        base = cur if rel else np.zeros(2)
        c = cmd.upper()
        if c == "M":
            cur = base + take(2)
            start = cur.copy()
            pts.append(cur.copy())
            cmd = "l" if rel else "L"  # implicit lineto after moveto
            last_ctrl = None
        elif c == "L":
            cur = base + take(2)
            pts.append(cur.copy())
            last_ctrl = None
        elif c == "H":
            x = take(1)[0]
            cur = np.array([cur[0] + x if rel else x, cur[1]])
            pts.append(cur.copy())
            last_ctrl = None
        elif c == "V":
            y = take(1)[0]
            cur = np.array([cur[0], cur[1] + y if rel else y])
            pts.append(cur.copy())
            last_ctrl = None
        elif c == "C":
            v = take(6)
            p1, p2, p3 = base + v[0:2], base + v[2:4], base + v[4:6]
            pts.extend(_cubic(cur, p1, p2, p3))
            cur, last_ctrl = p3, p2
        elif c == "S":
            v = take(4)
            p1 = 2 * cur - last_ctrl if last_ctrl is not None else cur.copy()
            p2, p3 = base + v[0:2], base + v[2:4]
            pts.extend(_cubic(cur, p1, p2, p3))
            cur, last_ctrl = p3, p2
        else:
            raise ValueError(f"unsupported SVG path command {cmd!r}")
    return np.asarray(pts)


@lru_cache(maxsize=8192)
def glyph_strokes(character: str) -> tuple[np.ndarray, ...]:
    """KanjiVG strokes of one character as dense polylines in app coordinates (y up, [-1, 1])."""
    path = kanjivg_dir() / f"{ord(character):05x}.svg"
    if not path.exists():
        raise KeyError(f"KanjiVG has no glyph for {character!r} ({path.name})")
    text = path.read_text(encoding="utf-8")
    strokes = []
    for d in re.findall(r'<path[^>]*\sd="([^"]+)"', text):
        pts = parse_svg_path(d) / (_KVG_SIZE / 2.0) - 1.0
        pts[:, 1] = -pts[:, 1]
        strokes.append(pts)
    return tuple(strokes)


def kanji_characters(limit: int, seed: int = 0, max_strokes: int = 16) -> list[str]:
    """`limit` common-range CJK characters (U+4E00..U+9FFF) that KanjiVG has, chosen by seed."""
    names = sorted(p.stem for p in kanjivg_dir().glob("*.svg") if "-" not in p.stem)
    chars = [chr(int(n, 16)) for n in names if 0x4E00 <= int(n, 16) <= 0x9FFF]
    rng = np.random.default_rng(seed)
    rng.shuffle(chars)
    picked = []
    for ch in chars:
        if len(glyph_strokes(ch)) <= max_strokes:
            picked.append(ch)
        if len(picked) == limit:
            break
    return sorted(picked)


# --------------------------------------------------------------------------- geometry helpers


def _arclength(p: np.ndarray) -> np.ndarray:
    seg = np.hypot(*np.diff(p, axis=0).T)
    return np.concatenate([[0.0], np.cumsum(seg)])


def densify(p: np.ndarray, step: float = 0.01) -> np.ndarray:
    """Resample a polyline at (about) uniform arclength `step`."""
    s = _arclength(p)
    if s[-1] <= 0:
        return p[:1].copy()
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.column_stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])])


def _turning(p: np.ndarray) -> np.ndarray:
    """Absolute turning angle at each point of a dense polyline (0 at the ends)."""
    if len(p) < 3:
        return np.zeros(len(p))
    d = np.diff(p, axis=0)
    ang = np.arctan2(d[:, 1], d[:, 0])
    turn = np.abs((np.diff(ang) + np.pi) % (2 * np.pi) - np.pi)
    return np.concatenate([[0.0], turn, [0.0]])


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def elastic_warp(rng: np.random.Generator, strokes: list[np.ndarray], amplitude: float) -> list[np.ndarray]:
    """Bend the whole character with a smooth random displacement field (a few low-frequency
    waves in x and y): strokes stay connected where they touch, but proportions and curvature
    change the way one person's hand differs from a font."""
    k = 3
    freq = rng.uniform(0.3, 1.2, size=(2, k, 2))  # (output axis, wave, input axis) cycles per unit
    phase = rng.uniform(0, 2 * np.pi, size=(2, k))
    amp = rng.normal(0, amplitude / np.sqrt(k), size=(2, k))
    out = []
    for s in strokes:
        arg = np.pi * np.einsum("nd,akd->nak", s, freq) + phase[None]
        out.append(s + (amp[None] * np.sin(arg)).sum(axis=2))
    return out


def _smooth_noise(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """Low-frequency 2D wobble along n points: a few random sinusoids per axis."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    freq = rng.uniform(0.3, 2.5, size=(1, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(2, 3))
    amp = rng.normal(0, amplitude, size=(2, 3)) / np.sqrt(3)
    return np.column_stack(
        [(amp[k] * np.sin(2 * np.pi * freq * t + phase[k])).sum(axis=1) for k in range(2)]
    )


# --------------------------------------------------------------------------- the writer model


def record_stroke(rng: np.random.Generator, dense: np.ndarray, pace: float) -> np.ndarray:
    """Sample a dense polyline the way a touch screen records a moving finger.

    Speed follows a bell over the stroke (slow at touch-down and lift-off) and drops at corners;
    points are taken at a fixed rate with a little timing jitter. `pace` is canvas units per
    sample at full speed: small for slow careful writers (many points), large for fast ones.
    """
    if len(dense) < 2:
        return dense.copy()
    s = _arclength(dense)
    total = s[-1]
    if total <= 1e-9:
        return dense[:1].copy()
    u = s / total
    bell = 0.25 + 0.75 * np.sin(np.pi * np.clip(u, 0, 1)) ** 0.6
    corner = 1.0 / (1.0 + 6.0 * _turning(dense))
    if len(dense) >= 5:  # a moving average (the stub of a stroke lifted midway may be shorter)
        corner = np.convolve(corner, np.ones(5) / 5, mode="same")
    speed = np.maximum(bell * corner, 0.05)
    seg_time = np.diff(s) / (0.5 * (speed[1:] + speed[:-1]))
    t = np.concatenate([[0.0], np.cumsum(seg_time)]) / pace
    n = max(2, int(t[-1]) + 1)
    ticks = np.arange(n, dtype=float) + rng.uniform(-0.25, 0.25, n)
    ticks = np.sort(np.clip(ticks, 0.0, t[-1]))
    ticks[0], ticks[-1] = 0.0, t[-1]
    pts = np.column_stack([np.interp(ticks, t, dense[:, 0]), np.interp(ticks, t, dense[:, 1])])
    return pts


def turning_points(dense: np.ndarray, tolerance: float = 0.04) -> np.ndarray:
    """The fewest points that keep a stroke within `tolerance` of its path (Ramer-Douglas-Peucker):
    how pen dictionaries such as Tomoe record strokes (ends and turns, 2-9 points each)."""
    if len(dense) < 3:
        return dense.copy()
    keep = np.zeros(len(dense), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(dense) - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        a, b = dense[i], dense[j]
        ab = b - a
        norm = np.hypot(*ab)
        rel = dense[i + 1 : j] - a
        if norm < 1e-12:
            dist = np.hypot(rel[:, 0], rel[:, 1])
        else:
            dist = np.abs(ab[0] * rel[:, 1] - ab[1] * rel[:, 0]) / norm
        k = int(np.argmax(dist))
        if dist[k] > tolerance:
            m = i + 1 + k
            keep[m] = True
            stack += [(i, m), (m, j)]
    return dense[keep]


def join_strokes(strokes: list[np.ndarray], target: int, rng: np.random.Generator,
                 keep_apart: int | None = None) -> list[np.ndarray]:
    """Join consecutive strokes (closest end-to-start gaps first) until `target` remain.

    Only the first `keep_apart` strokes may join (a compound's base kana: the table's alternative
    counts come from it, and nobody joins the small kana to it)."""
    strokes = list(strokes)
    while len(strokes) > target:
        gaps = [np.hypot(*(strokes[i + 1][0] - strokes[i][-1])) for i in range(len(strokes) - 1)]
        gaps = np.asarray(gaps) * rng.uniform(0.8, 1.25, len(gaps))
        if keep_apart is not None:
            gaps[keep_apart - 1 :] = np.inf
        i = int(np.argmin(gaps))
        if keep_apart is not None:  # the join was inside the base kana: it has one stroke fewer
            keep_apart -= 1
        strokes[i : i + 2] = [pen_kept_down(strokes[i], strokes[i + 1])]
    return strokes


def pen_kept_down(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two strokes written as one: the pen goes straight from `first`'s end to `second`'s start."""
    bridge = densify(np.vstack([first[-1], second[0]]))
    return np.vstack([first, bridge[1:-1], second])


def _hook(stroke: np.ndarray, towards: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A short flick at a stroke's end towards where the pen goes next."""
    end = stroke[-1]
    direction = towards - end
    norm = np.hypot(*direction)
    if norm < 1e-6:
        return stroke
    tail = end + direction / norm * rng.uniform(0.03, 0.09) * np.linspace(0, 1, 5)[1:, None]
    return np.vstack([stroke, tail])


def split_stroke(strokes: list[np.ndarray], rng: np.random.Generator,
                 splittable: int) -> list[np.ndarray]:
    """One of the first `splittable` strokes (longer ones likelier) cut in two 25-75% along its
    length, up to 8% of it lost where the pen was up. Strokes too short to cut stay as they are."""
    lengths = np.array([_arclength(s)[-1] for s in strokes[:splittable]])
    if splittable < 1 or lengths.sum() <= 0:
        return strokes
    k = int(rng.choice(splittable, p=lengths / lengths.sum()))
    u = _arclength(strokes[k]) / lengths[k]
    cut, lost = rng.uniform(0.25, 0.75), rng.uniform(0.0, 0.08)
    first, second = strokes[k][u <= cut], strokes[k][u >= cut + lost]
    if len(first) < 2 or len(second) < 2:
        return strokes
    return strokes[:k] + [first, second] + strokes[k + 1 :]


def normalised(strokes, extent: float) -> list[np.ndarray]:
    """Strokes moved so their bounding box is centred on 0 and scaled to `extent` (max side)."""
    allpts = np.vstack(strokes)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    scale = extent / max(float((hi - lo).max()), 1e-6)
    return [(s - (lo + hi) / 2) * scale for s in strokes]


SMALL_MARKS = 1 / 3  # share of voiced samples whose voicing mark is drawn small
JOINED_MARKS = 0.1  # share of ゛ samples whose two ticks are written in one stroke
_MARK_STROKES = {"\u3099": 2, "\u309a": 1}  # combining ゛ (two ticks) and ゜ (a circle)


def voicing_mark_strokes(character: str) -> int:
    """How many of a kana's KanjiVG strokes, its last ones, are its voicing mark: 2 for ゛ (が),
    1 for ゜ (ぱ), 0 for none (read from the character's Unicode decomposition)."""
    parts = unicodedata.decomposition(character).split()
    return _MARK_STROKES.get(chr(int(parts[1], 16)), 0) if len(parts) == 2 else 0


def resize_voicing_mark(strokes: list[np.ndarray], character: str, factor: float) -> list[np.ndarray]:
    """The base kana's voicing mark (its last strokes among the first ones of `strokes`, which hold
    the base kana first) scaled by `factor` about its own centre: the ticks shorter and closer."""
    n_marks = voicing_mark_strokes(character[0])
    if not n_marks:
        return strokes
    end = len(glyph_strokes(character[0]))
    marks = strokes[end - n_marks : end]
    centre = np.vstack(marks).mean(axis=0)
    return strokes[: end - n_marks] + [(m - centre) * factor + centre for m in marks] + strokes[end:]


def join_voicing_mark(strokes: list[np.ndarray], character: str) -> list[np.ndarray]:
    """A ゛'s two ticks (the base kana's last two strokes) written in one stroke, the pen going
    straight from the first tick's end to the second's start, as quick writers do. The kana then
    has one stroke fewer, ゜'s count (ば joined has ぱ's strokes), which only the mark's shape tells
    apart; a ゜ (one stroke) or no mark: as it was."""
    if voicing_mark_strokes(character[0]) != 2:
        return strokes
    end = len(glyph_strokes(character[0]))
    return strokes[: end - 2] + [pen_kept_down(strokes[end - 2], strokes[end - 1])] + strokes[end:]


ORDER_SLIP = 0.1  # share of samples with two consecutive strokes written in the wrong order
REVERSED_STROKE = 0.05  # share of samples with one stroke drawn from its end to its start
MESSY_WRITERS = 1 / 3  # share of kana samples whose strokes stray 1-2x as far (`messiness`)
# share of kana samples with two strokes joined where the class's table allows no fewer strokes:
# people who do not lift the pen between two strokes (the table's count is the textbook's)
OFF_TABLE_JOINS = 0.1
# share of kana samples with one stroke of the kana's body lifted midway where the class's table
# allows no more strokes: a finger that loses the glass, a writer who draws a long stroke in two
# (ensembles that had never seen one read 75-77% of them, the LSTM 3%)
OFF_TABLE_SPLITS = 0.05
# share of compound samples written as vertical text sets them: the small kana under the kana, in
# the right half of its column (ensembles trained on the lower right alone read 66-73% of them)
VERTICAL_COMPOUNDS = 0.2


@lru_cache(maxsize=1)
def _most_strokes() -> int:
    """The most strokes any class's table allows (the LSTM's columns for the `all` class set)."""
    return class_set_max_strokes("all")


def fixed_tail_strokes(kana: KanaClass | str) -> int:
    """How many of a sample's last strokes (as synthesized, before any join) are its voicing mark
    and a compound's small kana: the strokes an off-table join and a moved stroke leave alone
    (people write them after the kana they belong to, and the mark's two ticks, always the closest
    pair of a ゛ kana in KanjiVG, joined give ゜'s count: ば with its ticks joined has ぱ's strokes)."""
    character = kana if isinstance(kana, str) else kana.character
    small = sum(len(glyph_strokes(c)) for c in character[1:])
    return small + voicing_mark_strokes(character[0])


def moved_stroke_order(n_strokes: int, fixed_tail: int, rng: np.random.Generator) -> list[int] | None:
    """A stroke order with one stroke of the body (all but the last `fixed_tail`) taken out and
    written at another place in the body, as people who learned an order loosely write it (も with
    its two bars first is ま's order); None when the body has fewer than two strokes."""
    body = n_strokes - fixed_tail
    if body < 2:
        return None
    i, j = (int(x) for x in rng.choice(body, 2, replace=False))
    order = [m for m in range(n_strokes) if m != i]
    order.insert(j, i)
    return order


def _slip_order(strokes: list, rng: np.random.Generator, keep_apart: int | None = None) -> list:
    """Two consecutive strokes swapped, as people who learned a character's order loosely write
    it; never across a compound's two kana (`keep_apart`: the base kana's stroke count)."""
    pairs = [i for i in range(len(strokes) - 1) if keep_apart is None or i != keep_apart - 1]
    if not pairs:
        return strokes
    i = int(rng.choice(pairs))
    return strokes[:i] + [strokes[i + 1], strokes[i]] + strokes[i + 2 :]


# Characters with a standard form that splits one KanjiVG stroke at its first corner: character ->
# index of that stroke. そ is written in one stroke or as a tick and the rest (the app's table
# allowed only one; pen dictionaries such as Tomoe carry both forms).
SPLIT_FORMS = {"そ": 0, "ぞ": 0}


def split_at_first_corner(stroke: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """A stroke's opening segment as a tick of its own, then the rest from the first corner.

    The tick is turned 20-40 degrees clockwise about its start and shortened, as people draw it
    (a short stroke down to the right, not the flat top that leads into the corner)."""
    dense = densify(stroke)
    u = _arclength(dense) / max(_arclength(dense)[-1], 1e-9)
    turn = np.convolve(_turning(dense), np.ones(5), mode="same")
    early = np.flatnonzero((u > 0.03) & (u < 0.3))
    sharp = early[turn[early] > 0.8]
    corner = int(sharp[0] if len(sharp) else early[np.argmax(turn[early])])
    tick, rest = dense[: corner + 1], dense[corner:]
    m = _rotation(-np.radians(rng.uniform(20, 40))) * rng.uniform(0.55, 0.85)
    tick = (tick - tick[0]) @ m.T + tick[0]
    return [tick, rest]


def _template(kana: KanaClass, rng: np.random.Generator,
              vertical_compound: float = 0.0) -> tuple[list[np.ndarray], int | None]:
    """The KanjiVG strokes of a class; compounds are a full kana plus a small kana at lower right,
    a third to four fifths its size (people write きゃ's ゃ anywhere in that range; redrawn twice
    its size, the compounds were read 93.6% by an ensemble trained on 0.4-0.6 and 97.5% by one
    trained on this range), or, with chance `vertical_compound`, under the kana in the right half
    of its column, as vertical text sets it. Also returns a compound's base stroke count."""
    if not kana.is_compound:
        return [s.copy() for s in glyph_strokes(kana.character)], None
    base = normalised(glyph_strokes(kana.character[0]), 1.0)
    small = normalised(glyph_strokes(kana.character[1]), rng.uniform(0.35, 0.8))
    base_lo, base_hi = np.vstack(base).min(axis=0), np.vstack(base).max(axis=0)
    small_lo, small_hi = np.vstack(small).min(axis=0), np.vstack(small).max(axis=0)
    gap = rng.uniform(0.03, 0.2)
    if vertical_compound and rng.random() < vertical_compound:  # no draw at 0: samples as before
        shift = np.array([
            (base_lo[0] + base_hi[0]) / 2 + rng.uniform(-0.1, 0.2) - small_lo[0],  # right half
            base_lo[1] - gap - small_hi[1],
        ])
    else:
        shift = np.array([
            base_hi[0] + gap - small_lo[0],
            base_lo[1] + rng.uniform(-0.05, 0.12) - small_lo[1],  # bottoms roughly aligned
        ])
    return base + [s + shift for s in small], len(base)


def synthesize_sample(
    kana: KanaClass | str,
    rng: np.random.Generator,
    allowed_counts: tuple[int, ...] | None = None,
    order_slip: float = ORDER_SLIP,
    reversed_stroke: float = REVERSED_STROKE,
    small_marks: float = SMALL_MARKS,
    joined_marks: float = JOINED_MARKS,
    messiness: float | None = None,
    off_table_join: float = OFF_TABLE_JOINS,
    vertical_compound: float = VERTICAL_COMPOUNDS,
    off_table_split: float = OFF_TABLE_SPLITS,
    max_strokes: int | None = None,
) -> list[np.ndarray]:
    """One handwriting-like sample of a class (or of any KanjiVG character given as a str), in the
    app's raw convention: strokes of (N, 2) points, x, y in [-1, 1], y up. `order_slip`: the
    chance of two consecutive strokes in the wrong order, `reversed_stroke`: of one stroke drawn
    backwards (both 0: always the textbook order and directions), `small_marks`: of a voicing
    mark drawn small (0: KanjiVG's size, give or take the usual per-stroke scatter), `joined_marks`:
    of a ゛ written in one stroke (0: never; its table's count then is one stroke off),
    `messiness`: scales how far each stroke strays from its place and how much the character
    bends (2: twice as far; default: 1, or for a kana class, for MESSY_WRITERS of the samples,
    drawn between 1 and 2), `off_table_join`: for a kana class, the chance of two strokes
    joined where its table allows no fewer strokes (0: only the table's counts),
    `vertical_compound`: for a compound, the chance of its small kana written under the kana, as
    in vertical text (0: always at its lower right), `off_table_split`: for a kana class, the
    chance of one stroke lifted midway where its table allows no more strokes, only where the
    sample then has at most `max_strokes` (default: the most any class allows)."""
    if messiness is not None and not 0 <= messiness <= 4:
        raise ValueError(f"messiness must be between 0 and 4, got {messiness}")
    n_base = None
    fixed_tail = fixed_tail_strokes(kana)  # the mark and small kana: never joined off the table
    if isinstance(kana, str):
        strokes = [s.copy() for s in glyph_strokes(kana)]
    else:
        strokes, n_base = _template(kana, rng, vertical_compound)
        allowed_counts = allowed_counts or kana.stroke_counts
        if messiness is None and rng.random() < MESSY_WRITERS:
            messiness = rng.uniform(1.0, 2.0)
        if rng.random() < small_marks:
            strokes = resize_voicing_mark(strokes, kana.character, rng.uniform(1 / 3, 0.8))
        if (joined_marks and voicing_mark_strokes(kana.character[0]) == 2
                and rng.random() < joined_marks):  # no draw at 0 or without ゛: samples as before
            strokes = join_voicing_mark(strokes, kana.character)
            n_base = None if n_base is None else n_base - 1
            fixed_tail -= 1  # the ゛ is one stroke now
    if (not isinstance(kana, str) and kana.character in SPLIT_FORMS
            and len(strokes) + 1 in allowed_counts and rng.random() < 0.5):
        k = SPLIT_FORMS[kana.character]
        strokes = strokes[:k] + split_at_first_corner(strokes[k], rng) + strokes[k + 1 :]
        allowed_counts = (len(strokes),)  # not joined back
    if rng.random() < order_slip:
        strokes = _slip_order(strokes, rng, n_base)
    if rng.random() < reversed_stroke:
        k = int(rng.integers(len(strokes)))
        strokes[k] = strokes[k][::-1]
    strokes = [densify(s) for s in strokes]
    size = np.ptp(np.vstack(strokes), axis=0).max()
    messiness = 1.0 if messiness is None else messiness

    # per-stroke placement: shift, turn and scale about the stroke's centre
    placed = []
    for s in strokes:
        c = s.mean(axis=0)
        m = _rotation(rng.normal(0, 0.06 * messiness)) * rng.uniform(1 - 0.12 * messiness,
                                                                      1 + 0.12 * messiness)
        s = (s - c) @ m.T + c + rng.normal(0, 0.025 * messiness * size, 2)
        s = s + _smooth_noise(rng, len(s), 0.012 * messiness * size)
        placed.append(s)
    strokes = elastic_warp(rng, placed, 0.04 * messiness * size)

    # occasional hooks towards the next stroke, and joined strokes where the class allows it
    for i in range(len(strokes) - 1):
        if rng.random() < 0.12:
            strokes[i] = _hook(strokes[i], strokes[i + 1][0], rng)
    if allowed_counts:
        fewer = [k for k in allowed_counts if k < len(strokes)]
        joinable = len(strokes) - fixed_tail  # the kana's body
        if fewer and (len(strokes) not in allowed_counts or rng.random() < 0.35):
            strokes = join_strokes(strokes, int(rng.choice(fewer)), rng, keep_apart=n_base)
        elif (off_table_join and len(strokes) in allowed_counts  # not a ゛ joined off it already
              and len(strokes) - 1 not in allowed_counts and joinable > 1
              and rng.random() < off_table_join):
            strokes = join_strokes(strokes, len(strokes) - 1, rng, keep_apart=joinable)
    if (off_table_split and not isinstance(kana, str) and len(strokes) + 1 not in allowed_counts
            and len(strokes) + 1 <= (max_strokes or _most_strokes())
            and rng.random() < off_table_split):  # no draw at 0: samples as before
        strokes = split_stroke(strokes, rng, len(strokes) - fixed_tail)

    # the whole character: slant, shear, aspect, size and position on the canvas
    m = _rotation(rng.normal(0, 0.08)) @ np.array([[1.0, rng.normal(0, 0.12)], [0.0, 1.0]])
    m = m @ np.diag([rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)])
    allpts = np.vstack(strokes)
    centre = (allpts.min(axis=0) + allpts.max(axis=0)) / 2
    strokes = [(s - centre) @ m.T for s in strokes]
    allpts = np.vstack(strokes)
    extent = np.ptp(allpts, axis=0).max()
    target = rng.uniform(0.8, 1.85)  # the drawing spans 40%..92% of the canvas
    scale = target / max(extent, 1e-6)
    strokes = [s * scale for s in strokes]
    allpts = np.vstack(strokes)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    room_lo, room_hi = -0.98 - lo, 0.98 - hi
    shift = rng.uniform(np.minimum(room_lo, room_hi), np.maximum(room_lo, room_hi))
    strokes = [s + shift for s in strokes]

    # how it is recorded: a touch screen at a fixed rate, or a pen dictionary's turning points,
    # within 1.5-10% of the character's size of the path (log-uniform). On the basic 46 glyphs,
    # 10% leaves 3.6 points a stroke on average and 1.5% leaves 7.6; Tomoe's hand-entered
    # templates have 4.0, coarser than the 4.5 of the earlier upper end, 5%.
    if rng.random() < 0.25:
        tolerance = float(np.exp(rng.uniform(np.log(0.015), np.log(0.1)))) * size
        recorded = [turning_points(s, tolerance) for s in strokes]
    else:
        pace = float(np.exp(rng.uniform(np.log(0.01), np.log(0.12))))
        recorded = [record_stroke(rng, s, pace * rng.uniform(0.8, 1.25)) for s in strokes]
        if rng.random() < 0.5:  # touch-down often reported twice, as in the app's example
            recorded = [np.vstack([r[:1], r]) for r in recorded]
    return [np.clip(r, -1.0, 1.0) for r in recorded]


def synthesize_dataset(
    classes: list[KanaClass] | list[str], per_class: int, seed: int, max_strokes: int | None = None
) -> list[tuple[str, list[np.ndarray]]]:
    """`per_class` samples of each class (or KanjiVG character), as (label, strokes) pairs.
    `max_strokes`: a stroke is lifted midway only where the sample then has at most that many
    (the class set's most; default: the most any class allows).

    Each class gets its own Generator derived from (seed, CRC-32 of its label), so results do not
    depend on the order or subset of classes synthesized.
    """
    out = []
    for kana in classes:
        label = kana if isinstance(kana, str) else kana.char_id
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        for _ in range(per_class):
            out.append((label, synthesize_sample(kana, rng, max_strokes=max_strokes)))
    return out
