"""Training: one loop for every family, so runs log the same things under the same names.

`train_family` loads a processed dataset (by preprocess run id), builds the family's model, fits
it with balanced class weights and early stopping (best weights restored), and logs params,
per-epoch metrics (MLflow's Keras callback), final metrics, plots, the model and the config the
pyfunc needs to read raw samples the same way. The three entry points are thin wrappers.
"""

from __future__ import annotations

import json
import numbers
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from kana import features
from kana.classes import OFF_BY_ONE_WEIGHT, WRONG_COUNT_WEIGHT, apply_stroke_count_prior
from kana.dataset import ProcessedDataset, featurize, load_dataset, raster_batch_to_input
from kana.strokes import check_raw_folder
from kana.tracking import kana_run, load_keras_model, log_dataset_input, log_figure_png, log_params

FAMILY_INPUT = {"cnn": "raster", "transfer": "raster", "lstm": "strokes", "lstm_path": "pen_path"}
# train_lstm's encodings (its input kinds) -> their families
LSTM_ENCODINGS = {kind: family for family, kind in FAMILY_INPUT.items() if kind != "raster"}
RASTER_SHAPE = (features.RASTER_SIZE + 2 * features.RASTER_PAD,) * 2 + (1,)
MIN_RASTER_SIZE, MAX_RASTER_SIZE = 16, 128  # `train_cnn`'s raster_size: 3 poolings, a CPU's budget
KANJI_BASE_MODEL_NAME = "kana-kanji-base"
CNN_DIRECTIONS = 4  # train_cnn's orientation channels (features.render_direction_rasters)


@dataclass
class ModelConfig:
    """What serving needs to turn raw samples into this model's input and its output into labels."""

    family: str
    input_kind: str  # "raster" | "strokes" (per stroke, the notebook's) | "pen_path" (one sequence)
    class_ids: list[str]
    n_points: int
    max_strokes: int
    class_set: str
    dataset_run_id: str = ""
    extra: dict = field(default_factory=dict)
    fit_box: bool = False  # strokes input: the character fitted to the box (see features.lstm_tensor)
    stroke_order: bool = False  # raster input: a second channel with the strokes' order
    directions: int = 0  # raster input: that many channels more, the ink by its orientation (0: none)
    max_gap: float = 0.0  # see features.resample_samples; 0 for models made before it existed
    wrong_count_weight: float = 1.0  # see classes.WRONG_COUNT_WEIGHT; 1 (off) for older models
    off_by_one_weight: float | None = None  # see classes.OFF_BY_ONE_WEIGHT; None for older models
    pen_path_points: int = 0  # pen_path input: the path's length in points (features.pen_path_tensors)
    raster_size: int = RASTER_SHAPE[0]  # raster input: the side in pixels, padding included
    raster_antialias: int = 1  # raster input: drawn this many times larger, box-filtered down (1: older models)

    @property
    def resampling(self) -> tuple[int, float]:
        """What decides the resampled strokes this model's input starts from."""
        return (self.n_points, self.max_gap)

    @property
    def input_key(self) -> tuple:
        """What decides this model's input: models with equal keys take the same input."""
        return (self.input_kind, *self.resampling, self.max_strokes, self.fit_box, self.stroke_order,
                self.pen_path_points, self.raster_size, self.raster_antialias, self.directions)

    @property
    def takes_pen_paths(self) -> bool:
        """The LSTM's inputs: made from the pen paths (which training distorts), not rasters."""
        return self.input_kind in ("strokes", "pen_path")

    @property
    def input_shape(self) -> tuple[int, int]:
        """A pen-path model's input, one sample: (time steps, features)."""
        if self.input_kind == "pen_path":
            return (self.pen_path_points, features.PEN_PATH_FEATURES)
        return (self.n_points, 4 * self.max_strokes)

    @classmethod
    def for_dataset(cls, family: str, meta: dict, dataset_run_id: str = "") -> "ModelConfig":
        """The config of a `family` model trained on a processed dataset (its `meta`)."""
        return cls(
            family=family,
            input_kind=FAMILY_INPUT[family],
            class_ids=meta["class_ids"],
            n_points=meta["n_points"],
            max_gap=meta.get("max_gap", 0.0),
            wrong_count_weight=WRONG_COUNT_WEIGHT,
            off_by_one_weight=OFF_BY_ONE_WEIGHT,
            max_strokes=meta["max_strokes"],
            class_set=meta["class_set"],
            dataset_run_id=dataset_run_id,
        )

    def with_stroke_counts(self, probs: np.ndarray, stroke_counts) -> np.ndarray:
        """The network's probabilities -> this model's: the samples' stroke counts weighed in."""
        return apply_stroke_count_prior(probs, stroke_counts, self.class_ids, self.wrong_count_weight,
                                        self.off_by_one_weight)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls(**json.loads(text))


