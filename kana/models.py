"""The three model families, as the notebook built them, in Keras 3.

- `build_cnn`: Conv f-f, pool, 2f-2f, pool, 4f-4f, pool, Dense, softmax, on 32x32 rasters (the
  notebook: f = 32). Each convolution is followed by batch normalisation and the Dense layer has
  128 units by default (the notebook: no normalisation, Dense 40, both reachable by params): with
  108 classes the notebook's net reached 93% validation accuracy in 8 epochs here, too slow for 2
  CPU cores. `train_cnn`/`train_transfer` use f = 16: a quarter of the compute per sample in
  serving, where the ensemble with the LSTM reads as well as with f = 32. `train_cnn` gives it
  five channels (the raster and its ink in 4 orientations, `features.render_direction_rasters`),
  `train_transfer` the raster alone, as its base was trained.
- `build_transfer`: the convolutional base of a CNN trained on other characters (kanji), a new
  Dense head, and the first `frozen_blocks` convolution blocks frozen.
- `build_lstm`: LSTM over the (n_points, 4 * max_strokes) stroke tensor (or the (128, 5) pen
  path, `features.pen_path_tensors`), dropout, Dense, softmax.
  By default the 120 time steps are average-pooled by 2 first (4x faster per epoch here, and
  better validation accuracy per minute) and the Dense layer has 128 units.
- `augmentation`: the notebook's training distortions (small rotation, shift, shear, zoom; never
  mirrored) as Keras preprocessing layers, applied in the input pipeline only.
- `distort_pen_paths`: the LSTM's counterpart, on the resampled pen paths before they become its
  input (the notebook's LSTM had none): each stroke moved on its own (`distort_each_stroke`),
  then the whole character; `move_one_stroke`, its stroke-order counterpart.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import layers

from kana.features import sample_boxes


CNN_BLOCKS = 3  # `build_cnn`'s convolution blocks, each ending in a pooling layer


def build_cnn(
    n_classes: int, input_shape=(32, 32, 1), dense_units: int = 128, batch_norm: bool = True,
    filters: int = 32,
) -> keras.Model:
    """`filters` is the first block's width (then 2x, 4x): 32 is the notebook's."""
    stack: list = [keras.Input(input_shape)]
    for width in (filters * 2**block for block in range(CNN_BLOCKS)):
        for _ in range(2):
            if batch_norm:
                stack += [layers.Conv2D(width, 3, padding="same", use_bias=False),
                          layers.BatchNormalization(momentum=0.9), layers.ReLU()]
            else:
                stack.append(layers.Conv2D(width, 3, activation="relu", padding="same"))
        stack.append(layers.MaxPooling2D())
    stack += [layers.Flatten(), layers.Dense(dense_units, activation="relu"),
              layers.Dense(n_classes, activation="softmax")]
    return keras.Sequential(stack, name="cnn")


def build_transfer(
    base: keras.Model, n_classes: int, frozen_blocks: int, dense_units: int = 128
) -> keras.Model:
    """The base's layers up to its head (its last two Dense layers), a fresh head, and the first
    `frozen_blocks` convolution blocks (everything up to that many pooling layers) frozen.

    The notebook froze its first block (layers 0-2) for the Kuzushiji-Kanji base and two blocks
    for the Kuzushiji-49 one.
    """
    check_frozen_blocks(frozen_blocks, conv_blocks(base))
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
    pools_seen = 0
    for layer in model.layers:
        if pools_seen >= frozen_blocks:
            break
        layer.trainable = False
        pools_seen += isinstance(layer, layers.MaxPooling2D)
    return model


def conv_blocks(base: keras.Model) -> int:
    """A CNN's convolution blocks, counted by their pooling layers: the most that can be frozen."""
    return sum(isinstance(layer, layers.MaxPooling2D) for layer in base.layers)


def check_frozen_blocks(frozen_blocks: int, blocks: int) -> None:
    """More blocks than the base has would freeze the new head too: nothing would train, and the
    run would end with a head of random weights (Keras only warns). A negative count would freeze
    nothing and 1.5 would freeze two blocks, silently, while the run logs what was asked."""
    if not isinstance(frozen_blocks, numbers.Integral) or frozen_blocks < 0:
        raise ValueError(f"frozen_blocks: expected a whole number from 0 to {blocks} (the base's "
                         f"convolution blocks), got {frozen_blocks}")
    if frozen_blocks > blocks:
        raise ValueError(f"frozen_blocks: the base has {blocks} convolution blocks, got {frozen_blocks} "
                         "(more would freeze the new head too)")


def build_lstm(
    n_classes: int, n_points: int, n_features: int, units: int = 128, dropout: float = 0.1,
    dense_units: int = 128, downsample: int = 2, bidirectional: bool = False,
) -> keras.Model:
    """`bidirectional`: a second LSTM of `units` reads the points from the strokes' ends back."""
    pool = [layers.AveragePooling1D(downsample)] if downsample > 1 else []
    rnn = layers.Bidirectional(layers.LSTM(units)) if bidirectional else layers.LSTM(units)
    return keras.Sequential(
        [
            keras.Input((n_points, n_features)),
            *pool,
            rnn,
            layers.Dropout(dropout),
            layers.Dense(dense_units, activation="relu"),
            layers.Dense(n_classes, activation="softmax"),
        ],
        name="lstm",
    )


