"""Preprocessing speed, measured against baselines in the same run.

    python benchmarks/bench_preprocess.py [--samples 3000]

Prints:
- stroke resampling: kana's cached-basis B-spline vs the notebook's geomdl loop on the same
  strokes (strokes/s each, the ratio, and the largest difference between them); and the same as
  preprocessing and serving run it, long gaps filled first (`resample_samples`), against geomdl's
  loop through the same filled points;
- whole preprocessing (load + validate + resample + raster; LSTM tensors are built from the stored
  resampled points at training time and are timed separately, a whole split at once and, as a
  baseline, one sample at a time), in samples/s, from raw app pickles on disk, with 1 worker and
  with every core; and the default CNN's inputs (the anti-aliased raster and the orientation
  maps, drawn from the stored resampled points at training time and for every served sample),
  a whole split at once and one sample at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kana.classes import class_set  # noqa: E402
from kana.dataset import CHUNK_SAMPLES, build_dataset  # noqa: E402
from kana.features import (  # noqa: E402
    ANTIALIAS,
    MAX_GAP,
    fill_long_gaps,
    lstm_tensor,
    resample_samples,
    resample_stroke,
    resample_stroke_geomdl,
)
from kana.strokes import save_app_pickle  # noqa: E402
from kana.synth import synthesize_dataset  # noqa: E402
from kana.training import CNN_DIRECTIONS, ModelConfig, dataset_inputs, model_inputs  # noqa: E402


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3240, help="raw samples for the whole-pipeline figure")
    args = parser.parse_args()
    classes = list(class_set("all"))
    per_class = max(1, args.samples // len(classes))
    print(f"machine: {os.cpu_count()} cores; synthesizing {per_class * len(classes)} raw samples...")
    samples = synthesize_dataset(classes, per_class, seed=2024)
    strokes = [s for _, sample in samples for s in sample]
    geomdl_strokes = strokes[:1500]

    t_geomdl = best_of(lambda: [resample_stroke_geomdl(s) for s in geomdl_strokes], repeats=1)
    t_kana = best_of(lambda: [resample_stroke(s) for s in strokes])
    worst = max(np.abs(resample_stroke(s) - resample_stroke_geomdl(s)).max() for s in geomdl_strokes)
    geomdl_rate = len(geomdl_strokes) / t_geomdl
    kana_rate = len(strokes) / t_kana
    print("\n== stroke resampling to 120 points (degree-3 B-spline) ==")
    print(f"notebook geomdl loop : {geomdl_rate:12,.0f} strokes/s  ({len(geomdl_strokes)} strokes)")
    print(f"kana cached basis    : {kana_rate:12,.0f} strokes/s  ({len(strokes)} strokes)")
    print(f"speed-up             : {kana_rate / geomdl_rate:12,.0f} x   (goal >= 100x)")
    print(f"max |kana - geomdl|  : {worst:12.2e}     (goal <= 1e-9)")
    filled = fill_long_gaps([sample for _, sample in samples], MAX_GAP)
    filled_strokes = [s for sample in filled for s in sample]
    n_geomdl = len(filled_strokes[:1500])
    t_geomdl_filled = best_of(lambda: [resample_stroke_geomdl(s) for s in filled_strokes[:1500]], repeats=1)
    chunks = [[sample for _, sample in samples[i : i + CHUNK_SAMPLES]]
              for i in range(0, len(samples), CHUNK_SAMPLES)]  # as preprocessing's workers get them
    t_filled = best_of(lambda: [resample_samples(chunk, 120, MAX_GAP) for chunk in chunks])
    ours = [r for sample in resample_samples([sample for _, sample in samples[:300]], 120, MAX_GAP) for r in sample]
    worst_filled = max(float(np.abs(r - resample_stroke_geomdl(f)).max())
                       for r, f in zip(ours, filled_strokes))
    geomdl_filled_rate, filled_rate = n_geomdl / t_geomdl_filled, len(strokes) / t_filled
    print(f"\n== the same, long gaps filled first (max_gap {MAX_GAP} of the character's size, as "
          "preprocessing and serving run it) ==")
    print(f"geomdl loop through the filled points : {geomdl_filled_rate:10,.0f} strokes/s  (the filling not timed)")
    print(f"kana, filling and spline              : {filled_rate:10,.0f} strokes/s  (batches of {CHUNK_SAMPLES} samples)")
    print(f"speed-up                              : {filled_rate / geomdl_filled_rate:10,.0f} x   "
          f"({filled_rate / geomdl_rate:,.0f} x the notebook's loop on the raw points above)")
    print(f"max |kana - geomdl|                   : {worst_filled:10.2e}     (kana's output is float32)")

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for k, (cid, sample) in enumerate(samples):
            save_app_pickle(sample, raw / f"src{k % 4}" / f"{cid}{k:06d}.pickle")
        print(f"\n== whole preprocessing of {len(samples)} raw app pickles "
              "(load, validate, dedupe, resample, raster, split) ==")
        for workers in sorted({1, os.cpu_count() or 1}):
            t = best_of(lambda: build_dataset(raw, "all", synthetic_per_class=0, workers=workers,
                                              progress=False), repeats=2)
            print(f"{workers} worker(s)          : {len(samples) / t:12,.0f} samples/s")
        ds, _ = build_dataset(raw, "all", synthetic_per_class=0, progress=False)
        idx = np.arange(len(ds.labels))
        lstm = ModelConfig.for_dataset("lstm", ds.meta)
        t = best_of(lambda: dataset_inputs(lstm, ds, idx), repeats=2)
        resampled = [ds.resampled(i) for i in idx]
        t1 = best_of(lambda: np.stack([lstm_tensor(r, lstm.max_strokes, lstm.fit_box) for r in resampled]),
                     repeats=2)
        print(f"LSTM tensors         : {len(idx) / t:12,.0f} samples/s (built at training time and in "
              f"serving's batches; one sample at a time: {len(idx) / t1:,.0f}/s)")
        cnn = dataclasses.replace(ModelConfig.for_dataset("cnn", ds.meta), raster_antialias=ANTIALIAS,
                                  directions=CNN_DIRECTIONS)
        t = best_of(lambda: dataset_inputs(cnn, ds, idx), repeats=2)
        t1 = best_of(lambda: [model_inputs(cnn, [r]) for r in resampled], repeats=2)
        print(f"CNN inputs           : {len(idx) / t:12,.0f} samples/s (train_cnn's: the raster drawn "
              f"{ANTIALIAS}x and its ink in {CNN_DIRECTIONS} orientations; one sample at a time, as "
              f"serving draws one: {len(idx) / t1:,.0f}/s)")
        t = best_of(lambda: synthesize_dataset(classes[:20], 20, seed=1), repeats=1)
        print(f"synthesis (1 core)   : {400 / t:12,.0f} samples/s")


if __name__ == "__main__":
    main()