def model_inputs(config: ModelConfig, resampled: list[np.ndarray], rasters: np.ndarray | None = None,
                 drawn: dict | None = None):
    """The model's input batch from resampled strokes. `rasters`, when given, are a dataset's (the
    notebook's: 32 pixels, not anti-aliased), used as they are by a model that takes those.
    `drawn`: channels already drawn of these samples, by what decides them, shared by the calls
    given the same dict (serving's members: the transfer CNN's raster is the CNN's first channel)."""
    if config.input_kind == "raster":
        drawn = {} if drawn is None else drawn
        inner = config.raster_size - 2 * features.RASTER_PAD  # the character's box, in pixels
        aa = config.raster_antialias

        def channel(key, draw):
            if key not in drawn:
                drawn[key] = draw()
            return drawn[key]

        if rasters is None or rasters.shape[1:] != (config.raster_size,) * 2 or aa != 1:
            rasters = channel(("raster", inner, aa),
                              lambda: features.render_rasters(resampled, inner, antialias=aa))
        channels = [raster_batch_to_input(rasters)]
        if config.stroke_order:
            channels.append(raster_batch_to_input(channel(
                ("order", inner, aa), lambda: features.render_order_rasters(resampled, inner, antialias=aa))))
        if config.directions:  # drawn without anti-aliasing: the setting does not change them
            channels.append(channel(("directions", inner, config.directions),
                                    lambda: features.render_direction_rasters(resampled, config.directions, inner)))
        return channels[0] if len(channels) == 1 else np.concatenate(channels, axis=-1)
    if not resampled:  # an empty split
        return np.zeros((0, *config.input_shape), dtype=np.float32)
    if config.input_kind == "pen_path":
        return features.pen_path_tensors(resampled, config.pen_path_points, config.fit_box)
    return features.lstm_tensors(resampled, config.max_strokes, config.fit_box)


def seed_everything(seed: int) -> None:
    """Python, numpy and TF seeds. With them, training on the CPU repeats exactly run to run on
    one machine (every family: the CNNs' augmentation draws in batch order, see `_fit`), without
    TensorFlow's op determinism, which is not forced."""
    import keras

    keras.utils.set_random_seed(seed)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fit(model, x_train, y_train, x_val, y_val, *, epochs, batch_size, patience, seed, augment,
         class_weight, learning_rate, train_batches=None):
    """Compile and fit with early stopping; returns (history dict, seconds per epoch list).
    `augment`: rasters distorted by `models.augmentation`; `train_batches`: a PyDataset that makes
    the training batches itself (the LSTM's distorted pen paths), in place of `x_train` (then None)."""
    import keras
    import mlflow
    import tensorflow as tf

    from kana.models import augmentation

    # Cosine decay over the planned epochs: short CPU runs end at a low rate, where the
    # validation score settles instead of swinging from epoch to epoch.
    steps_per_epoch = -(-len(y_train) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps_per_epoch), alpha=0.02
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epoch_seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.t0)

    callbacks = [
        EpochTimer(),
        # MLflow's Keras callback logs loss/accuracy/val_* per epoch. (Autolog would too, but it
        # logs fit()'s batch_size=None for tf.data input, clashing with our batch_size param.)
        mlflow.keras.MlflowCallback(),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=patience, restore_best_weights=True
        ),
    ]
    if train_batches is not None:
        fit_args = {"x": train_batches}
    elif augment:
        aug = augmentation(seed)
        # One batch distorted at a time, so the layers draw their random numbers in batch order
        # and a seed gives the same model: a parallel map drew them in whatever order its threads
        # ran (one seed's CNN scored 0.86 and 0.93 in two runs). Prefetch still overlaps the
        # distortion (about 9 ms a batch here) with training (about 47 ms a step on 2 cores).
        train = (
            tf.data.Dataset.from_tensor_slices((x_train, y_train))
            .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .map(lambda x, y: (aug(x, training=True), y))
            .prefetch(tf.data.AUTOTUNE)
        )
        fit_args = {"x": train}
    else:
        fit_args = {"x": x_train, "y": y_train, "batch_size": batch_size, "shuffle": True}
    history = model.fit(
        **fit_args,
        validation_data=(x_val, y_val) if len(x_val) else None,
        epochs=epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,  # progress bars on a terminal, a line per epoch in logs
    )
    return history.history, epoch_seconds