def augmentation(seed: int) -> keras.Sequential:
    """Small rotation (4 degrees), shift (10%), shear and zoom (10%); never a mirror.

    Nearest-neighbour sampling keeps the 1-pixel strokes crisp (0 or 255) as validation, test and
    serving see them: bilinear sampling blurs them, and the batch-normalised CNN then scored
    0.94 on (blurred) training batches but 0.86 on crisp validation rasters here.
    """
    common = {"fill_mode": "constant", "interpolation": "nearest"}
    return keras.Sequential(
        [
            layers.RandomRotation(4 / 360, seed=seed, **common),
            layers.RandomTranslation(0.1, 0.1, seed=seed + 1, **common),
            layers.RandomShear(x_factor=0.15, y_factor=0.15, seed=seed + 2, **common),
            layers.RandomZoom(0.1, seed=seed + 3, **common),
        ],
        name="augmentation",
    )


def _flat_points(resampled: list[np.ndarray]):
    """A batch's points as one float64 (n, 2) array, with each sample's stroke count, the points a
    stroke and each sample's first and end rows in it: the distortions work on the whole batch."""
    counts = np.array([len(strokes) for strokes in resampled])
    n_points = resampled[0].shape[1]
    flat = np.concatenate([strokes.reshape(-1, 2) for strokes in resampled]).astype(np.float64)
    ends = np.cumsum(counts * n_points)
    return flat, counts, n_points, ends - counts * n_points, ends


def distort_each_stroke(resampled: list[np.ndarray], rng: np.random.Generator,
                        strength: float = 1.0) -> list[np.ndarray]:
    """Each stroke on its own turned (up to 8 degrees), stretched or shrunk (up to 15% along x and
    y) about its own centre and shifted (sigma 3% of the character's size), times `strength`.

    The synthesizer already places each stroke a little off, but once per sample; here every
    epoch draws anew, so the LSTM does not learn one sample's stroke layout. Over three seeds it
    read 3, 4 and 0 more of Tomoe's 47 real templates (docs/experiments.md, "Each stroke moved on
    its own in the LSTM's training")."""
    flat, counts, n_points, starts, _ = _flat_points(resampled)
    lo, hi = sample_boxes(flat.T.copy(), starts)
    size = np.repeat(np.maximum((hi - lo).max(axis=0), 1e-6), counts)[:, None, None]
    n = int(counts.sum())
    strokes = flat.reshape(n, n_points, 2)
    centre = strokes.mean(axis=1, keepdims=True)
    turn = np.deg2rad(rng.uniform(-8 * strength, 8 * strength, n))
    cos, sin = np.cos(turn), np.sin(turn)
    m = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    m = m * rng.uniform(1 - 0.15 * strength, 1 + 0.15 * strength, (n, 1, 2))
    shift = rng.normal(0.0, 0.03 * strength, (n, 1, 2)) * size
    moved = (np.einsum("sij,spj->spi", m, strokes - centre) + centre + shift).astype(np.float32)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [moved[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def distort_pen_paths(resampled: list[np.ndarray], rng: np.random.Generator,
                      stroke_distortion: float = 1.0) -> list[np.ndarray]:
    """Each sample's resampled strokes (n_strokes, n_points, 2) redrawn with each stroke moved on
    its own (`distort_each_stroke`, at `stroke_distortion`; 0 skips it), then with the sample's own
    small slant (4 degrees), shear (0.15), aspect (10%) about its centre, and each stroke shifted
    by about 1.5% of the character's size (sigma): every epoch shows the LSTM a new variant of
    each sample, as `augmentation` does for the CNNs. Position and size need none: the LSTM's
    input is fitted to the character's box."""
    if stroke_distortion:
        resampled = distort_each_stroke(resampled, rng, stroke_distortion)
    n = len(resampled)
    turn = np.deg2rad(rng.uniform(-4, 4, n))
    cos, sin = np.cos(turn), np.sin(turn)
    shear = rng.uniform(-0.15, 0.15, n)
    # rotation @ shear [[1, h], [0, 1]] @ diag(aspect), one (2, 2) matrix a sample
    m = np.stack([np.stack([cos, cos * shear - sin], -1), np.stack([sin, sin * shear + cos], -1)], -2)
    m = m * rng.uniform(0.9, 1.1, (n, 1, 2))
    # every point of the batch in one array, with its sample's matrix, centre and size
    flat, counts, n_points, starts, ends = _flat_points(resampled)
    lo, hi = sample_boxes(flat.T.copy(), starts)
    centre, size = ((lo + hi) / 2).T, np.maximum((hi - lo).max(axis=0), 1e-6)
    sample = np.repeat(np.arange(n), counts * n_points)
    shift = np.repeat(rng.normal(0.0, 0.015, (counts.sum(), 2)), n_points, axis=0)
    local = flat - centre[sample]
    moved = np.einsum("pij,pj->pi", m[sample], local) + centre[sample] + shift * size[sample, None]
    moved = moved.astype(np.float32)
    return [moved[a:b].reshape(k, n_points, 2) for a, b, k in zip(starts, ends, counts)]


def move_one_stroke(resampled: list[np.ndarray], fixed_tails: np.ndarray, rng: np.random.Generator,
                    share: float) -> list[np.ndarray]:
    """For `share` of the samples, one stroke of the kana's body written at another place in its
    order (`kana.synth.moved_stroke_order`): the synthesizer's order slips only swap two
    neighbours. `fixed_tails[k]`: how many of sample k's last strokes stay where they are (its
    voicing mark and a compound's small kana, `kana.synth.fixed_tail_strokes`). A raster does not
    see the order, so only the LSTM needs this; the synthetic data keeps its textbook orders and
    slips."""
    from kana.synth import moved_stroke_order

    out = list(resampled)
    for k in np.flatnonzero(rng.random(len(out)) < share):
        order = moved_stroke_order(len(out[k]), int(fixed_tails[k]), rng)
        if order is not None:
            out[k] = out[k][order]
    return out
