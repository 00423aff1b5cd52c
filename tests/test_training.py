"""Training helpers without training: data loaders, class weights, model builders, config."""

import re
from dataclasses import replace

import numpy as np
import pytest

from kana.classes import get_class
from kana.training import ModelConfig, balanced_class_weights, load_kuzushiji_npz


def test_kuzushiji49_loader_reads_the_published_layout(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 3, 48, 3, 1, 0, 2], dtype=np.uint8)
    np.savez_compressed(tmp_path / "k49-train-imgs.npz", arr_0=imgs)
    np.savez_compressed(tmp_path / "k49-train-labels.npz", arr_0=labels)
    rasters, y, n_classes = load_kuzushiji_npz(tmp_path)
    assert rasters.shape == (7, 32, 32) and rasters.dtype == np.uint8
    np.testing.assert_array_equal(rasters[:, 2:30, 2:30], imgs)  # padded like kana's rasters
    assert not rasters[:, :2].any() and not rasters[:, :, 30:].any()
    assert y.tolist() == labels.tolist() and n_classes == 49


def test_kuzushiji49_loader_names_what_is_missing_or_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="k49-train-imgs.npz"):
        load_kuzushiji_npz(tmp_path)
    np.savez(tmp_path / "k49-train-imgs.npz", arr_0=np.zeros((3, 28, 27), np.uint8))
    labels = tmp_path / "k49-train-labels.npz"
    np.savez(labels, arr_0=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="expected \\(N, 28, 28\\)"):
        load_kuzushiji_npz(tmp_path)
    np.savez(tmp_path / "k49-train-imgs.npz", arr_0=np.zeros((3, 28, 28), np.uint8))
    for wrong, got in ((np.array([0, -1, 2]), "int64 of shape \\(3,\\), lowest -1"),
                       (np.zeros(0, np.uint8), "uint8 of shape \\(0,\\)"),
                       (np.array([0.5, 1.0, 2.0]), "float64 of shape \\(3,\\)")):
        np.savez(labels, arr_0=wrong)
        with pytest.raises(ValueError, match=f"^{re.escape(str(labels))}: expected one class number "
                                             f"\\(an integer from 0\\) per image, got {got}$"):
            load_kuzushiji_npz(tmp_path)
    not_kuzushiji = f"^{re.escape(str(labels))}: expected an .npz file with an array 'arr_0' "
    np.savez(labels, labels=np.zeros(3, np.uint8))  # saved under another name
    with pytest.raises(ValueError, match=not_kuzushiji):
        load_kuzushiji_npz(tmp_path)
    labels.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=not_kuzushiji):
        load_kuzushiji_npz(tmp_path)


def test_balanced_class_weights_match_sklearn_and_cover_absent_classes():
    y = np.array([0, 0, 0, 1, 2, 2])
    w = balanced_class_weights(y, 4)
    assert w == pytest.approx({0: 6 / (3 * 3), 1: 6 / (3 * 1), 2: 6 / (3 * 2), 3: 1.0})


def test_transfer_freezes_whole_blocks_and_replaces_the_head():
    from kana.models import build_cnn, build_transfer

    base = build_cnn(30)
    model = build_transfer(base, 46, frozen_blocks=2)
    pools = [i for i, layer in enumerate(model.layers) if "pooling" in layer.name]
    assert [layer.trainable for layer in model.layers[: pools[1] + 1]] == [False] * (pools[1] + 1)
    assert all(layer.trainable for layer in model.layers[pools[1] + 1 :])
    assert model.output_shape == (None, 46)
    assert model.layers[0] is base.layers[0]  # the base's trained layers, not copies


def test_transfer_refuses_frozen_blocks_beyond_the_base_s_blocks_below_zero_or_not_whole():
    """Freezing past the base's last block froze the new head too: the run trained nothing and
    ended with a head of random weights, Keras only warning. A negative count froze nothing, and
    1.5 froze two blocks while the run logged 1.5."""
    from kana.models import build_cnn, build_transfer

    base = build_cnn(30, filters=4)
    all_frozen = build_transfer(base, 46, frozen_blocks=3)
    assert [layer.name for layer in all_frozen.layers if layer.trainable_weights] == ["head_dense",
                                                                                      "head_softmax"]
    with pytest.raises(ValueError, match="^frozen_blocks: the base has 3 convolution blocks, got 4 "):
        build_transfer(base, 46, frozen_blocks=4)
    for asked in (-1, 1.5, float("nan")):
        expected = f"frozen_blocks: expected a whole number from 0 to 3 (the base's convolution blocks), got {asked}"
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            build_transfer(base, 46, frozen_blocks=asked)
    assert build_transfer(base, 46, frozen_blocks=np.int64(1)).layers[0].trainable is False