def distorted_pen_path_batches(config: ModelConfig, resampled: list[np.ndarray],
                               labels: np.ndarray, batch_size: int, seed: int,
                               stroke_moves: float = 0.0, stroke_distortion: float = 1.0):
    """The LSTM's training batches, each sample's pen path redrawn by `models.distort_pen_paths`
    (its strokes each moved on their own at `stroke_distortion`) every epoch (and for
    `stroke_moves` of them, one stroke moved: `models.move_one_stroke`), then turned into the
    LSTM's input as serving does. The order and the distortions come from (seed,
    epoch, batch), so a run repeats exactly."""
    import keras

    from kana.classes import get_class
    from kana.models import distort_pen_paths, move_one_stroke
    from kana.synth import fixed_tail_strokes

    if stroke_moves:
        tails = np.array([fixed_tail_strokes(get_class(c)) for c in config.class_ids])[labels]

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(labels))

        def __len__(self):
            return -(-len(labels) // batch_size)

        def __getitem__(self, i):
            rows = self.order[i * batch_size : (i + 1) * batch_size]
            rng = np.random.default_rng([seed, self.epoch, i])
            paths = distort_pen_paths([resampled[k] for k in rows], rng, stroke_distortion)
            if stroke_moves:
                paths = move_one_stroke(paths, tails[rows], rng, stroke_moves)
            return model_inputs(config, paths), labels[rows]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(labels))

    return Batches()


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """scikit-learn's 'balanced' weights for the classes present (the notebook's choice)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    out = {int(c): 1.0 for c in range(n_classes)}
    out.update({int(c): float(w) for c, w in zip(present, weights)})
    return out


def check_at_least(least: int, **values) -> None:
    """ValueError naming the first count (epochs, units, ...) that is not a whole number
    `least` or more, before any run starts: Keras refuses epochs=1.5 only once the run's
    data is featurized, with a TypeError that names no parameter."""
    for name, value in values.items():
        if not isinstance(value, numbers.Integral):  # 1.5, NaN, "3"
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
        if value < least:
            raise ValueError(f"{name}: expected {least} or more, got {value}")


def train_family(
    family: str,
    build_model,
    params: dict,
    *,
    dataset_run_id: str = "",
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    patience: int = 3,
    seed: int = 127,
    real_dir: str = "",
    augment: int = 0,
    extra_tags: dict | None = None,
    input_options: dict | None = None,
    stroke_moves: float = 0.0,
    stroke_distortion: float = 1.0,
) -> str:
    """Train one family on a processed dataset and log everything; returns the run id.

    `build_model(config, ds)` returns an uncompiled Keras model; `input_options` set the config's
    input fields (`fit_box`, `stroke_order`); `stroke_moves`, `stroke_distortion`: see
    `distorted_pen_path_batches`.
    """
    import mlflow

    from kana import evaluation, plots

    # epochs 0 or a negative learning rate FINISHED a run with an untrained or diverged model
    check_at_least(1, epochs=epochs, batch_size=batch_size)
    check_at_least(0, patience=patience, seed=seed)
    if not 0 < learning_rate < float("inf"):
        raise ValueError(f"learning_rate: expected a positive number, got {learning_rate}")
    check_raw_folder("real_dir", real_dir)
    ds, dataset_run_id = load_dataset(dataset_run_id or None)
    meta = ds.meta
    config = replace(ModelConfig.for_dataset(family, meta, dataset_run_id), **(input_options or {}))
    run_name = f"{family}-{meta['class_set']}"
    tags = {"model_family": family, "kana.dataset_run_id": dataset_run_id, **(extra_tags or {})}
    with kana_run(f"train_{family}", run_name=run_name, tags=tags) as run:
        seed_everything(seed)
        idx = {s: ds.indices(s) for s in ("train", "val", "test")}
        log_params(
            {
                **params,
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "lr_schedule": "cosine",
                "patience": patience,
                "seed": seed,
                "augment": augment,
                "class_set": meta["class_set"],
                "n_classes": len(config.class_ids),
                "dataset_run_id": dataset_run_id,
                "dataset_digest": meta["digest"],
                "n_train": len(idx["train"]),
                "n_val": len(idx["val"]),
                "n_test": len(idx["test"]),
                "real_dir": real_dir,
            }
        )
        log_dataset_input(
            mlflow.data.from_numpy(
                ds.rasters, targets=ds.labels, name=f"kana-{meta['class_set']}", digest=meta["digest"]
            ),
            context="training",
        )
        y = {s: ds.labels[i] for s, i in idx.items()}
        pen_paths = None
        if augment and config.takes_pen_paths:
            pen_paths = distorted_pen_path_batches(
                config, [ds.resampled(i) for i in idx["train"]], y["train"], batch_size, seed,
                stroke_moves, stroke_distortion)
        # the LSTM's training input is made batch by batch then: not all at once (300 MB) as well
        x = {s: dataset_inputs(config, ds, i) for s, i in idx.items()
             if not (s == "train" and pen_paths is not None)}
        model = build_model(config, ds)
        t0 = time.perf_counter()
        history, epoch_seconds = _fit(
            model, x.get("train"), y["train"], x["val"], y["val"],
            epochs=epochs, batch_size=batch_size, patience=patience, seed=seed,
            augment=bool(augment) and not config.takes_pen_paths,
            class_weight=balanced_class_weights(y["train"], len(config.class_ids)),
            learning_rate=learning_rate, train_batches=pen_paths,
        )
        train_seconds = time.perf_counter() - t0

        log_figure_png(plots.fit_history_figure(history, run_name), "fit_history.png")
        metrics = {
            "train_seconds": train_seconds,
            "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
            "epochs_run": len(epoch_seconds),
        }
        names, sources = ds.manifest["path"].tolist(), ds.manifest["source"].tolist()
        stroke_counts = np.diff(ds.offsets)
        for split in ("val", "test"):
            if len(idx[split]):
                net_probs = predict_probs(model, x[split])
                metrics.update(
                    evaluation.log_split_evaluation(
                        split, y[split], config.with_stroke_counts(net_probs, stroke_counts[idx[split]]),
                        config.class_ids, ds.rasters[idx[split]], [names[i] for i in idx[split]],
                        net_probs=net_probs, sources=[sources[i] for i in idx[split]],
                    )
                )
        if real_dir:
            metrics.update(evaluate_real(model, config, real_dir))
        metrics["peak_rss_mb"] = peak_rss_mb()
        # Final metrics go one step after the last epoch, so per-epoch histories stay intact and
        # the latest val_accuracy is the restored (best) model's.
        mlflow.log_metrics(metrics, step=len(epoch_seconds))

        example = x["test"][:2] if len(x["test"]) else dataset_inputs(config, ds, idx["train"][:2])
        signature = mlflow.models.infer_signature(example, predict_probs(model, example))
        info = mlflow.keras.log_model(model, name="model", signature=signature)
        mlflow.log_text(config.to_json(), "kana_config.json")
        mlflow.set_tag("kana.model_uri", info.model_uri)
        summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "accuracy" in k)
        print(f"{family} run {run.info.run_id}: {summary}")
        return run.info.run_id


def dataset_inputs(config: ModelConfig, ds: ProcessedDataset, idx: np.ndarray) -> np.ndarray:
    """Model inputs for dataset samples `idx`, from their stored resampled strokes and rasters."""
    return model_inputs(config, [ds.resampled(i) for i in idx], ds.rasters[idx])


def predict_probs(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities, calling the model directly (no `predict` overhead)."""
    out = [np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]))


