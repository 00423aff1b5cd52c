"""The three model families, as the notebook built them, in Keras 3.

- `build_cnn`: Conv 32-32, pool, 64-64, pool, 128-128, pool, Dense 40, softmax, on 32x32 rasters.
- `build_transfer`: the convolutional base of a CNN trained on other characters (kanji), a new
  Dense head, and the first `n_frozen` layers frozen.
- `build_lstm`: LSTM over the (n_points, 4 * max_strokes) stroke tensor, dropout, Dense, softmax.
- `augmentation`: the notebook's training distortions (small rotation, shift, shear, zoom; never
  mirrored) as Keras preprocessing layers, applied in the input pipeline only.
"""

from __future__ import annotations

import keras
from keras import layers


def build_cnn(n_classes: int, input_shape=(32, 32, 1), dense_units: int = 40) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(32, 3, activation="relu", padding="same"),
            layers.Conv2D(32, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu", padding="same"),
            layers.Conv2D(64, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, activation="relu", padding="same"),
            layers.Conv2D(128, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(dense_units, activation="relu"),
            layers.Dense(n_classes, activation="softmax"),
        ],
        name="cnn",
    )


def build_transfer(
    base: keras.Model, n_classes: int, n_frozen: int, dense_units: int = 40
) -> keras.Model:
    """The base's layers up to its head (its last two Dense layers), a fresh head, first layers frozen.

    As in the notebook, `n_frozen` counts layers from the input: 3 freezes the first two
    convolutions and their pooling, 6 the first two blocks.
    """
    body = base.layers[:-2]
    model = keras.Sequential(
        [keras.Input(base.input_shape[1:])]
        + body
        + [
            layers.Dense(dense_units, activation="relu", name="head_dense"),
            layers.Dense(n_classes, activation="softmax", name="head_softmax"),
        ],
        name="transfer",
    )
    for layer in model.layers[:n_frozen]:
        layer.trainable = False
    return model


def build_lstm(
    n_classes: int, n_points: int, n_features: int, units: int = 128, dropout: float = 0.1,
    dense_units: int = 40,
) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((n_points, n_features)),
            layers.LSTM(units),
            layers.Dropout(dropout),
            layers.Dense(dense_units, activation="relu"),
            layers.Dense(n_classes, activation="softmax"),
        ],
        name="lstm",
    )


def augmentation(seed: int) -> keras.Sequential:
    """Small rotation (4 degrees), shift (10%), shear and zoom (10%); never a mirror."""
    return keras.Sequential(
        [
            layers.RandomRotation(4 / 360, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1),
            layers.RandomShear(x_factor=0.15, y_factor=0.15, fill_mode="constant", seed=seed + 2),
            layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 3),
        ],
        name="augmentation",
    )