def test_model_builders_accept_the_notebooks_settings():
    from kana.models import build_cnn, build_lstm

    cnn = build_cnn(46, dense_units=40, batch_norm=False)
    assert [layer.__class__.__name__ for layer in cnn.layers].count("Conv2D") == 6
    assert cnn.count_params() == 370_278  # the notebook's model summary
    lstm = build_lstm(46, 120, 160, units=400, dense_units=40, downsample=1)
    assert lstm.count_params() == 915_526  # the notebook's model summary


def test_model_config_round_trip():
    config = ModelConfig("lstm", "strokes", ["a", "i"], 120, 4, "basic46", "run1", max_gap=0.02)
    assert ModelConfig.from_json(config.to_json()) == config


def test_a_cnn_reads_rasters_of_its_own_size_and_older_configs_read_32_pixels():
    """Stored 32-pixel rasters are used as they are by a 32-pixel CNN and drawn anew, the same
    character filling the larger box, for one trained on 48; configs from before the setting
    existed read 32."""
    import json

    from kana.dataset import featurize
    from kana.synth import synthesize_sample
    from kana.training import model_inputs

    samples = [synthesize_sample(get_class(c), np.random.default_rng(3)) for c in ("a", "ke")]
    resampled, rasters = zip(*featurize(samples, 120, 0.0))
    rasters = np.stack(rasters)
    config = ModelConfig("cnn", "raster", ["a", "ke"], 120, 3, "basic46")
    np.testing.assert_array_equal(model_inputs(config, list(resampled), rasters)[..., 0], rasters / 255.0)
    big = model_inputs(replace(config, raster_size=48), list(resampled), rasters)
    assert big.shape == (2, 48, 48, 1)
    for small_img, big_img in zip(rasters, big[..., 0]):
        # the ink spans the box less the padding (2 pixels a side) at either size
        for img, side in ((small_img, 32), (big_img, 48)):
            rows, cols = np.nonzero(img)
            assert max(np.ptp(rows), np.ptp(cols)) == side - 4 - 1
    older = json.loads(config.to_json())
    del older["raster_size"]
    assert ModelConfig.from_json(json.dumps(older)).raster_size == 32


def test_an_anti_aliased_cnn_gets_its_rasters_drawn_anew_and_older_configs_read_them_plain():
    """A dataset stores the notebook's rasters (pixels on or off): a CNN trained on anti-aliased
    ones is given those, drawn from the same strokes, also for its order channel; a config from
    before the setting existed reads the stored ones, as it was trained."""
    import json

    from kana.dataset import featurize
    from kana.features import render_direction_rasters, render_order_raster, render_rasters
    from kana.synth import synthesize_sample
    from kana.training import model_inputs

    samples = [synthesize_sample(get_class(c), np.random.default_rng(5)) for c in ("pa", "ke")]
    resampled, rasters = zip(*featurize(samples, 120, 0.0))
    resampled, rasters = list(resampled), np.stack(rasters)
    config = ModelConfig("cnn", "raster", ["pa", "ke"], 120, 4, "basic46", raster_antialias=4)
    smooth = model_inputs(config, resampled, rasters)
    np.testing.assert_array_equal(smooth[..., 0], render_rasters(resampled, antialias=4) / np.float32(255))
    assert len(np.unique(smooth)) > 2 and len(np.unique(rasters)) == 2  # grey levels against on / off
    both = model_inputs(replace(config, stroke_order=True), resampled, rasters)
    np.testing.assert_array_equal(both[..., 0], smooth[..., 0])
    for k in (0, 1):  # drawn as a batch (other stroke counts, one image redrawn): as drawn alone
        np.testing.assert_array_equal(both[k, ..., 1], render_order_raster(resampled[k], antialias=4) / np.float32(255))
    assert model_inputs(replace(config, stroke_order=True), [], None).shape == (0, 32, 32, 2)  # an empty split
    oriented = model_inputs(replace(config, stroke_order=True, directions=8), resampled, rasters)
    np.testing.assert_array_equal(oriented[..., :2], both)  # the direction channels after the others
    np.testing.assert_array_equal(oriented[..., 2:], render_direction_rasters(resampled, 8))
    older = json.loads(config.to_json())
    del older["raster_antialias"]
    older = ModelConfig.from_json(json.dumps(older))
    assert older.raster_antialias == 1 and older.input_key != config.input_key
    np.testing.assert_array_equal(model_inputs(older, resampled, rasters)[..., 0], rasters / np.float32(255))