def evaluate_real(model, config: ModelConfig, real_dir: str) -> dict[str, float]:
    """Score real handwriting (never trained on) read with the same loader and features, every
    drawing whatever its stroke count (`real_n_off_table` counts those whose table does not allow
    it): real people write some so, and a served model is asked to read them."""
    import mlflow

    from kana import evaluation
    from kana.classes import get_class
    from kana.strokes import describe_not_read, load_raw_dir

    report = load_raw_dir(Path(real_dir), set(config.class_ids), any_stroke_count=True)
    if report.not_read:
        print(describe_not_read(real_dir, report.not_read))
    label_of = {c: i for i, c in enumerate(config.class_ids)}
    if not report.samples:
        print(f"real_dir {real_dir}: no usable samples")
        return {"real_n_samples": 0}
    feats = featurize([s.strokes for s in report.samples], *config.resampling)
    resampled = [f[0] for f in feats]
    rasters = np.stack([f[1] for f in feats])
    y = np.array([label_of[s.char_id] for s in report.samples])
    net_probs = predict_probs(model, model_inputs(config, resampled, rasters))
    probs = config.with_stroke_counts(net_probs, [len(s.strokes) for s in report.samples])
    metrics = evaluation.log_split_evaluation(
        "real", y, probs, config.class_ids, rasters, [s.path for s in report.samples],
        net_probs=net_probs, sources=[s.source for s in report.samples],
    )
    metrics["real_n_samples"] = len(y)
    metrics["real_n_off_table"] = sum(get_class(s.char_id).strokes_off(len(s.strokes)) > 0
                                      for s in report.samples)
    if report.rejections:
        mlflow.log_text(
            "\n".join(f"{r.path}\t{r.reason}\t{r.message}" for r in report.rejections),
            "evaluation/real_rejected.tsv",
        )
    return metrics


# --------------------------------------------------------------------------- the three families


def check_raster_size(size: int, name: str = "raster_size") -> None:
    """Refuse a raster size the CNN cannot take, naming the parameter that gave it."""
    if not MIN_RASTER_SIZE <= size <= MAX_RASTER_SIZE:
        raise ValueError(f"{name} must be {MIN_RASTER_SIZE}-{MAX_RASTER_SIZE} pixels, got {size}")


