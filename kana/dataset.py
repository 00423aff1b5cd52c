"""The processed dataset: raw + synthetic samples -> validated, deduplicated, featurised, split.

`build_dataset` does the work; `preprocess` runs it as the MLflow entry point and logs the result
as artifacts of its run (so a crash or a half-written folder can never be picked up: training
only reads FINISHED preprocess runs); `load_dataset` reads it back for training by run id.

On disk (artifact folder `dataset/`):
- `arrays.npz`: `rasters` (N, 32, 32) uint8, `points` (total strokes, n_points, 2) float32 (every
  stroke resampled, ragged per sample through `offsets` (N + 1)), `labels` (N,), `split` (N,)
  with 0/1/2 = train/val/test;
- `manifest.csv`: one row per kept sample (source file, source, char_id, label, split) and one
  per rejected file or sample (with its reason and message);
- `dataset.json`: class set, class ids, feature settings, seed, counts and the content digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kana import features
from kana import classes as class_table
from kana.classes import KanaClass
from kana.strokes import (
    InvalidSample,
    LoadReport,
    RawSample,
    Rejection,
    check_raw_folder,
    check_stroke_count,
    describe_not_read,
    list_raw_files,
    load_raw_files,
    parse_strokes,
    sample_digest,
)
from kana.synth import synthesize_dataset

SPLITS = ("train", "val", "test")
# the fewest samples of one class from one source that give val one: round(5 * 0.1) is 0
SMALLEST_GROUP_WITH_VAL = 6
SYNTHETIC_SOURCE = "synthetic-kanjivg"
PARALLEL_MIN_SAMPLES = 2000  # below this, process start-up costs more than it saves
CHUNK_SAMPLES = 256  # samples (or raw files) a worker takes at a time


@dataclass
class ProcessedDataset:
    meta: dict
    rasters: np.ndarray
    points: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    manifest: pd.DataFrame

    @property
    def class_ids(self) -> list[str]:
        return self.meta["class_ids"]

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def resampled(self, i: int) -> np.ndarray:
        return self.points[self.offsets[i] : self.offsets[i + 1]]



def raster_batch_to_input(rasters: np.ndarray) -> np.ndarray:
    """uint8 rasters (N, H, W) -> float32 (N, H, W, 1) in [0, 1], what the CNNs take."""
    return (rasters.astype(np.float32) / 255.0)[..., None]


# --------------------------------------------------------------------------- building


def featurize(samples: list[list[np.ndarray]], n_points: int,
              max_gap: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Samples -> (resampled strokes float32, raster uint8) each: the features every model uses
    (the rasters drawn together; `max_gap`: see `features.resample_samples`)."""
    resampled = features.resample_samples(samples, n_points, max_gap)
    return list(zip(resampled, features.render_rasters(resampled)))


def _featurize_chunk(args):
    return featurize(*args)


@dataclass
class _Candidate:
    """A sample on its way into the dataset: its strokes until it is featurized, then its
    features; loaded samples come validated, with their digest and features, from the worker that
    read them."""

    path: str
    source: str
    char_id: str
    n_strokes: int
    strokes: list | None = None
    digest: str | None = None
    features: tuple[np.ndarray, np.ndarray] | None = None


def _dedupe_key(char_id: str, strokes) -> str:
    """Samples with the same key are one drawing: the first is kept, the others are duplicates."""
    return char_id + ":" + sample_digest(strokes)


def _load_chunk(args) -> tuple[list[_Candidate], list[Rejection]]:
    """Load, validate, digest and featurize some raw files: only the compact features travel
    back to the parent process, not the raw strokes (sending those cost as much as reading them)."""
    raw_dir, paths, class_ids, n_points, max_gap, max_strokes = args
    report = load_raw_files(raw_dir, paths, class_ids)
    out = [_Candidate(s.path, s.source, s.char_id, len(s.strokes), digest=_dedupe_key(s.char_id, s.strokes))
           for s in report.samples]
    # a sample over max_strokes gets no features: the parent refuses it, in order with the rest
    fits = [k for k, s in enumerate(report.samples) if len(s.strokes) <= max_strokes]
    fitting = [report.samples[k].strokes for k in fits]
    for k, f in zip(fits, featurize(fitting, n_points, max_gap)):
        out[k].features = f
    return out, report.rejections


