"""How the champion's members and their ensemble read synthetic samples redrawn the ways people
draw that training data rarely shows: small in a corner, with strokes in the wrong order, or with
a stroke drawn backwards.

    python benchmarks/check_robustness.py                              # the champion's members
    python benchmarks/check_robustness.py --run-ids RUN_ID [RUN_ID ...]  # any training runs
    python benchmarks/check_robustness.py --wrong-count-weight 1          # the stroke-count prior off
    python benchmarks/check_robustness.py --off-by-one-weight 0.1         # as models before 0.3 read

Fresh synthetic samples in the textbook stroke order (a seed training does not use, 3 per class
by default, all classes the models know), read by the Keras models each training run logged, one row per condition:
- as synthesized;
- the character drawn small in a corner: its longer side a quarter of the canvas' (top left),
  or 15% of it (bottom right);
- the last two strokes swapped (samples with at least two strokes), or all strokes shuffled, or
  (the last row but the messier writers, so that the rows above keep their samples) one stroke of
  the kana moved elsewhere in its order;
- one stroke, chosen at random, drawn backwards (from its end to its start);
- the voicing mark (゛ or ゜) a third of its size, or tapped (each of its strokes 1-3 points
  where it was), on the voiced samples only (が, ぱ, ぎゃ...);
- a compound's small kana (ゃ, ゅ, ょ) twice its size, nearly as big as the kana before it, or
  under the kana in the right half of its column, as vertical text sets it;
- recorded as a pen dictionary does, each stroke its turning points alone: the fewest points
  that stay within 4% of the character's size of its path, or within 8% (about 4 points a stroke
  on average, as in Tomoe's templates);
- recorded densely as a finger on a touch screen may be, a point every 0.25% of the canvas' width
  along each stroke, each point off by a jitter of sd 0.5% of the width, or every point on a grid
  of 200 pixels a side, or with its corners rounded as a quick hand rounds them (each stroke
  smoothed along its length, sd 4% of the character's size);
- a stroke count the class's table does not allow, which the models' stroke-count prior weighs
  against (`kana.classes.OFF_BY_ONE_WEIGHT`, as each is one stroke off): two strokes joined into
  one where the table allows no fewer (the closest pair, as a tenth of training's samples are
  joined, which in a ゛ kana is the mark's two ticks, as a tenth of training's ゛ are written; or
  any pair, chosen at random), or a stray dot (1-3 points) added, or the longest stroke lifted at
  its middle, where it allows no more;
- a messier writer: fresh samples (another seed) whose strokes stray twice or three times as far
  from their places, and whose characters bend as much more, as the synthesizer's usual writer
  (`synthesize_sample(messiness=...)`; training has a third of its samples at 1-2x).
A row that no sample of these classes fits (the voicing mark's and the small kana's, for
models of the basic 46) shows 0 samples and "-".
A synthetic check, not real handwriting: it tells which inputs a family depends on.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def placed(strokes, size: float, corner: tuple[int, int]):
    """The character scaled so its longer side is `size` (the canvas spans 2) and pushed into a
    corner."""
    pts = np.vstack(strokes)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = max(float((hi - lo).max()), 1e-6)
    offset = np.array(corner) * (0.98 - size / 2)
    return [np.clip((s - (lo + hi) / 2) / extent * size + offset, -1, 1) for s in strokes]


def conditions(rng: np.random.Generator, max_strokes: int = 9):
    """name -> change(strokes, class_id): the sample redrawn, or None where it does not apply."""
    from kana.classes import get_class
    from kana.synth import (densify, fixed_tail_strokes, glyph_strokes, join_strokes,
                            moved_stroke_order, resize_voicing_mark, turning_points,
                            voicing_mark_strokes)

    def changed_mark(s, cid, factor):
        """The voicing mark scaled by `factor`, or each of its strokes tapped (factor 0)."""
        character = get_class(cid).character
        unjoined = sum(len(glyph_strokes(c)) for c in character)  # the mark's strokes are known
        if not voicing_mark_strokes(character[0]) or len(s) != unjoined:
            return None
        if factor:
            return resize_voicing_mark(s, character, factor)
        end, n = len(glyph_strokes(character[0])), voicing_mark_strokes(character[0])
        taps = [m.mean(axis=0) + rng.normal(0, 0.005, (int(rng.integers(1, 4)), 2)) for m in s[end - n : end]]
        return s[: end - n] + taps + s[end:]

    def small_kana_strokes(s, cid):
        """How many of a compound's last strokes are its small kana; None for other classes and
        for samples with strokes joined (where its strokes are not known)."""
        kana = get_class(cid)
        if not kana.is_compound or len(s) != sum(len(glyph_strokes(c)) for c in kana.character):
            return None
        return len(glyph_strokes(kana.character[1]))

    def big_small_kana(s, cid):
        """A compound's small kana (its last strokes) twice its size, about its own centre."""
        n = small_kana_strokes(s, cid)
        if n is None:
            return None
        centre = np.vstack(s[-n:]).mean(axis=0)
        return s[:-n] + [np.clip((x - centre) * 2 + centre, -1, 1) for x in s[-n:]]

    def small_kana_under(s, cid):
        """A compound's small kana moved under the kana, in the right half of its column, as
        vertical text sets it (then the whole fitted back into the canvas)."""
        n = small_kana_strokes(s, cid)
        if n is None:
            return None
        base, small = np.vstack(s[:-n]), np.vstack(s[-n:])
        gap = 0.1 * np.ptp(base[:, 1])
        shift = np.array([(base[:, 0].min() + base[:, 0].max()) / 2 - small[:, 0].min(),
                          base[:, 1].min() - gap - small[:, 1].max()])
        moved = s[:-n] + [x + shift for x in s[-n:]]
        return placed(moved, min(float(np.ptp(np.vstack(moved), axis=0).max()), 1.9), (0, 0))

    def joined_off_table(s, cid):
        """The two strokes with the closest end-to-start gap joined, where the table allows no
        fewer strokes."""
        if len(s) - 1 in get_class(cid).stroke_counts:
            return None
        return join_strokes(s, len(s) - 1, rng)

    def stray_dot(s, cid):
        """A dot of 1-3 points near the ink, before a random stroke, where the table allows no
        more strokes (and the models' input has room for one)."""
        if len(s) + 1 in get_class(cid).stroke_counts or len(s) + 1 > max_strokes:
            return None
        pts = np.vstack(s)
        dot = pts[rng.integers(len(pts))] + rng.normal(0, 0.02, 2)
        k = int(rng.integers(len(s) + 1))
        return s[:k] + [np.clip(dot + rng.normal(0, 0.003, (int(rng.integers(1, 4)), 2)), -1, 1)] + s[k:]

    def joined_anywhere(s, cid):
        """Two consecutive strokes chosen at random (not the closest pair, as training's joins are)
        joined by a straight line, where the table allows no fewer strokes."""
        if len(s) - 1 in get_class(cid).stroke_counts:
            return None
        i = int(rng.integers(len(s) - 1))
        bridge = np.linspace(s[i][-1], s[i + 1][0], 8)[1:-1]
        return s[:i] + [np.vstack([s[i], bridge, s[i + 1]])] + s[i + 2 :]

    def lifted_midway(s, cid):
        """The longest stroke lifted at its middle (two strokes, one point apart), where the table
        allows no more strokes (and the models' input has room for one)."""
        if len(s) + 1 in get_class(cid).stroke_counts or len(s) + 1 > max_strokes:
            return None
        k = int(np.argmax([np.hypot(*np.diff(x, axis=0).T).sum() for x in s]))
        m = len(s[k]) // 2
        return None if m < 2 else s[:k] + [s[k][:m], s[k][m + 1 :]] + s[k + 1 :]

    def one_stroke_moved(s, cid):
        """One stroke of the kana's body, chosen at random, written at another place in its order
        (the voicing mark and a compound's small kana stay last): も with its two bars first."""
        order = moved_stroke_order(len(s), fixed_tail_strokes(get_class(cid)), rng)
        return None if order is None else [s[m] for m in order]

    jitter_rng = np.random.default_rng(2026)  # its own: the other rows keep their draws

    def recorded_densely(s, jitter: float = 0.0, grid: float = 0.0):
        """Each stroke re-recorded at a point every 0.005 along its path (0.25% of the canvas'
        width), each point moved by a normal jitter of sd `jitter`, or rounded to a grid of step
        `grid`."""
        out = []
        for x in s:
            dense = densify(x, step=0.005)
            if jitter:
                dense = dense + jitter_rng.normal(0, jitter, dense.shape)
            if grid:
                dense = np.round(dense / grid) * grid
            out.append(np.clip(dense, -1, 1))
        return out

    def corners_rounded(s, sd):
        """Each stroke as a quick hand draws it, its corners rounded: recorded densely (a point
        every 0.005) and smoothed along its length by a Gaussian of sd `sd` of the character's
        size, its ends held where they were."""
        size = float(np.ptp(np.vstack(s), axis=0).max())
        out = []
        for x in s:
            dense = densify(np.asarray(x, dtype=float), step=0.005)
            sd_points = sd * size / 0.005
            reach = int(np.ceil(3 * sd_points))
            if len(dense) < 3 or reach < 1:
                out.append(dense)
                continue
            kernel = np.exp(-0.5 * (np.arange(-reach, reach + 1) / sd_points) ** 2)
            held = np.vstack([np.repeat(dense[:1], reach, 0), dense, np.repeat(dense[-1:], reach, 0)])
            out.append(np.column_stack([np.convolve(held[:, k], kernel / kernel.sum(), mode="valid")
                                        for k in (0, 1)]))
        return out

    def corners_only(s, tolerance):
        """Each stroke as its turning points alone, within `tolerance` of the character's size."""
        size = float(np.ptp(np.vstack(s), axis=0).max())
        return [turning_points(x, tolerance * size) for x in s]

    everywhere = {
        "as synthesized": lambda s: s,
        "1/4 of the canvas, top left": lambda s: placed(s, 0.5, (-1, 1)),
        "15% of it, bottom right": lambda s: placed(s, 0.3, (1, -1)),
        "last two strokes swapped": lambda s: s[:-2] + [s[-1], s[-2]],
        "strokes shuffled": lambda s: [s[i] for i in rng.permutation(len(s))],
        "one stroke drawn backwards": lambda s: reversed_stroke(s, int(rng.integers(len(s)))),
        "turning points, 4%": lambda s: corners_only(s, 0.04),
        "turning points, 8%": lambda s: corners_only(s, 0.08),
        "dense, each point jittered 0.5%": lambda s: recorded_densely(s, jitter=0.01),
        "dense, on a 200-pixel grid": lambda s: recorded_densely(s, grid=0.01),
        "dense, corners rounded (sd 4%)": lambda s: corners_rounded(s, 0.04),
    }
    return {**{name: (lambda s, cid, f=f: f(s)) for name, f in everywhere.items()},
            "voicing mark 1/3 its size": lambda s, cid: changed_mark(s, cid, 1 / 3),
            "voicing mark tapped": lambda s, cid: changed_mark(s, cid, 0),
            "small kana twice its size": big_small_kana,
            "small kana under it (vertical text)": small_kana_under,
            "two strokes joined, off the table": joined_off_table,
            "a stray dot, off the table": stray_dot,
            "any two strokes joined, off table": joined_anywhere,
            "longest stroke lifted midway, off table": lifted_midway,
            "one stroke moved elsewhere": one_stroke_moved}


