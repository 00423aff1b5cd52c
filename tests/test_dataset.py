"""Preprocessing without MLflow: splits, deduplication, features, saving and loading."""

import numpy as np
import pytest

from kana.dataset import (SMALLEST_GROUP_WITH_VAL, build_dataset, read_dataset, save_dataset,
                          split_per_source_and_class)
from kana.strokes import save_app_pickle
from kana.synth import synthesize_sample
from kana.classes import get_class


def test_split_is_70_10_20_within_every_source_and_class_and_seeded():
    sources = ["a"] * 100 + ["b"] * 50 + ["a"] * 10
    ids = ["ka"] * 100 + ["ka"] * 50 + ["ki"] * 10
    split = split_per_source_and_class(sources, ids, seed=127)
    for lo, hi, n in ((0, 100, 100), (100, 150, 50), (150, 160, 10)):
        counts = np.bincount(split[lo:hi], minlength=3)
        assert counts.tolist() == [round(n * 0.7), round(n * 0.1), round(n * 0.2)]
    assert np.array_equal(split, split_per_source_and_class(sources, ids, seed=127))
    assert not np.array_equal(split, split_per_source_and_class(sources, ids, seed=1))
    # adding another group does not move anyone in the existing groups
    more = split_per_source_and_class(sources + ["c"] * 5, ids + ["ka"] * 5, seed=127)
    assert np.array_equal(more[:160], split)


def test_single_sample_groups_go_to_train():
    assert split_per_source_and_class(["x"], ["a"], seed=0).tolist() == [0]


def test_val_gets_its_first_sample_from_a_group_of_six():
    val_sizes = [int((split_per_source_and_class(["x"] * n, ["a"] * n, seed=0) == 1).sum())
                 for n in range(1, 9)]
    assert val_sizes == [0, 0, 0, 0, 0, 1, 1, 1]  # round(0.5) is 0: a group of 5 gives val none
    assert val_sizes.index(1) + 1 == SMALLEST_GROUP_WITH_VAL  # the size preprocess asks for