def _load_raw(raw_dir: Path, class_ids: set[str], n_points: int, max_gap: float, max_strokes: int,
              workers: int, progress: bool) -> tuple[list[_Candidate], list[Rejection], list[str]]:
    """`load_raw_dir` and `featurize` of every raw file, the files shared among `workers`
    processes when there are many; and the files in no format read (see `list_raw_files`)."""
    paths, not_read = list_raw_files(raw_dir)
    tasks = [(raw_dir, paths[i : i + CHUNK_SAMPLES], class_ids, n_points, max_gap, max_strokes)
             for i in range(0, len(paths), CHUNK_SAMPLES)]
    lworkers = workers if len(paths) >= PARALLEL_MIN_SAMPLES else 1
    candidates, rejections = [], []
    for part, rejected in _map(_load_chunk, tasks, lworkers, progress and "loading"):
        candidates += part
        rejections += rejected
    return candidates, rejections, not_read


def _synthesize_chunk(args):
    classes, per_class, seed, max_strokes = args
    return synthesize_dataset(classes, per_class, seed, max_strokes)


def _map(fn, tasks: list, workers: int, progress: str | None):
    """Run fn over tasks, in `workers` processes when there are several, with a progress bar."""
    from rich.progress import track

    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(fn, tasks)
            return list(track(results, total=len(tasks), description=progress, disable=not progress))
    return [fn(t) for t in track(tasks, description=progress, disable=not progress)]


def split_per_source_and_class(
    sources: list[str], char_ids: list[str], seed: int, fractions=(0.7, 0.1, 0.2)
) -> np.ndarray:
    """Split codes 0/1/2 (train/val/test), 70/10/20 within every (source, class) group, seeded.

    Shuffles each group with its own Generator derived from the seed and the group's name, so a
    group's split does not change when other groups are added. Small groups fill train first.
    """
    import zlib

    out = np.zeros(len(sources), dtype=np.int8)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(sources, char_ids)):
        groups.setdefault(key, []).append(i)
    for (source, cid), members in groups.items():
        rng = np.random.default_rng([seed, zlib.crc32(f"{source}/{cid}".encode())])
        members = np.array(members)[rng.permutation(len(members))]
        n = len(members)
        n_test = int(round(n * fractions[2]))
        n_val = int(round(n * fractions[1]))
        out[members[n - n_test - n_val : n - n_test]] = 1
        out[members[n - n_test :]] = 2
    return out


def _synthetic_samples(classes, per_class, seed, max_strokes, workers, progress) -> list[RawSample]:
    if per_class <= 0:
        return []
    chunks = [classes[i :: max(workers, 1)] for i in range(max(workers, 1))]
    tasks = [(c, per_class, seed, max_strokes) for c in chunks if c]
    if len(classes) * per_class < PARALLEL_MIN_SAMPLES:
        workers = 1
    samples = []
    counters: Counter = Counter()
    for chunk in _map(_synthesize_chunk, tasks, workers, progress and "synthesizing"):
        for cid, strokes in chunk:
            k = counters[cid]
            counters[cid] += 1
            samples.append(RawSample(strokes, cid, SYNTHETIC_SOURCE, f"synthetic/{cid}{k:05d}"))
    samples.sort(key=lambda s: s.path)
    return samples


def check_dataset_params(synthetic_per_class: int, seed: int, max_gap: float,
                         n_points: int = features.N_POINTS, max_strokes: int | None = None,
                         workers: int | None = None) -> None:
    """ValueError naming the first parameter out of range (a negative count of synthetic samples
    made an empty dataset that training then picked up)."""
    if not max_gap >= 0:  # NaN too
        raise ValueError(f"max_gap must be 0 (off) or a positive share of the character's size, got {max_gap}")
    for name, value, least, meaning in (
        ("synthetic_per_class", synthetic_per_class, 0, "0 (raw samples alone) or more"),
        ("seed", seed, 0, "0 or more"),
        ("n_points", n_points, 2, "at least 2 (a stroke's direction needs two points)"),
        ("max_strokes", max_strokes or 0, 0, "0 (the class set's most strokes) or more"),
        ("workers", workers or 0, 0, "0 (one per core) or more"),
    ):
        if value < least:
            raise ValueError(f"{name} must be {meaning}, got {value}")