@pytest.mark.parametrize("antialias", [0, 9])
def test_a_drawing_scale_the_cnns_cannot_take_is_refused_before_training(antialias):
    from kana.training import train_cnn, train_transfer

    for train in (train_cnn, train_transfer):  # no dataset needed: refused first
        with pytest.raises(ValueError, match="^antialias must be 1-8"):
            train(antialias=antialias)


@pytest.mark.parametrize("directions", [-4, 2, 6])
def test_an_orientation_count_the_cnns_cannot_take_is_refused_before_training(directions):
    from kana.training import train_cnn, train_transfer

    for train in (train_cnn, train_transfer):  # no dataset needed: refused first
        with pytest.raises(ValueError, match=f"^directions must be one of \\(4, 8\\), got {directions}"):
            train(directions=directions)


def test_orientation_channels_for_a_base_trained_on_images_are_refused_by_name(tmp_path):
    from kana.training import train_transfer

    with pytest.raises(ValueError, match=f"^directions=4 needs a base trained on KanjiVG's strokes, "
                                         f"not base_source='{tmp_path}'"):
        train_transfer(base_source=str(tmp_path), directions=4)


def _logged_base(base, tmp_path, use_tracking_store):
    """`base` logged in a run of a tracking store of its own, as a user's `base_model_uri` names
    it: its ModelInfo and the experiment the run is in."""
    import mlflow

    use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.MlflowClient().create_experiment("bases", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        return mlflow.keras.log_model(base, name="base"), experiment


def test_a_given_base_without_the_orientation_channels_is_refused_by_name(tmp_path, use_tracking_store):
    from kana.models import build_cnn
    from kana.training import train_transfer

    # a base of the raster alone, as train_transfer's default
    info, _ = _logged_base(build_cnn(5, (32, 32, 1), filters=4), tmp_path, use_tracking_store)
    with pytest.raises(ValueError, match=f"^base_model_uri {info.model_uri} takes 1 input channels; "
                                         "directions=4 needs 5"):
        train_transfer(base_model_uri=info.model_uri, directions=4)


def test_freezing_more_blocks_than_a_given_base_has_is_refused_before_any_run(tmp_path, use_tracking_store):
    import keras
    import mlflow

    from kana.training import train_transfer

    two_blocks = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(4, 3), keras.layers.MaxPooling2D(),
                                   keras.layers.Conv2D(4, 3), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                                   keras.layers.Dense(8), keras.layers.Dense(5, activation="softmax")])
    info, experiment = _logged_base(two_blocks, tmp_path, use_tracking_store)
    with pytest.raises(ValueError, match="^frozen_blocks: the base has 2 convolution blocks, got 3 "):
        train_transfer(base_model_uri=info.model_uri, frozen_blocks=3)
    assert [r.info.run_id for r in mlflow.search_runs(experiment_ids=[experiment], output_format="list")] == [
        info.run_id]


def test_a_registry_that_cannot_be_searched_is_named_before_a_base_is_trained(monkeypatch, tmp_path,
                                                                              use_tracking_store):
    """Not read as "no base yet": the base trained in its place could not be registered either.
    The registry here is a store of its own, as `MLFLOW_REGISTRY_URI` makes it, that is down."""
    from mlflow.exceptions import MlflowException

    from conftest import free_port
    from kana.training import train_transfer

    registry = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry)  # the environment, left as it was after
    with pytest.raises(MlflowException, match=f"^cannot search the model registry \\({registry}\\) "
                                              "for a 'kana-kanji-base' to reuse: API request to "):
        train_transfer(dataset_run_id="not needed: refused first")