def reversed_stroke(strokes, k: int):
    """Stroke k drawn from its end to its start, as learners sometimes draw one."""
    return strokes[:k] + [strokes[k][::-1]] + strokes[k + 1 :]


def main():
    import mlflow
    from mlflow import MlflowClient

    from kana.classes import get_class
    from kana.serving import Recognizer, combine_probabilities
    from kana.synth import synthesize_sample
    from kana.training import ModelConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-ids", nargs="+", help="training runs (default: the champion's members)")
    parser.add_argument("--model-name", default="kana-classifier")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--wrong-count-weight", type=float,
                        help="the stroke-count prior's weight for every model and every count "
                             "off the table (default: each model's own; 1 turns it off)")
    parser.add_argument("--off-by-one-weight", type=float,
                        help="its weight for a count one stroke off a class's table, every model "
                             "(default: --wrong-count-weight if given, else each model's own)")
    args = parser.parse_args()

    client = MlflowClient()
    run_ids = args.run_ids or client.get_model_version_by_alias(
        args.model_name, "champion").tags["source_run_id"].split(",")
    members = {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        config = ModelConfig.from_json(mlflow.artifacts.load_text(f"runs:/{run_id}/kana_config.json"))
        if args.wrong_count_weight is not None:
            config = replace(config, wrong_count_weight=args.wrong_count_weight,
                             off_by_one_weight=args.wrong_count_weight)
        if args.off_by_one_weight is not None:
            config = replace(config, off_by_one_weight=args.off_by_one_weight)
        model = mlflow.keras.load_model(run.data.tags["kana.model_uri"])
        members[f"{run.data.tags['model_family']} {run_id[:6]}"] = Recognizer.from_keras([(model, config)])
    class_ids = next(iter(members.values())).config.class_ids

    rng = np.random.default_rng(2024)
    textbook = {"order_slip": 0.0, "reversed_stroke": 0.0, "small_marks": 0.0, "joined_marks": 0.0,
                "messiness": 1.0, "off_table_join": 0.0, "vertical_compound": 0.0, "off_table_split": 0.0}
    base = [(cid, synthesize_sample(get_class(cid), rng, **textbook))
            for cid in class_ids for _ in range(args.per_class)]
    base = [(cid, list(s)) for cid, s in base if len(s) > 1]  # order conditions need two strokes
    labels = np.array(class_ids)
    print(f"{len(base)} synthetic samples of {len(class_ids)} classes (seed 2024, samples with >= 2 strokes)")
    names = list(members) + (["ensemble"] if len(members) > 1 else [])
    print(f"{'condition':40s}{'samples':>8s}" + "".join(f"{n:>18s}" for n in names))

    def print_row(label: str, samples: list, truth: list[str]) -> None:
        if not samples:  # a condition none of these classes has (a voicing mark, a small kana)
            print(f"{label:40s}{0:8d}" + "".join(f"{'-':>18s}" for _ in names))
            return
        probs = {n: r.probabilities(samples) for n, r in members.items()}
        if len(members) > 1:
            probs["ensemble"] = combine_probabilities(list(probs.values()))
        print(f"{label:40s}{len(samples):8d}"
              + "".join(f"{np.mean(labels[p.argmax(1)] == truth):18.3f}" for p in probs.values()))

    max_strokes = min(r.config.max_strokes for r in members.values())
    for label, change in conditions(rng, max_strokes).items():
        changed = [(cid, change(s, cid)) for cid, s in base]
        print_row(label, [c for _, c in changed if c is not None],
                  [cid for cid, c in changed if c is not None])
    for messiness in (2.0, 3.0):
        messy_rng = np.random.default_rng(2025)
        writer = {**textbook, "messiness": messiness}
        messy = [(cid, synthesize_sample(get_class(cid), messy_rng, **writer))
                 for cid in class_ids for _ in range(args.per_class)]
        print_row(f"a messier writer, {messiness:g}x", [s for _, s in messy],
                  [cid for cid, _ in messy])


if __name__ == "__main__":
    main()