def train_cnn(dataset_run_id: str = "", epochs: int = 12, batch_size: int = 64,
              learning_rate: float = 1e-3, patience: int = 3, dense_units: int = 128,
              batch_norm: int = 1, filters: int = 16, seed: int = 127, real_dir: str = "",
              augment: int = 1, stroke_order: int = 0, raster_size: int = RASTER_SHAPE[0],
              antialias: int = features.ANTIALIAS, directions: int = CNN_DIRECTIONS) -> str:
    """MLflow entry point `train_cnn`: the notebook's CNN on the rasters, with augmentation.
    The notebook's exact net: `--filters 32 --dense-units 40 --batch-norm 0`. Half its width
    (filters 16) costs a quarter of the compute at serving and, in the ensemble, reads as well.
    Returns the run id.

    Parameters:

    - `dataset_run_id`: the `preprocess` run whose dataset to train on ("": the latest FINISHED
      one).
    - `epochs`: the most epochs to train (early stopping may end sooner); the learning rate decays
      over them.
    - `batch_size`: samples per training step.
    - `learning_rate`: Adam's rate at the start, decayed along a cosine over `epochs`.
    - `patience`: epochs without a better validation accuracy before training stops; the best
      epoch's weights are kept.
    - `dense_units`: the width of the dense layer before the output.
    - `batch_norm`: 1 normalises each convolution's output over the batch; 0 is the notebook's.
    - `filters`: the first convolution block's width (the next two have 2x and 4x).
    - `seed`: seeds the weights, the shuffling and the augmentation, so a run can be repeated.
    - `real_dir`: a folder of real raw drawings, laid out as `data/raw/`, to score the model on
      after training (the `real_*` metrics; "": none).
    - `augment`: 1 turns, shifts, shears and zooms the training rasters a little every epoch
      (`models.augmentation`); 0 trains on them as they are.
    - `stroke_order`: 1 adds a second input channel with the strokes drawn in order of intensity.
    - `raster_size`: the rasters' side in pixels (the notebook's 32, padding included); other sizes
      are drawn from the dataset's resampled strokes (48: small voicing marks get pixels of their
      own; see docs/experiments.md, "Rasters of 48 pixels").
    - `antialias`: rasters drawn that many times larger and box-filtered down
      (`features.render_rasters`; 1 draws the notebook's, pixels on or off).
    - `directions`: 4 or 8 input channels more, the ink split by the orientation it runs in
      (`features.render_direction_rasters`; the CNN made half the errors with 4); 0: none.
    """
    from kana.models import build_cnn

    check_raster_size(raster_size)
    features.check_antialias(antialias)
    if directions:
        features.check_directions(directions)
    check_at_least(1, dense_units=dense_units, filters=filters)

    def build(config, ds):
        shape = (config.raster_size,) * 2 + (1 + config.stroke_order + config.directions,)
        return build_cnn(len(config.class_ids), shape, dense_units, bool(batch_norm), filters)

    return train_family(
        "cnn", build, {"dense_units": dense_units, "batch_norm": batch_norm, "filters": filters,
                       "stroke_order": stroke_order, "raster_size": raster_size, "antialias": antialias,
                       "directions": directions},
        dataset_run_id=dataset_run_id, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, patience=patience, seed=seed,
        real_dir=real_dir, augment=augment,
        input_options={"stroke_order": bool(stroke_order), "raster_size": raster_size,
                       "raster_antialias": antialias, "directions": directions},
    )


def train_lstm(dataset_run_id: str = "", epochs: int = 12, batch_size: int = 64,
               learning_rate: float = 1e-3, patience: int = 3, units: int = 128,
               dropout: float = 0.1, dense_units: int = 128, downsample: int = 2,
               fit_box: int = 1, seed: int = 127, real_dir: str = "", augment: int = 1,
               encoding: str = "strokes", pen_path_points: int = features.PEN_PATH_POINTS,
               stroke_moves: float = 0.0, stroke_distortion: float = 1.0, bidirectional: int = 0) -> str:
    """MLflow entry point `train_lstm`: an LSTM over the strokes' resampled points. The notebook's
    net: `--units 400 --dense-units 40 --downsample 1 --learning-rate 3e-5 --batch-size 10`; the
    defaults train in minutes on 2 CPU cores. Returns the run id.

    Parameters:

    - `dataset_run_id`: the `preprocess` run whose dataset to train on ("": the latest FINISHED
      one).
    - `epochs`: the most epochs to train (early stopping may end sooner); the learning rate decays
      over them.
    - `batch_size`: samples per training step.
    - `learning_rate`: Adam's rate at the start, decayed along a cosine over `epochs`.
    - `patience`: epochs without a better validation accuracy before training stops; the best
      epoch's weights are kept.
    - `units`: the LSTM's units.
    - `dropout`: the share of the LSTM's outputs dropped in training.
    - `dense_units`: the width of the dense layer before the output.
    - `downsample`: the time steps are average-pooled by this much before the LSTM (1: none, the
      notebook's).
    - `fit_box`: 1 fits each character to the box before the pen path goes in; 0 takes the canvas
      coordinates as drawn (the notebook's).
    - `seed`: seeds the weights, the shuffling and the augmentation, so a run can be repeated.
    - `real_dir`: a folder of real raw drawings, laid out as `data/raw/`, to score the model on
      after training (the `real_*` metrics; "": none).
    - `augment`: 1 redraws each training sample's pen path with a small random slant, shear,
      aspect and stroke shifts every epoch (`models.distort_pen_paths`), after moving each stroke
      on its own (`stroke_distortion`); 0 trains on the pen paths as they are.
    - `encoding`: "strokes", the notebook's (each stroke's points in columns of their own,
      `features.lstm_tensors`; family `lstm`), or "pen_path", the whole path as one sequence of
      `pen_path_points` points with a pen-down flag (`features.pen_path_tensors`; family
      `lstm_path`, a family of its own: `register` then ensembles it with the others' best runs).
      `main` trains the notebook's: see docs/experiments.md, "The LSTM over the pen path as one
      sequence", for what the pen path did and did not gain.
    - `pen_path_points`: with encoding "pen_path", the points of its one sequence.
    - `stroke_moves`: with `augment`, the share of training samples, each epoch, with one stroke of
      the kana moved elsewhere in its order (`models.move_one_stroke`).
    - `stroke_distortion`: with `augment`, the size of each stroke's own small turn, stretch and
      shift, as a multiple of the default (`models.distort_each_stroke`; 0: the whole character
      only).
    - `bidirectional`: 1 adds a second LSTM of `units` that reads the sequence backwards (`units`
      64 costs about what one LSTM of 128 does).
    """
    from kana.models import build_lstm

    if encoding not in LSTM_ENCODINGS:
        raise ValueError(f"encoding: expected one of {sorted(LSTM_ENCODINGS)}, got {encoding!r}")
    if not 0.0 <= stroke_moves <= 1.0:
        raise ValueError(f"stroke_moves: expected a share between 0 and 1, got {stroke_moves}")
    if not 0 <= stroke_distortion < float("inf"):  # NaN fails this too
        raise ValueError(f"stroke_distortion: expected 0 or more, got {stroke_distortion}")
    if stroke_moves and not augment:
        raise ValueError("stroke_moves: strokes are moved in the augmented training batches; "
                         "it needs augment=1")
    if encoding == "pen_path" and pen_path_points < 2:
        raise ValueError(f"pen_path_points: expected at least 2 points, got {pen_path_points}")
    check_at_least(1, units=units, dense_units=dense_units, downsample=downsample)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout: expected a share from 0 up to 1, got {dropout}")
    options = {"fit_box": bool(fit_box),
               "pen_path_points": pen_path_points if encoding == "pen_path" else 0}

    def build(config, ds):
        return build_lstm(len(config.class_ids), *config.input_shape, units, dropout, dense_units,
                          downsample, bool(bidirectional))

    return train_family(
        LSTM_ENCODINGS[encoding], build, {"units": units, "dropout": dropout, "dense_units": dense_units,
                        "downsample": downsample, "fit_box": fit_box, "encoding": encoding,
                        "pen_path_points": options["pen_path_points"], "stroke_moves": stroke_moves,
                        "stroke_distortion": stroke_distortion, "bidirectional": bidirectional},
        dataset_run_id=dataset_run_id, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, patience=patience, seed=seed, real_dir=real_dir,
        augment=augment, input_options=options, stroke_moves=stroke_moves,
        stroke_distortion=stroke_distortion,
    )