@pytest.mark.parametrize("size", [8, 15, 129])
def test_a_raster_size_outside_what_the_cnn_can_take_is_refused_by_name(size):
    from kana.training import train_cnn

    from kana.pipeline import main

    with pytest.raises(ValueError, match="^raster_size"):
        train_cnn(raster_size=size)
    with pytest.raises(ValueError, match="^cnn_raster_size"):  # before main preprocesses anything
        main(cnn_raster_size=size)


def assert_every_step_refuses(folder, why: str):
    """Each step given `folder` as its real_dir or raw_dir refuses it, saying `why`, before it
    needs a dataset or a store."""
    from kana.dataset import preprocess
    from kana.pipeline import main
    from kana.training import train_cnn, train_lstm, train_transfer

    for param, steps in (("real_dir", (train_cnn, train_lstm, train_transfer, main)),
                         ("raw_dir", (preprocess, main))):
        for step in steps:
            with pytest.raises(ValueError, match=f"^{param} '{folder}' {why}"):
                step(**{param: str(folder)})


def test_a_raw_or_real_dir_that_is_no_folder_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from kana.dataset import check_raw_dir

    (tmp_path / "a.pickle").write_bytes(b"")
    for missing in (tmp_path / "tomoe_ra", tmp_path / "a.pickle"):
        assert_every_step_refuses(missing, "is not a folder")
    monkeypatch.chdir(tmp_path)  # a fresh clone: no data/raw, and synthetic samples alone
    check_raw_dir("data/raw")
    check_raw_dir("")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").write_bytes(b"")  # the default is there, but is no folder
    with pytest.raises(ValueError, match="^raw_dir 'data/raw' is not a folder .*; move it away for"):
        check_raw_dir("data/raw")


def test_a_raw_or_real_dir_kana_may_not_list_is_refused_before_anything_runs(tmp_path, monkeypatch,
                                                                           refuse_listing):
    from kana.dataset import check_raw_dir

    locked = tmp_path / "bob"  # copied from another account
    locked.mkdir()
    refuse_listing(locked, tmp_path / "data" / "raw")
    assert_every_step_refuses(locked, "cannot be listed: Permission denied$")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)  # the default, there but locked: refused too
    with pytest.raises(ValueError, match="^raw_dir 'data/raw' cannot be listed: Permission denied$"):
        check_raw_dir("data/raw")


@pytest.mark.parametrize("step, params, message", [
    ("train_cnn", {"epochs": 0}, "epochs: expected 1 or more, got 0"),  # FINISHED untrained before
    ("train_cnn", {"batch_size": 0}, "batch_size: expected 1 or more, got 0"),  # ZeroDivisionError
    ("train_cnn", {"epochs": 1.5}, "epochs: expected a whole number, got 1.5"),  # Keras: TypeError
    ("train_lstm", {"units": float("nan")}, "units: expected a whole number, got nan"),
    ("train_cnn", {"learning_rate": -1.0}, "learning_rate: expected a positive number, got -1.0"),
    ("train_lstm", {"learning_rate": float("nan")}, "learning_rate: expected a positive number, got nan"),
    ("train_cnn", {"patience": -1}, "patience: expected 0 or more, got -1"),
    ("train_cnn", {"filters": 0}, "filters: expected 1 or more, got 0"),
    ("train_lstm", {"seed": -4}, "seed: expected 0 or more, got -4"),
    ("train_lstm", {"dropout": 1.0}, "dropout: expected a share from 0 up to 1, got 1.0"),
    ("train_lstm", {"downsample": 0}, "downsample: expected 1 or more, got 0"),
    ("train_transfer", {"kanji_classes": 0}, "kanji_classes: expected 1 or more, got 0"),
    ("train_transfer", {"frozen_blocks": -1}, "frozen_blocks: expected 0 or more, got -1"),
    ("train_transfer", {"frozen_blocks": 4}, "frozen_blocks: the base has 3 convolution blocks, got 4"),
    ("train_transfer", {"base_source": "KanjiVG"},  # a typo, read as a folder: found in the base's run
     "base_source 'KanjiVG': expected 'kanjivg' or a folder of Kuzushiji-49's .npz files; "
     "Kuzushiji-49 file missing: KanjiVG/k49-train-imgs.npz"),
    ("main", {"lstm_epochs": 0}, "lstm_epochs: expected 1 or more, got 0"),
    ("main", {"cnn_epochs": "3"}, "cnn_epochs: expected a whole number, got '3'"),  # a TypeError before
    ("main", {"synthetic_per_class": -1}, "synthetic_per_class must be 0 (raw samples alone) or more"),
    ("main", {"class_set": "basic64"}, "unknown class_set 'basic64'"),
])
def test_a_training_parameter_out_of_range_is_refused_by_name_before_any_run(step, params, message,
                                                                          tmp_path, use_tracking_store):
    import mlflow

    from kana import pipeline, training

    use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ValueError) as exc:
        getattr(pipeline if step == "main" else training, step)(**params)
    assert message in str(exc.value)
    assert not (tmp_path / "mlflow.db").exists() or mlflow.search_runs(search_all_experiments=True).empty