def build_dataset(
    raw_dir: str | Path | None,
    class_set: str = "all",
    synthetic_per_class: int = 480,
    seed: int = 127,
    n_points: int = features.N_POINTS,
    max_strokes: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    max_gap: float = features.MAX_GAP,
) -> tuple[ProcessedDataset, LoadReport]:
    """Everything before a model sees a sample. Never raises for bad samples: they are reported
    (in the manifest; the LoadReport returned holds what loading the raw files rejected); raises
    ValueError, naming the parameter, for a parameter out of range, before any work.
    `max_gap`: see `features.resample_samples` (0: the notebook's spline on the raw points)."""
    check_dataset_params(synthetic_per_class, seed, max_gap, n_points, max_strokes, workers)
    classes: list[KanaClass] = list(class_table.class_set(class_set))
    class_ids = [c.char_id for c in classes]
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    max_strokes = max_strokes or class_table.max_strokes(class_set)
    workers = workers or os.cpu_count() or 1

    loaded, load_rejections, not_read = (
        _load_raw(Path(raw_dir), set(class_ids), n_points, max_gap, max_strokes, workers, progress)
        if raw_dir else ([], [], []))
    rejections = list(load_rejections)
    candidates = []
    for s in _synthetic_samples(classes, synthetic_per_class, seed, max_strokes, workers, progress):
        try:  # synthetic samples pass the checks loading gave the others
            strokes = parse_strokes(s.strokes, s.path)
            check_stroke_count(strokes, s.char_id, s.path, one_off_ok=True)
        except InvalidSample as exc:
            rejections.append(Rejection(s.path, s.source, s.char_id, exc.reason, str(exc)))
            continue
        candidates.append(_Candidate(s.path, s.source, s.char_id, len(strokes), strokes,
                                     _dedupe_key(s.char_id, strokes)))

    kept: list[_Candidate] = []
    seen: dict[str, str] = {}
    for c in candidates + loaded:
        if c.n_strokes > max_strokes:
            rejections.append(Rejection(c.path, c.source, c.char_id, "too_many_strokes",
                                        f"{c.path}: {c.n_strokes} strokes > max_strokes {max_strokes}"))
        elif c.digest in seen:
            rejections.append(Rejection(c.path, c.source, c.char_id, "duplicate",
                                        f"{c.path}: same as {seen[c.digest]}"))
        else:
            seen[c.digest] = c.path
            kept.append(c)

    todo = [c for c in kept if c.features is None]
    tasks = [([c.strokes for c in todo[i : i + CHUNK_SAMPLES]], n_points, max_gap)
             for i in range(0, len(todo), CHUNK_SAMPLES)]
    fworkers = workers if len(todo) >= PARALLEL_MIN_SAMPLES else 1
    parts = _map(_featurize_chunk, tasks, fworkers, progress and "featurizing")
    for c, f in zip(todo, (f for part in parts for f in part)):
        c.features, c.strokes = f, None
    featurized = [c.features for c in kept]

    n = len(kept)
    size = features.RASTER_SIZE + 2 * features.RASTER_PAD
    rasters = np.zeros((n, size, size), dtype=np.uint8)
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i, (res, img) in enumerate(featurized):
        rasters[i] = img
        offsets[i + 1] = offsets[i] + len(res)
    points = (
        np.concatenate([r for r, _ in featurized]) if n else np.zeros((0, n_points, 2), np.float32)
    )
    labels = np.array([label_of[k.char_id] for k in kept], dtype=np.int64)
    split = split_per_source_and_class([k.source for k in kept], [k.char_id for k in kept], seed)

    manifest = pd.concat(
        [
            pd.DataFrame(
                {
                    "path": [k.path for k in kept],
                    "source": [k.source for k in kept],
                    "char_id": [k.char_id for k in kept],
                    "label": labels,
                    "split": [SPLITS[c] for c in split],
                    "n_strokes": [k.n_strokes for k in kept],
                    "reason": "",
                    "message": "",
                }
            ),
            pd.DataFrame(
                {
                    "path": [r.path for r in rejections],
                    "source": [r.source for r in rejections],
                    "char_id": [r.char_id or "" for r in rejections],
                    "label": -1,
                    "split": "",
                    "n_strokes": -1,
                    "reason": [r.reason for r in rejections],
                    "message": [r.message for r in rejections],
                }
            ),
        ],
        ignore_index=True,
    )
    meta = {
        "class_set": class_set,
        "class_ids": class_ids,
        "n_points": n_points,
        "max_gap": max_gap,
        "max_strokes": max_strokes,
        "raster_size": size,
        "seed": seed,
        "synthetic_per_class": synthetic_per_class,
        "n_samples_kept": n,
        "split_sizes": {name: int((split == i).sum()) for i, name in enumerate(SPLITS)},
        "dropped": dict(Counter(r.reason for r in rejections)),
    }
    ds = ProcessedDataset(meta, rasters, points, offsets, labels, split, manifest)
    ds.meta["digest"] = dataset_digest(ds)
    return ds, LoadReport(rejections=load_rejections, not_read=not_read)