def train_transfer(dataset_run_id: str = "", base_model_uri: str = "",
                   base_source: str = "kanjivg", frozen_blocks: int = 1, epochs: int = 8,
                   batch_size: int = 64, learning_rate: float = 5e-4, patience: int = 3,
                   dense_units: int = 128, kanji_classes: int = 150, kanji_per_class: int = 40,
                   base_epochs: int = 12, filters: int = 16, seed: int = 127, real_dir: str = "",
                   augment: int = 1, antialias: int = features.ANTIALIAS, directions: int = 0) -> str:
    """MLflow entry point `train_transfer`: a CNN base trained on other characters, fine-tuned.

    The base comes from `base_model_uri` when given; otherwise the latest `kana-kanji-base`
    version trained with the same settings and the same raster code (`raster_code_digest`) is
    reused, and only when there is none is one trained (on kanji synthesized from KanjiVG, or on
    Kuzushiji-49 when `base_source` is a folder of its .npz files) and registered. Returns the
    run id.

    Parameters:

    - `dataset_run_id`: the `preprocess` run whose dataset to train on ("": the latest FINISHED
      one).
    - `base_model_uri`: an MLflow URI of a Keras CNN (as `train_cnn` builds) to fine-tune ("": a
      `kana-kanji-base`, reused or trained).
    - `base_source`: what a base trained here learns: "kanjivg" (kanji synthesized from KanjiVG)
      or a folder of Kuzushiji-49's `k49-train-imgs.npz` and `k49-train-labels.npz`.
    - `frozen_blocks`: how many of the base's first convolution blocks stay frozen while it is
      fine-tuned (0: none).
    - `epochs`: the most epochs to fine-tune (early stopping may end sooner); the learning rate
      decays over them.
    - `batch_size`: samples per training step.
    - `learning_rate`: Adam's rate at the start, decayed along a cosine over `epochs`.
    - `patience`: epochs without a better validation accuracy before training stops; the best
      epoch's weights are kept.
    - `dense_units`: the width of the new head's dense layer.
    - `kanji_classes`: how many kanji a KanjiVG base learns.
    - `kanji_per_class`: synthetic samples of each kanji for a KanjiVG base.
    - `base_epochs`: the most epochs to train a base.
    - `filters`: the first convolution block's width of a base trained here (the next two have 2x
      and 4x).
    - `seed`: seeds the weights, the shuffling and the augmentation (and a base's kanji), so a run
      can be repeated.
    - `real_dir`: a folder of real raw drawings, laid out as `data/raw/`, to score the model on
      after training (the `real_*` metrics; "": none).
    - `augment`: 1 turns, shifts, shears and zooms the training rasters a little every epoch
      (`models.augmentation`); 0 trains on them as they are.
    - `antialias`: as `train_cnn`'s, for the base's input too.
    - `directions`: as `train_cnn`'s, for the base's input too (orientation channels need the
      strokes, so a KanjiVG base). With directions=4 this CNN made a fifth fewer errors, but the
      ensemble beside `train_cnn`'s gained nothing, so 0.
    """
    from kana.models import CNN_BLOCKS, build_transfer, check_frozen_blocks, conv_blocks

    features.check_antialias(antialias)
    check_at_least(1, dense_units=dense_units, kanji_classes=kanji_classes,
                   kanji_per_class=kanji_per_class, base_epochs=base_epochs, filters=filters)
    check_at_least(0, frozen_blocks=frozen_blocks)
    if directions:
        features.check_directions(directions)
        if base_source != "kanjivg":
            raise ValueError(f"directions={directions} needs a base trained on KanjiVG's strokes, "
                             f"not base_source={base_source!r} (images)")
    base_settings = kanji_base_settings(base_source, kanji_classes, kanji_per_class, base_epochs,
                                        filters, seed, antialias, directions)
    given_base = load_keras_model(base_model_uri) if base_model_uri else None
    if given_base is not None and given_base.input_shape[-1] != 1 + directions:  # before any run starts
        raise ValueError(f"base_model_uri {base_model_uri} takes {given_base.input_shape[-1]} input "
                         f"channels; directions={directions} needs {1 + directions}")
    # a base kana trains (or has trained and registered) is a `build_cnn`
    check_frozen_blocks(frozen_blocks, CNN_BLOCKS if given_base is None else conv_blocks(given_base))
    uri = base_model_uri or find_kanji_base(base_settings)
    if not uri and base_source != "kanjivg":  # a base to train from Kuzushiji-49's files
        try:
            kuzushiji_files(base_source)
        except FileNotFoundError as e:
            raise ValueError(f"base_source {base_source!r}: expected 'kanjivg' or a folder of "
                             f"Kuzushiji-49's .npz files; {e}") from None

    def build(config, ds):
        nonlocal uri
        if not uri:
            uri = train_kanji_base(**base_settings)
        base = given_base if given_base is not None else load_keras_model(uri)
        return build_transfer(base, len(config.class_ids), frozen_blocks, dense_units)

    return train_family(
        "transfer", build,
        {"base_model_uri": base_model_uri, "frozen_blocks": frozen_blocks, "dense_units": dense_units,
         "base_source": base_source, "kanji_classes": kanji_classes,
         "kanji_per_class": kanji_per_class, "base_epochs": base_epochs, "filters": filters,
         "antialias": antialias, "directions": directions},
        dataset_run_id=dataset_run_id, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, patience=patience, seed=seed, real_dir=real_dir,
        augment=augment, extra_tags={"kana.base_model_uri": base_model_uri or "kana-kanji-base"},
        input_options={"raster_antialias": antialias, "directions": directions},
    )