def test_models_from_before_gap_filling_keep_reading_strokes_as_they_were_trained():
    """Their kana_config.json and dataset.json have no max_gap: they were trained on the
    notebook's spline through the raw points, so they must keep it (0), not get the new default."""
    import json

    old = {"family": "cnn", "input_kind": "raster", "class_ids": ["a"], "n_points": 120,
           "max_strokes": 4, "class_set": "basic46"}
    assert ModelConfig.from_json(json.dumps(old)).max_gap == 0.0
    meta = {"class_ids": ["a"], "n_points": 120, "max_strokes": 4, "class_set": "basic46"}
    assert ModelConfig.for_dataset("cnn", meta).max_gap == 0.0
    assert ModelConfig.for_dataset("lstm", {**meta, "max_gap": 0.02}).max_gap == 0.02


def _resampled_samples(n=10, seed=0):
    from kana.classes import class_set
    from kana.features import resample_samples
    from kana.synth import synthesize_sample

    rng = np.random.default_rng(seed)
    classes = class_set("all")
    samples = [synthesize_sample(classes[int(rng.integers(len(classes)))], rng) for _ in range(n)]
    return resample_samples(samples, 120, 0.02)


def _linear_parts(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per stroke, the 2x2 linear part of the affine map that takes `before` to `after`, checked
    to be affine (each stroke moves as a whole: no stroke is bent); NaN for a nearly straight
    stroke, whose map is not determined across it."""
    parts = []
    for stroke, new in zip(before, after):
        design = np.c_[stroke, np.ones(len(stroke))]
        fit, *_ = np.linalg.lstsq(design, new, rcond=None)
        np.testing.assert_allclose(design @ fit, new, atol=1e-5)
        spread = np.linalg.svd(stroke - stroke.mean(axis=0), compute_uv=False)
        parts.append(fit[:2].T if spread[1] > 0.2 * spread[0] else np.full((2, 2), np.nan))
    return np.array(parts)


def test_pen_path_distortion_is_small_keeps_the_strokes_and_repeats_with_its_seed():
    from kana.models import distort_pen_paths

    samples = _resampled_samples()
    a = distort_pen_paths(samples, np.random.default_rng(5))
    b = distort_pen_paths(samples, np.random.default_rng(5))
    c = distort_pen_paths(samples, np.random.default_rng(6))
    whole = distort_pen_paths(samples, np.random.default_rng(5), stroke_distortion=0)
    moved_alone = compared = 0
    for s, x, y, z, w in zip(samples, a, b, c, whole):
        assert x.shape == s.shape and x.dtype == np.float32 and w.shape == s.shape
        np.testing.assert_array_equal(x, y)
        assert not np.allclose(x, z)
        size = np.ptp(s.reshape(-1, 2), axis=0).max()
        # 4 degrees, shear 0.15, aspect 10% about the centre, stroke shifts of sigma 1.5% of the
        # size; by default each stroke also turned, stretched and shifted (sigma 3%) on its own
        assert 0 < np.hypot(*(w - s).reshape(-1, 2).T).max() < 0.35 * size
        assert 0 < np.hypot(*(x - s).reshape(-1, 2).T).max() < 0.6 * size
        # every stroke an affine image of itself; without the strokes' own moves, all of a
        # sample's strokes share one linear map (the whole character's)
        whole_parts = _linear_parts(s, w)
        curved = ~np.isnan(whole_parts[:, 0, 0])
        whole_parts, parts = whole_parts[curved], _linear_parts(s, x)[curved]
        if len(whole_parts) > 1:
            np.testing.assert_allclose(whole_parts, whole_parts[:1].repeat(len(whole_parts), 0), atol=1e-3)
            moved_alone += not np.allclose(parts, parts[:1].repeat(len(parts), 0), atol=1e-3)
            compared += 1
    assert compared >= 5 and moved_alone == compared


def test_each_stroke_is_turned_stretched_and_shifted_on_its_own_within_its_bounds():
    """`distort_each_stroke` on known strokes: each an L of size 0.4 whose map, fitted back, is a
    turn of at most 8 degrees times a stretch of 0.85-1.15 along x and y, about the stroke's
    centre, with the centre shifted (sigma 3% of the character's size); strength 0 leaves it."""
    from kana.models import distort_each_stroke

    ell = np.r_[np.c_[np.zeros(60), np.linspace(0.4, 0, 60)], np.c_[np.linspace(0, 0.4, 60), np.zeros(60)]]
    sample = np.stack([ell + [-0.6, 0.2], ell + [0.2, 0.2], ell + [-0.2, -0.6]]).astype(np.float32)
    size = 1.2  # the three Ls span [-0.6, 0.6] along x and y
    moved = distort_each_stroke([sample] * 400, np.random.default_rng(1))
    parts = np.concatenate([_linear_parts(sample, m) for m in moved])
    turn = np.degrees(np.arctan2(parts[:, 1, 0], parts[:, 0, 0]))  # the first column's angle
    stretch = np.linalg.norm(parts, axis=1)  # each column's length: the stretch along x and y
    assert np.abs(turn).max() <= 8.0 + 1e-3 and np.abs(turn).max() > 7.0
    assert 0.85 - 1e-4 <= stretch.min() < 0.87 and 1.13 < stretch.max() <= 1.15 + 1e-4
    shifts = np.concatenate([m.mean(axis=1) - sample.mean(axis=1) for m in moved])
    assert abs(shifts.std() / size - 0.03) < 0.003 and abs(shifts.mean()) < 0.005
    np.testing.assert_allclose(distort_each_stroke([sample], np.random.default_rng(1), strength=0)[0],
                               sample, atol=1e-6)
    half = distort_each_stroke([sample] * 400, np.random.default_rng(1), strength=0.5)
    assert np.abs(np.degrees(np.arctan2(*_linear_parts(sample, half[0])[:, ::-1, 0].T))).max() <= 4.0 + 1e-3


def test_lstm_training_batches_are_distorted_anew_each_epoch_and_repeat_with_the_seed():
    from kana.features import lstm_tensors
    from kana.models import distort_pen_paths
    from kana.training import distorted_pen_path_batches

    samples = _resampled_samples(10)
    labels = np.arange(10)
    config = ModelConfig("lstm", "strokes", [], 120, 9, "all", fit_box=True)
    batches = distorted_pen_path_batches(config, samples, labels, 4, seed=3)
    assert len(batches) == 3
    epoch0 = [batches[i] for i in range(3)]
    # every sample once per epoch, with its own label, as the LSTM's input made from a distortion
    rows = np.concatenate([y for _, y in epoch0])
    assert sorted(rows) == list(range(10))
    x, y = epoch0[0]
    expected = lstm_tensors(distort_pen_paths([samples[k] for k in y], np.random.default_rng([3, 0, 0])),
                            9, fit_box=True)
    np.testing.assert_array_equal(x, expected)
    assert not np.array_equal(x, lstm_tensors([samples[k] for k in y], 9, fit_box=True))
    batches.on_epoch_end()
    epoch1 = [batches[i] for i in range(3)]
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(epoch0, epoch1))  # reshuffled
    def input_of(epoch, k):
        return next(x[list(y).index(k)] for x, y in epoch if k in y)
    assert all(not np.array_equal(input_of(epoch0, k), input_of(epoch1, k)) for k in range(10))
    again = distorted_pen_path_batches(config, samples, labels, 4, seed=3)
    for i in range(3):
        np.testing.assert_array_equal(again[i][0], epoch0[i][0])


def test_each_lstm_encoding_gets_its_own_input_from_the_same_pen_paths():
    """train_lstm's two encodings: the notebook's per-stroke columns (family lstm) and the pen path
    as one sequence (family lstm_path); distorted training batches and empty splits in each."""
    from kana.features import lstm_tensors, pen_path_tensors
    from kana.models import distort_pen_paths
    from kana.training import distorted_pen_path_batches, model_inputs, train_lstm

    samples = _resampled_samples(6)
    per_stroke = ModelConfig("lstm", "strokes", [], 120, 9, "all", fit_box=True)
    path = ModelConfig("lstm_path", "pen_path", [], 120, 9, "all", fit_box=True, pen_path_points=64)
    assert per_stroke.input_key != path.input_key  # an ensemble of both computes both
    np.testing.assert_array_equal(model_inputs(per_stroke, samples), lstm_tensors(samples, 9, True))
    np.testing.assert_array_equal(model_inputs(path, samples), pen_path_tensors(samples, 64, True))
    assert model_inputs(path, []).shape == (0, 64, 5) and model_inputs(per_stroke, []).shape == (0, 120, 36)
    x, y = distorted_pen_path_batches(path, samples, np.arange(6), 6, seed=3)[0]
    expected = pen_path_tensors(distort_pen_paths([samples[k] for k in y], np.random.default_rng([3, 0, 0])),
                                64, True)
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(ValueError, match="encoding: expected one of"):
        train_lstm(encoding="one_stroke_at_a_time")
    with pytest.raises(ValueError, match="stroke_moves: expected a share between 0 and 1, got 10"):
        train_lstm(stroke_moves=10)
    with pytest.raises(ValueError, match="stroke_moves: .* it needs augment=1"):
        train_lstm(stroke_moves=0.1, augment=0)
    with pytest.raises(ValueError, match="stroke_distortion: expected 0 or more, got -1"):
        train_lstm(stroke_distortion=-1)
    for bad in ("nan", "inf"):
        with pytest.raises(ValueError, match=f"stroke_distortion: expected 0 or more, got {bad}"):
            train_lstm(stroke_distortion=float(bad))
    with pytest.raises(ValueError, match="pen_path_points: expected at least 2 points, got 1"):
        train_lstm(encoding="pen_path", pen_path_points=1)


def test_a_moved_stroke_leaves_the_voicing_mark_and_a_compounds_small_kana_last():
    """`move_one_stroke`: one body stroke taken out and put elsewhere, for the share asked; the
    strokes themselves unchanged, the fixed tail (ゃ's 3 strokes and ぎ's 2 ticks for ぎゃ) in place."""
    from kana.classes import get_class
    from kana.models import move_one_stroke
    from kana.synth import fixed_tail_strokes

    assert [fixed_tail_strokes(get_class(c)) for c in ("a", "ga", "pa", "kya", "gya")] == [0, 2, 1, 3, 5]
    rng = np.random.default_rng(2)
    samples = [np.arange(n)[:, None, None] * np.ones((n, 4, 2)) for n in (4, 7, 2, 1, 3)]
    tails = np.array([0, 5, 0, 0, 2])  # the last sample: a body of one stroke, nothing to move
    moved = move_one_stroke(samples, tails, rng, share=1.0)
    orders = [m[:, 0, 0].astype(int).tolist() for m in moved]
    assert orders[1][2:] == [2, 3, 4, 5, 6] and orders[1][:2] == [1, 0]
    assert orders[2] == [1, 0] and orders[3] == [0] and orders[4] == [0, 1, 2]
    assert sorted(orders[0]) == [0, 1, 2, 3] and orders[0] != [0, 1, 2, 3]
    # one stroke out of place: the others keep their relative order
    taken = next(i for i in range(4) if [x for x in orders[0] if x != i] == [x for x in range(4) if x != i])
    assert taken in range(4)
    assert move_one_stroke(samples, tails, rng, share=0.0) == samples
    np.testing.assert_array_equal(move_one_stroke(samples, tails, np.random.default_rng(9), 0.5)[0],
                                  move_one_stroke(samples, tails, np.random.default_rng(9), 0.5)[0])


def test_lstm_training_batches_move_strokes_for_the_share_asked():
    from kana.classes import class_set
    from kana.features import lstm_tensors
    from kana.models import distort_pen_paths, move_one_stroke
    from kana.synth import fixed_tail_strokes
    from kana.training import distorted_pen_path_batches

    classes = class_set("all")
    samples = _resampled_samples(8)
    labels = np.array([0, 5, 40, 70, 90, 100, 107, 3])
    config = ModelConfig("lstm", "strokes", [c.char_id for c in classes], 120, 9, "all", fit_box=True)
    x, y = distorted_pen_path_batches(config, samples, labels, 8, seed=3, stroke_moves=1.0)[0]
    rows = [labels.tolist().index(c) for c in y]  # the batch's samples, in its order
    rng = np.random.default_rng([3, 0, 0])
    paths = distort_pen_paths([samples[k] for k in rows], rng)
    tails = np.array([fixed_tail_strokes(classes[c]) for c in y])
    np.testing.assert_array_equal(x, lstm_tensors(move_one_stroke(paths, tails, rng, 1.0), 9, True))
    still, _ = distorted_pen_path_batches(config, samples, labels, 8, seed=3)[0]
    assert not np.array_equal(x, still)


def test_balanced_accuracy_is_mean_recall_over_the_classes_a_split_holds_without_a_warning():
    import warnings

    from kana.evaluation import classification_metrics

    # Classes 0 and 1 only in the truth; class 2 (a class the model reads, absent from the split)
    # predicted once: recall 1/2 on class 0, 1 on class 1.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = classification_metrics(y_true, y_pred, "real")
    assert metrics["real_balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["real_accuracy"] == pytest.approx(0.75)


def test_accuracy_on_the_basic_46_and_on_each_source_against_known_values():
    """Issue 5's goals are top-1 on the basic 46 and on all 108; a source read worse than the rest
    must show rather than be averaged away."""
    from kana.classes import class_set
    from kana.evaluation import subset_accuracies

    class_ids = [c.char_id for c in class_set("all")]
    ka, kya = class_ids.index("ka"), class_ids.index("kya")
    y_true = np.array([ka, ka, ka, kya, kya])
    y_pred = np.array([ka, ka, kya, kya, ka])  # basic: 2 of 3; kya: 1 of 2
    sources = ["app", "app", "pen tablet", "pen tablet", "app"]
    m = subset_accuracies("real", y_true, y_pred, class_ids, sources)
    assert m == {
        "real_basic46_accuracy": pytest.approx(2 / 3), "real_n_basic46": 3,
        "real_source_app_accuracy": pytest.approx(2 / 3), "real_n_source_app": 3,
        "real_source_pen tablet_accuracy": pytest.approx(1 / 2), "real_n_source_pen tablet": 2,
    }
    # one source: no per-source figures; no basic sample: no basic figure; a name MLflow refuses
    assert subset_accuracies("test", y_true, y_pred, class_ids, ["app"] * 5).keys() == {
        "test_basic46_accuracy", "test_n_basic46"}
    m = subset_accuracies("real", y_true[2:], y_pred[2:], class_ids, ["a:b?", "a?b:", "ゆき"])
    assert m == {"real_basic46_accuracy": 0.0, "real_n_basic46": 1,
                 "real_source_a_b__accuracy": 0.0, "real_n_source_a_b_": 1,  # ":" fails on Windows
                 "real_source_a_b___accuracy": 1.0, "real_n_source_a_b__": 1,
                 "real_source_ゆき_accuracy": 0.0, "real_n_source_ゆき": 1}


def test_every_misclassified_sample_is_listed_by_file_though_the_picture_shows_96(tmp_path,
                                                                                  use_tracking_store):
    import mlflow

    from kana.evaluation import log_split_evaluation

    use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    class_ids = ["a", "i", "u"]
    y_true = np.zeros(130, dtype=int)
    probs = np.tile([0.1, 0.8, 0.1], (130, 1))
    probs[:20] = [0.8, 0.1, 0.1]  # the first 20 read right, the other 110 read as "i"
    names = [f"src/a{k}.pickle" for k in range(130)]
    # an experiment of its own (an earlier test may leave MLflow set to one of another store's),
    # its artifacts under tmp_path: by default they would land in ./mlruns of the checkout
    experiment = mlflow.create_experiment("evaluation", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        metrics = log_split_evaluation("test", y_true, probs, class_ids,
                                       np.zeros((130, 8, 8), np.uint8), names)
    assert metrics["test_accuracy"] == pytest.approx(20 / 130)
    listed = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation/test_misclassified.tsv")
    assert listed.splitlines() == [f"src/a{k}.pickle\ta\ti" for k in range(20, 130)]