def dataset_digest(ds: ProcessedDataset) -> str:
    h = hashlib.sha256()
    for arr in (ds.rasters, ds.points, ds.offsets, ds.labels, ds.split):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- saving and loading


def save_dataset(ds: ProcessedDataset, folder: str | Path) -> Path:
    """Write `ds` under `folder` (made if missing) as `read_dataset` reads it; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "arrays.npz",
        rasters=ds.rasters,
        points=ds.points,
        offsets=ds.offsets,
        labels=ds.labels,
        split=ds.split,
    )
    ds.manifest.to_csv(folder / "manifest.csv", index=False)
    (folder / "dataset.json").write_text(json.dumps(ds.meta, indent=2, ensure_ascii=False),
                                        encoding="utf-8")
    return folder


def read_dataset(folder: str | Path) -> ProcessedDataset:
    """The dataset `save_dataset` wrote under `folder`; ValueError if its arrays no longer match
    the digest it was saved with."""
    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    manifest = pd.read_csv(folder / "manifest.csv", keep_default_na=False)
    ds = ProcessedDataset(meta, manifest=manifest, **arrays)
    if dataset_digest(ds) != meta["digest"]:
        raise ValueError(f"dataset in {folder} does not match its digest: it is damaged")
    return ds


# --------------------------------------------------------------------------- the entry point


DEFAULT_RAW_DIR = "data/raw"


def check_raw_dir(raw_dir: str) -> None:
    """`check_raw_folder` for `raw_dir`, but the default may be absent (a fresh clone: synthetic
    samples alone)."""
    if Path(raw_dir) != Path(DEFAULT_RAW_DIR):
        check_raw_folder("raw_dir", raw_dir, "; leave it out for synthetic samples alone")
    elif os.path.lexists(raw_dir):
        check_raw_folder("raw_dir", raw_dir, "; move it away for synthetic samples alone")


def preprocess(
    raw_dir: str = DEFAULT_RAW_DIR,
    class_set: str = "all",
    synthetic_per_class: int = 480,
    seed: int = 127,
    n_points: int = features.N_POINTS,
    max_strokes: int = 0,
    workers: int = 0,
    max_gap: float = features.MAX_GAP,
) -> str:
    """MLflow entry point `preprocess`: build the dataset and log it, with its report, to a run.

    Returns the run id. The dataset becomes visible to training only when the run FINISHES, after
    every artifact is written, so a crash or a kill midway leaves nothing half-made to pick up.

    Parameters:

    - `raw_dir`: the folder of raw drawings, one subfolder per source (the formats kana reads:
      `data/README.md`); one that does not exist gives synthetic samples alone.
    - `class_set`: "basic46" (the 46 basic kana), "extended" (72: with the voiced and half-voiced
      ones) or "all" (108: with the compounds).
    - `synthetic_per_class`: samples of each class synthesized from KanjiVG, added to the raw ones
      (0: the raw ones alone).
    - `seed`: seeds the synthesis and the split: a seed gives the same dataset.
    - `n_points`: the points each stroke is resampled to (the notebook's 120).
    - `max_strokes`: the most strokes a sample may have, the LSTM's stroke slots (0: the most the
      class set's table allows).
    - `workers`: processes that load and resample the samples (0: one per core).
    - `max_gap`: before the spline, straight runs longer than this share of the character's size
      get points along them (0: the notebook's spline on the raw points; see
      `features.fill_long_gaps`).
    """
    import mlflow

    from kana import plots
    from kana.tracking import kana_run, log_dataset_input, log_figure_png, log_params, scratch_dir

    params = {
        "raw_dir": raw_dir,
        "class_set": class_set,
        "synthetic_per_class": synthetic_per_class,
        "seed": seed,
        "n_points": n_points,
        "max_gap": max_gap,
        "max_strokes": max_strokes or class_table.max_strokes(class_set),
    }
    check_dataset_params(synthetic_per_class, seed, max_gap, n_points, max_strokes, workers)
    check_raw_dir(raw_dir)
    with kana_run("preprocess", run_name=f"preprocess-{class_set}") as run:
        log_params(params)
        if raw_dir and not Path(raw_dir).is_dir():
            print(f"raw_dir {raw_dir!r} does not exist: using synthetic samples only")
            raw_dir = ""
        ds, loaded = build_dataset(
            raw_dir or None,
            class_set,
            synthetic_per_class,
            seed,
            n_points,
            params["max_strokes"],
            workers or None,
            max_gap=max_gap,
        )
        meta = ds.meta
        rejected = ds.manifest[ds.manifest.reason != ""]
        for row in rejected.itertuples():
            print(f"rejected {row.path}: {row.reason}: {row.message}")
        if loaded.not_read:
            print(describe_not_read(raw_dir, loaded.not_read))
            mlflow.log_text("\n".join(loaded.not_read) + "\n", "files_not_read.txt")
        mlflow.log_param("dataset_digest", meta["digest"])
        mlflow.log_metrics(
            {
                "n_samples_kept": meta["n_samples_kept"],
                "n_rejected": len(rejected),
                **{f"n_{k}": v for k, v in meta["split_sizes"].items()},
                **{f"dropped_{reason}": n for reason, n in meta["dropped"].items()},
                "n_sources": ds.manifest.loc[ds.manifest.reason == "", "source"].nunique(),
                "n_files_not_read": len(loaded.not_read),
            }
        )
        if not meta["n_samples_kept"]:  # fail the run: training takes the latest FINISHED dataset
            why = (f"{len(rejected)} rejected, each printed above" if len(rejected) else
                   f"no raw samples{f' in {raw_dir}' if raw_dir else ''}, synthetic_per_class 0")
            raise ValueError(f"preprocess kept no samples ({why}): nothing to train on")
        if not meta["split_sizes"]["val"]:  # else all three trainers ran and only register failed
            raise ValueError(
                f"preprocess made no validation samples (split {meta['split_sizes']}): a class's "
                f"samples from one source give validation one only from {SMALLEST_GROUP_WITH_VAL} "
                "on, and without a validation score no model can be chosen; set "
                f"synthetic_per_class to {SMALLEST_GROUP_WITH_VAL} or more")
        kept = ds.manifest[ds.manifest.reason == ""]
        counts = kept.groupby(["char_id", "split"]).size().unstack(fill_value=0)
        counts = counts.reindex(index=meta["class_ids"], columns=list(SPLITS), fill_value=0)
        with scratch_dir() as tmp:
            save_dataset(ds, tmp / "dataset")
            counts.to_csv(tmp / "per_class_counts.csv")
            if len(rejected):
                dropped = rejected.groupby(["reason", "char_id"]).size().rename("n").reset_index()
                dropped.to_csv(tmp / "dropped_per_reason_and_class.csv", index=False)
            mlflow.log_artifacts(str(tmp))
        log_figure_png(plots.class_balance_figure(counts), "class_balance.png")
        mlflow.log_image(_sample_grid(ds), "samples_grid.png")
        log_dataset_input(
            mlflow.data.from_numpy(
                ds.rasters, targets=ds.labels, name=f"kana-{class_set}", digest=meta["digest"]
            ),
            context="preprocess",
        )
        print(
            f"preprocess run {run.info.run_id}: kept {meta['n_samples_kept']} samples "
            f"({meta['split_sizes']}), rejected {len(rejected)}"
        )
        return run.info.run_id


def _sample_grid(ds: ProcessedDataset, per_source: int = 24):
    """Rendered samples, real sources first and synthetic beside them, captioned source/char_id."""
    from kana import plots

    kept = ds.manifest[ds.manifest.reason == ""].reset_index()
    picks = []
    for source, group in sorted(kept.groupby("source"), key=lambda g: g[0] == SYNTHETIC_SOURCE):
        picks += list(group["index"][:: max(1, len(group) // per_source)][:per_source])
    captions = [f"{kept.source[i][:6]}/{kept.char_id[i]}" for i in picks]
    return plots.image_grid([ds.rasters[i] for i in picks], captions)


def load_dataset(run_id: str | None = None) -> tuple[ProcessedDataset, str]:
    """The processed dataset of a preprocess run (default: the latest FINISHED one); a run named
    that is not a FINISHED preprocess run is refused by name (`finished_preprocess_run`)."""
    from kana.tracking import MissingArtifact, finished_preprocess_run, latest_finished_run, run_artifact

    if run_id:
        finished_preprocess_run(run_id)
    else:
        run = latest_finished_run("preprocess")
        if run is None:
            raise RuntimeError(
                "no FINISHED preprocess run found: run `mlflow run . -e preprocess --env-manager local` first"
            )
        run_id = run.info.run_id
    try:
        with run_artifact(run_id, "dataset") as folder:
            return read_dataset(folder), run_id
    except MissingArtifact as e:
        raise MissingArtifact(f"{e}: dataset_run_id must name a FINISHED preprocess run") from None