def kanji_base_settings(base_source: str, kanji_classes: int, kanji_per_class: int, base_epochs: int,
                        filters: int, seed: int, antialias: int, directions: int) -> dict:
    """What makes a kanji base: its run's params and the version tags a reuse must match.
    `directions` only when set, so the bases made before it existed are still found."""
    return {"base_source": base_source, "kanji_classes": kanji_classes,
            "kanji_per_class": kanji_per_class, "base_epochs": base_epochs, "filters": filters,
            "seed": seed, "antialias": antialias, **({"directions": directions} if directions else {})}


def _base_tags(settings: dict) -> dict[str, str]:
    """A kanji base's settings as version tags, with the digest of the code that made its rasters."""
    return {**{f"kana.{k}": str(v) for k, v in settings.items()}, "kana.raster_code": raster_code_digest()}


def raster_code_digest() -> str:
    """A digest of what turns KanjiVG into the base's training rasters: the synthesizer, the
    feature code and the KanjiVG version. A base is reused only when it matches, so a synthesizer
    change trains a new one instead of fine-tuning on one made from other data."""
    import hashlib
    from importlib import metadata

    from kana import synth

    h = hashlib.sha256()
    for module in (synth, features):
        h.update(Path(module.__file__).read_bytes())
    h.update(metadata.version("kanjivg").encode())
    return h.hexdigest()[:16]


def find_kanji_base(settings: dict) -> str:
    """The newest registered `kana-kanji-base` version trained with these settings and this
    raster code, or '' when there is none. A registry that cannot be searched is an error here,
    before any run starts: a base trained in its place could not be registered either."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        versions = MlflowClient().search_model_versions(f"name = '{KANJI_BASE_MODEL_NAME}'")
    except MlflowException as e:
        raise MlflowException(f"cannot search the model registry ({mlflow.get_registry_uri()}) for "
                              f"a {KANJI_BASE_MODEL_NAME!r} to reuse: {e.message}") from e
    wanted = _base_tags(settings)
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if all(v.tags.get(k) == val for k, val in wanted.items()):
            return f"models:/{KANJI_BASE_MODEL_NAME}/{v.version}"
    return ""


def kuzushiji_files(folder: str | Path) -> tuple[Path, Path]:
    """Kuzushiji-49's images and labels files in `folder`, as distributed; a missing one is named."""
    paths = (Path(folder) / "k49-train-imgs.npz", Path(folder) / "k49-train-labels.npz")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"Kuzushiji-49 file missing: {p}")
    return paths