@pytest.fixture
def raw_dir(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(4):
        save_app_pickle(synthesize_sample(get_class("ku"), rng), tmp_path / "bob" / f"ku{i}.pickle")
    dup = synthesize_sample(get_class("i"), rng)
    save_app_pickle(dup, tmp_path / "bob" / "i1.pickle")
    save_app_pickle(dup, tmp_path / "carol" / "i1-copy.pickle")  # same drawing, other folder
    save_app_pickle(dup[:1], tmp_path / "carol" / "i2.pickle")  # wrong stroke count
    (tmp_path / "carol" / "ka1.pickle").write_bytes(b"truncated")
    return tmp_path


def test_build_dataset_mixes_real_and_synthetic_and_reports_every_rejection(raw_dir):
    ds, _ = build_dataset(raw_dir, "basic46", synthetic_per_class=3, seed=1, progress=False)
    m = ds.manifest
    kept = m[m.reason == ""]
    assert len(kept) == ds.meta["n_samples_kept"] == 46 * 3 + 4 + 1
    assert set(kept.source) == {"synthetic-kanjivg", "bob"}
    assert dict(m[m.reason != ""].set_index("path").reason) == {
        "carol/i1-copy.pickle": "duplicate",
        "carol/i2.pickle": "wrong_stroke_count",
        "carol/ka1.pickle": "unreadable",
    }
    assert ds.meta["dropped"] == {"duplicate": 1, "wrong_stroke_count": 1, "unreadable": 1}
    # the synthesizer's off-table joins are kept (carol's い with one stroke fewer is not)
    synthetic = kept[kept.source == "synthetic-kanjivg"]
    joined = [n not in get_class(c).stroke_counts and n + 1 in get_class(c).stroke_counts
              for c, n in zip(synthetic.char_id, synthetic.n_strokes)]
    assert 3 <= sum(joined) <= 30
    assert ds.rasters.shape == (len(kept), 32, 32)
    assert ds.points.shape == (ds.offsets[-1], 120, 2)
    assert ds.points.dtype == np.float32
    from kana.training import ModelConfig, dataset_inputs

    lstm = dataset_inputs(ModelConfig.for_dataset("lstm", ds.meta), ds, np.arange(3))
    cnn = dataset_inputs(ModelConfig.for_dataset("cnn", ds.meta), ds, np.arange(3))
    assert lstm.shape == (3, 120, 4 * 4)  # basic46: at most 4 strokes
    assert cnn.shape == (3, 32, 32, 1) and cnn.max() <= 1.0


def test_dataset_round_trip_and_damage_detection(raw_dir, tmp_path):
    ds, _ = build_dataset(raw_dir, "basic46", synthetic_per_class=1, seed=1, progress=False)
    folder = save_dataset(ds, tmp_path / "out")
    back = read_dataset(folder)
    assert back.meta == ds.meta
    assert np.array_equal(back.rasters, ds.rasters) and np.array_equal(back.points, ds.points)
    as_text = save_dataset(ds, str(tmp_path / "as_text"))  # a folder given as text, as a user types it
    assert as_text == tmp_path / "as_text"
    assert read_dataset(str(as_text)).meta == ds.meta
    arrays = dict(np.load(folder / "arrays.npz"))
    arrays["labels"] = arrays["labels"][::-1].copy()
    np.savez(folder / "arrays.npz", **arrays)
    with pytest.raises(ValueError, match="damaged"):
        read_dataset(folder)


def test_parallel_and_serial_preprocessing_agree():
    a, _ = build_dataset(None, "basic46", synthetic_per_class=50, seed=3, workers=1, progress=False)
    b, _ = build_dataset(None, "basic46", synthetic_per_class=50, seed=3, workers=2, progress=False)
    assert a.meta["digest"] == b.meta["digest"]


def test_raw_files_read_by_several_workers_give_the_same_dataset(raw_dir, monkeypatch):
    """Loading, validating and featurizing raw files in worker processes (as for large folders)
    keeps every sample, rejection and reason in the order one process gives."""
    import kana.dataset

    rng = np.random.default_rng(9)
    for i in range(12):  # more files, with one over the max_strokes below
        save_app_pickle(synthesize_sample(get_class("ki" if i % 4 else "ke"), rng),
                        raw_dir / "dave" / f"{'ki' if i % 4 else 'ke'}{i}.pickle")
    serial, _ = build_dataset(raw_dir, "basic46", synthetic_per_class=1, seed=1, max_strokes=3,
                              workers=1, progress=False)
    monkeypatch.setattr(kana.dataset, "PARALLEL_MIN_SAMPLES", 1)
    monkeypatch.setattr(kana.dataset, "CHUNK_SAMPLES", 3)  # several chunks per worker
    parallel, _ = build_dataset(raw_dir, "basic46", synthetic_per_class=1, seed=1, max_strokes=3,
                                workers=2, progress=False)
    assert parallel.meta == serial.meta
    assert parallel.manifest.equals(serial.manifest)
    assert np.array_equal(parallel.rasters, serial.rasters) and np.array_equal(parallel.points, serial.points)
    reasons = set(serial.manifest.reason)
    assert {"", "duplicate", "wrong_stroke_count", "unreadable", "too_many_strokes"} <= reasons


def test_every_sample_is_resampled_with_the_datasets_gap_filling(raw_dir, monkeypatch):
    """Loaded files (read in workers, as large folders are) and synthetic samples alike get the
    gap filling asked for, and the dataset records it for the models trained on it."""
    import kana.dataset
    from kana.features import resample_for_model
    from kana.strokes import load_pickle_sample

    monkeypatch.setattr(kana.dataset, "PARALLEL_MIN_SAMPLES", 1)
    points = {}
    for gap in (0.0, 0.05):
        ds, _ = build_dataset(raw_dir, "basic46", synthetic_per_class=1, seed=1, workers=2,
                              progress=False, max_gap=gap)
        assert ds.meta["max_gap"] == gap
        kept = ds.manifest[ds.manifest.reason == ""].reset_index(drop=True)
        loaded = kept.index[kept.source != kana.dataset.SYNTHETIC_SOURCE]
        assert len(loaded) and len(loaded) < len(kept)
        for i in loaded:
            strokes = load_pickle_sample(raw_dir / kept.path[i])
            np.testing.assert_array_equal(ds.points[ds.offsets[i] : ds.offsets[i + 1]],
                                          resample_for_model(strokes, 120, gap))
        points[gap] = ds.points
    assert not np.array_equal(points[0.05], points[0.0])


@pytest.mark.parametrize("gap", [-0.02, float("nan")])
def test_a_gap_that_is_not_a_share_of_the_size_is_refused_by_name(gap):
    with pytest.raises(ValueError, match="max_gap"):
        build_dataset(None, "basic46", synthetic_per_class=1, seed=1, progress=False, max_gap=gap)


@pytest.mark.parametrize("change, message", [
    ({"synthetic_per_class": -1}, "synthetic_per_class must be 0 (raw samples alone) or more, got -1"),
    ({"seed": -1}, "seed must be 0 or more, got -1"),
    ({"n_points": 1}, "n_points must be at least 2"),
    ({"max_strokes": -1}, "max_strokes must be 0 (the class set's most strokes) or more, got -1"),
    ({"workers": -3}, "workers must be 0 (one per core) or more, got -3"),
])
def test_a_parameter_out_of_range_is_refused_by_name(change, message):
    with pytest.raises(ValueError) as exc:
        build_dataset(None, "basic46", **{"synthetic_per_class": 1, "seed": 1, "progress": False, **change})
    assert message in str(exc.value)
