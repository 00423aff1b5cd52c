"""All 108 classes drawn from real glyph shapes: Tomoe's hand-entered templates of the basic kana,
with voicing marks and compounds' small kana added, as raw app files and (optionally) read by a
model.

    python benchmarks/tomoe_composites.py --out /tmp/tomoe108                  # write the files
    python benchmarks/tomoe_composites.py --out /tmp/tomoe108 --model-uri models:/kana-classifier@champion
    mlflow run . -e main --env-manager local -P real_dir=/tmp/tomoe108          # real_* metrics on them

Why: the real samples at hand (`../shared/data/dev_real/tomoe_raw`) cover the 46 basic kana only,
and every synthetic sample, the check's included, starts from KanjiVG's glyphs. Here every sample
keeps the shape of a Tomoe template (a different hand and source than KanjiVG's), so the voiced
kana and the compounds, 62 of the 108 classes, get a check whose base shapes the models never saw:
- a basic kana: the Tomoe template as it is;
- a voiced kana (が, ぱ): the template of its base (か, は) with the mark's strokes from KanjiVG's
  voiced glyph, placed where KanjiVG places them relative to the base's bounding box and kept
  as their turning points, as Tomoe records (so the mark's shape is KanjiVG's; its size relative
  to the base is kept, or a third smaller);
- a compound (きゃ, ぎゅ): the sample of its first kana (as above for ぎ), then the Tomoe template of
  や / ゆ / よ shrunk to 45% or 65% of the first kana's size at its lower right, bottoms aligned,
  as the synthesizer lays out its compounds (a third to four fifths).
Each composite is then centred on the canvas with its longer side 80% of it. The strokes keep
Tomoe's turning points (2-9 points a stroke) and its drawing order. A check built from 47 real
templates, not real writing of these classes: it tells whether a voiced or compound class fails
when its base does not look like KanjiVG's. Files whose stroke count the app's table does not
allow for their class are written anyway and reported (the loader drops them, as for any raw
file).
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_TOMOE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "dev_real" / "tomoe_raw"
SMALL_SIZES = (0.45, 0.65)  # a compound's small kana, times its first kana's longer side
MARK_SIZES = (1.0, 2 / 3)  # a voicing mark, times its size relative to the base in KanjiVG
FULL_SIZE = {"ゃ": "や", "ゅ": "ゆ", "ょ": "よ"}


def _box(strokes) -> tuple[np.ndarray, np.ndarray]:
    pts = np.vstack(strokes)
    return pts.min(axis=0), pts.max(axis=0)


def with_voicing_mark(base: list[np.ndarray], voiced: str, mark_size: float) -> list[np.ndarray]:
    """`base` (a sample of the voiced kana's base) with KanjiVG's mark strokes of `voiced` added:
    each mark's centre put where it sits relative to KanjiVG's base box, its shape scaled as the
    two boxes' sizes compare (times `mark_size`)."""
    from kana.synth import glyph_strokes, turning_points, voicing_mark_strokes

    n_marks = voicing_mark_strokes(voiced)
    glyph = list(glyph_strokes(voiced))
    k_lo, k_hi = _box(glyph[:-n_marks])
    t_lo, t_hi = _box(base)
    per_axis = (t_hi - t_lo) / np.maximum(k_hi - k_lo, 1e-6)
    uniform = float(np.sqrt(per_axis.prod())) * mark_size
    marks = glyph[-n_marks:]
    centre = np.vstack(marks).mean(axis=0)
    new_centre = t_lo + (centre - k_lo) * per_axis
    placed = [(m - centre) * uniform + new_centre for m in marks]
    # recorded as Tomoe records: each stroke's turning points (within 4% of the character's size)
    tolerance = 0.04 * float((t_hi - t_lo).max())
    return [s.copy() for s in base] + [turning_points(m, tolerance) for m in placed]


def with_small_kana(first: list[np.ndarray], small: list[np.ndarray], size: float) -> list[np.ndarray]:
    """A compound: `first`, then `small` scaled to `size` times first's longer side at its lower
    right (a gap of a tenth of it, bottoms aligned)."""
    from kana.synth import normalised

    f_lo, f_hi = _box(first)
    extent = float((f_hi - f_lo).max())
    scaled = normalised(small, size * extent)
    shift = np.array([f_hi[0] + 0.1 * extent, f_lo[1]]) - _box(scaled)[0]
    return [s.copy() for s in first] + [s + shift for s in scaled]


def composites(tomoe_dir: Path) -> list[tuple[str, str, list[np.ndarray]]]:
    """(char_id, group, strokes) for every class of the `all` set that Tomoe's templates can make;
    group is "basic", "voiced" or "compound"."""
    from kana.classes import class_set
    from kana.strokes import load_raw_dir
    from kana.synth import normalised

    by_char: dict[str, list[list[np.ndarray]]] = {}
    char_of = {c.char_id: c.character for c in class_set("all")}
    report = load_raw_dir(tomoe_dir)
    for r in report.rejections:  # the rest are still used
        print(f"template skipped: {r.message}", file=sys.stderr)
    for s in report.samples:
        by_char.setdefault(char_of[s.char_id], []).append(s.strokes)

    def kana_samples(ch: str) -> list[list[np.ndarray]]:
        """Samples of one kana: its templates, or for a voiced kana its base's with each mark size."""
        if ch in by_char:
            return by_char[ch]
        base = unicodedata.normalize("NFD", ch)[0]
        return [with_voicing_mark(s, ch, m) for s in by_char.get(base, []) for m in MARK_SIZES]

    def on_canvas(strokes):  # centred, the longer side 80% of the canvas (which spans 2)
        return normalised(strokes, 1.6)

    out = []
    for c in class_set("all"):
        if c.is_compound:
            first, small = c.character[0], FULL_SIZE[c.character[1]]
            for f in kana_samples(first):
                for sm in by_char.get(small, []):
                    for size in SMALL_SIZES:
                        out.append((c.char_id, "compound", on_canvas(with_small_kana(f, sm, size))))
        else:
            group = "basic" if c.character in by_char else "voiced"
            out.extend((c.char_id, group, on_canvas(s)) for s in kana_samples(c.character))
    return out


def write_raw(samples, out_dir: Path) -> Counter:
    """Each sample as `<char_id><nnnnn>.pickle` in the app's format; counts per group."""
    from kana.strokes import save_app_pickle

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = Counter()
    for k, (cid, group, strokes) in enumerate(samples):
        save_app_pickle(strokes, out_dir / f"{cid}{k:05d}.pickle")
        groups[group] += 1
    return groups


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tomoe-dir", type=Path, default=DEFAULT_TOMOE)
    parser.add_argument("--out", type=Path, help="write the samples here as raw app files")
    parser.add_argument("--model-uri", help="read them with this kana pyfunc (e.g. models:/kana-classifier@champion)")
    args = parser.parse_args()
    if not args.tomoe_dir.is_dir():
        sys.exit(f"no Tomoe templates at {args.tomoe_dir} (--tomoe-dir)")
    from kana.classes import get_class

    samples = composites(args.tomoe_dir)
    off_table = [(cid, len(s)) for cid, _, s in samples if len(s) not in get_class(cid).stroke_counts]
    print(f"{len(samples)} samples of {len({c for c, _, _ in samples})} classes from {args.tomoe_dir}; "
          f"{len(off_table)} with a stroke count their class's table does not allow"
          + (": " + ", ".join(f"{c} ({n})" for c, n in sorted(set(off_table))) if off_table else ""))
    if args.out:
        groups = write_raw(samples, args.out)
        print(f"written to {args.out}: " + ", ".join(f"{g} {n}" for g, n in groups.items()))
    if args.model_uri:
        import mlflow

        from kana.serving import Recognizer

        recognizer = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model().recognizer
        readers = {"the model": recognizer}
        if len(getattr(recognizer, "members", ())) > 1:  # each member alone too (in process)
            readers.update({f"its {c.family}": Recognizer([(f, c)]) for f, c in recognizer.members})
        raw = [{i + 1: s for i, s in enumerate(strokes)} for _, _, strokes in samples]
        for name, reader in readers.items():
            print(f"\n== {name} ==")
            report(samples, reader.predict(raw))


def report(samples, records) -> None:
    """Accuracy per group (basic, voiced, compound; apart where the count is off the table), and
    every miss."""
    from kana.classes import get_class

    right, total = Counter(), Counter()
    misses = []
    for (cid, group, strokes), r in zip(samples, records):
        on = len(strokes) in get_class(cid).stroke_counts
        key = group if on else group + " (count off the table)"
        total[key] += 1
        right[key] += r["char_id"] == cid
        if r["char_id"] != cid:
            misses.append(f"{get_class(cid).character} read as {r['character']} "
                          f"({r['probability']:.2f}){'' if on else ', count off the table'}")
    for key in sorted(total):
        print(f"{key:36s} {right[key]:4d} / {total[key]:4d} = {right[key] / total[key]:.3f}")
    n_on = sum(total[k] for k in total if "off" not in k)
    r_on = sum(right[k] for k in total if "off" not in k)
    print(f"{'all on the table':36s} {r_on:4d} / {n_on:4d} = {r_on / max(n_on, 1):.3f}")
    print("misses: " + ("; ".join(misses) if misses else "none"))

if __name__ == "__main__":
    main()