def _kuzushiji_array(path: Path) -> np.ndarray:
    """The array `arr_0` of one of Kuzushiji-49's .npz files; a file that holds none is named."""
    try:
        with np.load(path) as archive:  # an .npy file's array has no `with`: a TypeError
            return archive["arr_0"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected an .npz file with an array 'arr_0' (Kuzushiji-49's "
                         f"layout): {e}") from None


def load_kuzushiji_npz(folder: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Kuzushiji-49 as distributed (`k49-train-imgs.npz`, `k49-train-labels.npz`, key `arr_0`,
    28x28 uint8 ink-bright images) -> 32x32 rasters padded like kana's, labels, class count."""
    imgs_path, labels_path = kuzushiji_files(folder)
    imgs, labels = _kuzushiji_array(imgs_path), _kuzushiji_array(labels_path)
    integers = np.issubdtype(labels.dtype, np.integer)
    if labels.ndim != 1 or not labels.size or not integers or labels.min() < 0:
        lowest = f", lowest {labels.min()}" if labels.size and integers else ""
        raise ValueError(f"{labels_path}: expected one class number (an integer from 0) per image, "
                         f"got {labels.dtype} of shape {labels.shape}{lowest}")
    labels = labels.astype(np.int64)
    if imgs.ndim != 3 or imgs.shape[1:] != (28, 28) or len(imgs) != len(labels):
        raise ValueError(f"{imgs_path}: expected (N, 28, 28) images matching {len(labels)} labels, got {imgs.shape}")
    pad = features.RASTER_PAD
    rasters = np.pad(imgs.astype(np.uint8), ((0, 0), (pad, pad), (pad, pad)))
    return rasters, labels, int(labels.max()) + 1


def kanji_inputs(kanji_classes: int, per_class: int, seed: int, antialias: int = 1,
                 directions: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Synthesized KanjiVG kanji as the CNNs' input, (N, 32, 32, 1 + directions), drawn with the
    same recipe as kana's own samples (`antialias`, `directions`: as the CNN's input is drawn)."""
    from kana.synth import kanji_characters, synthesize_dataset

    chars = kanji_characters(kanji_classes, seed)
    label_of = {c: i for i, c in enumerate(chars)}
    samples = synthesize_dataset(chars, per_class, seed)
    resampled = features.resample_samples([s for _, s in samples], features.N_POINTS, features.MAX_GAP)
    config = ModelConfig("base", "raster", [], features.N_POINTS, 0, "", raster_antialias=antialias,
                         directions=directions)
    labels = np.array([label_of[c] for c, _ in samples])
    return model_inputs(config, resampled), labels, len(chars)


def train_kanji_base(base_source: str, kanji_classes: int, kanji_per_class: int, base_epochs: int,
                     filters: int, seed: int, antialias: int = 1, directions: int = 0) -> str:
    """Train the CNN base on other characters in a nested run and register it; returns its URI."""
    import mlflow

    from kana.models import build_cnn

    settings = kanji_base_settings(base_source, kanji_classes, kanji_per_class, base_epochs, filters,
                                   seed, antialias, directions)
    with mlflow.start_run(run_name="kanji-base", nested=True):
        mlflow.set_tags({"kana.entry_point": "kanji_base", **_base_tags(settings)})
        log_params(settings)
        if base_source == "kanjivg":
            x, labels, n_classes = kanji_inputs(kanji_classes, kanji_per_class, seed, antialias, directions)
        else:
            rasters, labels, n_classes = load_kuzushiji_npz(base_source)
            x = raster_batch_to_input(rasters)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(labels))
        n_val = max(1, len(order) // 10)
        val, train = order[:n_val], order[n_val:]
        model = build_cnn(n_classes, x.shape[1:], filters=filters)
        log_params({"n_classes": n_classes, "n_train": len(train), "n_val": len(val)})
        history, epoch_seconds = _fit(
            model, x[train], labels[train], x[val], labels[val], epochs=base_epochs, batch_size=64,
            patience=2, seed=seed, augment=True, class_weight=None, learning_rate=1e-3,
        )
        mlflow.log_metrics({"seconds_per_epoch": float(np.mean(epoch_seconds)),
                            "peak_rss_mb": peak_rss_mb()})
        info = mlflow.keras.log_model(model, name="model", registered_model_name=KANJI_BASE_MODEL_NAME)
        from mlflow.tracking import MlflowClient

        version = info.registered_model_version
        for k, v in _base_tags(settings).items():
            MlflowClient().set_model_version_tag(KANJI_BASE_MODEL_NAME, version, k, v)
        return f"models:/{KANJI_BASE_MODEL_NAME}/{version}"
