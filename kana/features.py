"""Features: what a model sees of a sample, computed one way for training and serving.

- `resample_strokes`: every stroke to `n_points` on the notebook's B-spline (raw points as the
  control points of a clamped uniform degree-3 curve, geomdl's construction, sampled uniformly).
  geomdl is the reference; here the curve is a cached basis matrix per control-point count, so a
  stroke is one small matrix product (equal to geomdl to ~1e-15, and hundreds of times faster).
- `fill_long_gaps`: points added along a stroke's long straight runs before the spline. The
  spline does not pass through its control points: a stroke recorded as its turning points alone
  (pen dictionaries, fast writers) lost its corners, by 5-8% of the character's size in the median
  and up to a third of it (そ's zigzag became a loop like ろ's). With the runs filled, the curve
  keeps within about 1% of what was drawn; densely recorded strokes keep their path (their
  120 points spread more evenly along fast straight runs).
  `resample_samples` does both, for a batch, in training and serving alike.
- `render_raster`: the CNN input, the character fitted into a 28x28 image keeping its aspect, y
  flipped to image convention, drawn with Pillow (width 1) and padded to 32x32. `render_rasters`
  draws a batch's. The notebook drew pixels on or off (`antialias=1`, what a dataset stores); the
  CNNs take rasters drawn at `ANTIALIAS` times the size and box-filtered down, so a pixel keeps
  how much of it a stroke covers (where a small ゜ or a tap runs within a pixel).
- `render_direction_rasters`: the plain CNN's other channels (`train_cnn -P directions=4`, the
  default): the same box, the ink split by the orientation each bit of a stroke runs in (modulo
  180 degrees, so order and direction still do not show), measured along the path smoothed over
  a few points so that a finger's jitter does not scatter it.
- `lstm_tensor`: the LSTM input, per stroke (x, y, cos, sin) side by side, zero padded to
  `max_strokes`, then scaled by (a + 1) / 2 as the notebook did; optionally with the character
  fitted to the box first (`fit_box`). `lstm_tensors` builds a batch's at once. A sample with
  more strokes than `max_strokes` has its closest strokes joined first (`join_closest_strokes`).
- `pen_path_tensors`: the LSTM's other input (`train_lstm -P encoding=pen_path`), the whole pen
  path as one sequence of points with a pen-down flag, which does not depend on the stroke count.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

N_POINTS = 120
MAX_GAP = 0.02  # fill_long_gaps' longest run between points, as a share of the character's size
RASTER_SIZE = 28
RASTER_PAD = 2
STROKE_WIDTH = 1
ANTIALIAS = 4  # the CNNs' rasters: drawn at 4x the size, then each 4x4 block averaged
MAX_ANTIALIAS = 8
MIN_EXTENT = 1e-9  # canvas units: a character no larger is a dot, drawn in the middle


# --------------------------------------------------------------------------- B-spline resampling


def clamped_uniform_knots(degree: int, n_ctrl: int) -> np.ndarray:
    """geomdl's `generate_knot_vector(degree, n_ctrl)`: clamped ends, uniform interior."""
    n_interior = n_ctrl - degree - 1
    interior = np.linspace(0.0, 1.0, n_interior + 2)[1:-1]
    return np.concatenate([np.zeros(degree + 1), interior, np.ones(degree + 1)])


@lru_cache(maxsize=1024)
def bspline_basis(n_ctrl: int, n_points: int) -> np.ndarray:
    """(n_points, n_ctrl) matrix B with `B @ ctrl` = the curve sampled at n_points uniform params.

    Degree 3, or n_ctrl - 1 when a stroke has fewer than 4 points (a cubic needs 4). Basis values
    come from Cox-de Boor (The NURBS Book, A2.2) with geomdl's span search, vectorised over u.
    """
    if n_ctrl == 1:
        return np.ones((n_points, 1))
    degree = min(3, n_ctrl - 1)
    knots = clamped_uniform_knots(degree, n_ctrl)
    u = np.linspace(0.0, 1.0, n_points)
    # geomdl's find_span_linear: the last span whose start is <= u, capped at n_ctrl - 1.
    span = np.searchsorted(knots, u, side="right") - 1
    span = np.clip(span, degree, n_ctrl - 1)
    n = np.zeros((n_points, degree + 1))
    n[:, 0] = 1.0
    left = np.zeros((n_points, degree + 1))
    right = np.zeros((n_points, degree + 1))
    for j in range(1, degree + 1):
        left[:, j] = u - knots[span + 1 - j]
        right[:, j] = knots[span + j] - u
        saved = np.zeros(n_points)
        for r in range(j):
            temp = n[:, r] / (right[:, r + 1] + left[:, j - r])
            n[:, r] = saved + right[:, r + 1] * temp
            saved = left[:, j - r] * temp
        n[:, j] = saved
    basis = np.zeros((n_points, n_ctrl))
    rows = np.arange(n_points)[:, None]
    cols = span[:, None] - degree + np.arange(degree + 1)[None, :]
    basis[rows, cols] = n
    basis.setflags(write=False)
    return basis


def resample_stroke(points: np.ndarray, n_points: int = N_POINTS) -> np.ndarray:
    """One stroke (N, 2) -> (n_points, 2) on the B-spline through its points as control points."""
    points = np.asarray(points, dtype=np.float64)
    return bspline_basis(len(points), n_points) @ points


def resample_strokes(strokes, n_points: int = N_POINTS) -> np.ndarray:
    """A sample's strokes -> (n_strokes, n_points, 2), app coordinates (y up) kept."""
    out = np.empty((len(strokes), n_points, 2))
    for i, s in enumerate(strokes):
        out[i] = resample_stroke(s, n_points)
    return out


def fill_long_gaps(samples: list, max_gap: float) -> list[list[np.ndarray]]:
    """Each sample's strokes with every segment longer than `max_gap` times that character's
    longer side cut into equal pieces no longer than that: the same path, drawn points kept, so
    that the B-spline through them as control points follows the path instead of cutting its
    corners. Measured against the character, a character drawn small is treated like a big one."""
    points, stroke_ends = _laid_end_to_end(samples, max_gap)
    strokes = iter(np.split(points, stroke_ends[:-1]))
    return [[next(strokes) for _ in sample] for sample in samples]


def sample_boxes(xy: np.ndarray, firsts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of each sample of a batch laid end to end: `xy` (2, N) holds x and y as
    rows (numpy reduces an (N, 2) array over N many times slower), and sample k's points start at
    `firsts[k]` (every sample has some). Returns the corners lo and hi, each (2, n_samples)."""
    return np.minimum.reduceat(xy, firsts, axis=1), np.maximum.reduceat(xy, firsts, axis=1)


def _laid_end_to_end(samples: list, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Every stroke of every sample, gaps filled (`fill_long_gaps`), one after the other: the
    points (N, 2) and where each stroke ends. A batch in a few array operations (one sample at a
    time, the filling took as long as the spline)."""
    strokes = [np.asarray(s, dtype=np.float64) for sample in samples for s in sample]
    if not strokes:
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    stroke_ends = np.cumsum([len(s) for s in strokes])
    points = np.concatenate(strokes)
    if max_gap <= 0:
        return points, stroke_ends
    points_per_sample = np.array([sum(len(s) for s in sample) for sample in samples])
    xy = points.T.copy()
    has_points = points_per_sample > 0
    lo, hi = sample_boxes(xy, (np.cumsum(points_per_sample) - points_per_sample)[has_points])
    extent = np.zeros(len(samples))
    extent[has_points] = (hi - lo).max(axis=0)
    gap = np.repeat(max_gap * extent, points_per_sample)[:-1]  # for each segment, its sample's
    gap[gap <= 0] = np.inf  # a dot, or a sample that is one: nothing to cut
    seg = np.diff(xy, axis=1)
    pieces = np.maximum(1, np.ceil(np.hypot(seg[0], seg[1]) / gap)).astype(np.int64)
    pieces[stroke_ends[:-1] - 1] = 1  # the jump from one stroke to the next is not cut
    if (pieces == 1).all():
        return points, stroke_ends
    # segment i becomes pieces[i] points, evenly along it: the drawn points move to moved_to, and
    # the new ones are interpolated between them
    moved_to = np.concatenate([[0], np.cumsum(pieces)])
    at = np.arange(moved_to[-1] + 1)
    filled = np.column_stack([np.interp(at, moved_to, xy[0]), np.interp(at, moved_to, xy[1])])
    return filled, moved_to[stroke_ends - 1] + 1


def resample_samples(samples: list, n_points: int = N_POINTS, max_gap: float = 0.0) -> list[np.ndarray]:
    """Each sample's resampled strokes, (n_strokes, n_points, 2) float32: what every model's
    features start from, in training and serving.

    `max_gap` > 0: `fill_long_gaps` first; 0: the notebook's spline on the raw points, as models
    trained before the gap filling expect."""
    points, stroke_ends = _laid_end_to_end(samples, max_gap)
    out = np.empty((len(stroke_ends), n_points, 2), dtype=np.float32)
    start = 0
    for i, end in enumerate(stroke_ends.tolist()):
        out[i] = resample_stroke(points[start:end], n_points)
        start = end
    firsts = np.cumsum([0] + [len(sample) for sample in samples])
    return [out[a:b] for a, b in zip(firsts[:-1], firsts[1:])]


def resample_for_model(strokes, n_points: int = N_POINTS, max_gap: float = 0.0) -> np.ndarray:
    """`resample_samples` of one sample."""
    return resample_samples([strokes], n_points, max_gap)[0]


def resample_stroke_geomdl(points: np.ndarray, n_points: int = N_POINTS) -> np.ndarray:
    """The notebook's reference implementation with geomdl (slow; used by tests and benchmarks)."""
    from geomdl import BSpline, utilities

    points = np.asarray(points, dtype=np.float64)
    if len(points) == 1:
        return np.repeat(points, n_points, axis=0)
    curve = BSpline.Curve()
    curve.degree = min(3, len(points) - 1)
    curve.ctrlpts = points.tolist()
    curve.knotvector = utilities.generate_knot_vector(curve.degree, len(points))
    curve.sample_size = n_points
    return np.asarray(curve.evalpts)


# --------------------------------------------------------------------------- CNN raster


def to_image_coords(resampled: np.ndarray) -> np.ndarray:
    """Flip y: the app's canvas has y up, images and the notebook's features have y down."""
    return resampled * np.array([1.0, -1.0])


def fit_to_pixels(strokes_img: np.ndarray, size: int, width: int, batched: bool = False) -> np.ndarray:
    """Scale and centre the points to fill a `size` square, keeping aspect, leaving room for width.

    `strokes_img` holds one character's points (..., 2), or with `batched` G characters'
    (G, ..., 2), each fitted on its own."""
    pts = strokes_img if batched else strokes_img[None]
    xs, ys = pts[..., 0].reshape(len(pts), -1), pts[..., 1].reshape(len(pts), -1)
    # per coordinate: numpy reduces a (n, 2) array over its long axis 20 times slower
    lo, hi = np.stack([xs.min(1), ys.min(1)], axis=1), np.stack([xs.max(1), ys.max(1)], axis=1)
    extent = (hi - lo).max(axis=1)
    usable = size - 1 - (width - 1)
    # a tap's points differ by rounding at most (1e-17 in float64): a dot, not a line to blow up
    scale = np.divide(usable, extent, out=np.zeros_like(extent), where=extent > MIN_EXTENT)
    centre = (lo + hi) / 2.0
    per_char = (len(pts),) + (1,) * (pts.ndim - 2)
    fitted = (pts - centre.reshape(per_char + (2,))) * scale.reshape(per_char + (1,)) + (size - 1) / 2.0
    return fitted if batched else fitted[0]


def render_raster(
    resampled: np.ndarray,
    size: int = RASTER_SIZE,
    pad: int = RASTER_PAD,
    width: int = STROKE_WIDTH,
    antialias: int = 1,
) -> np.ndarray:
    """Resampled strokes (app coords) -> uint8 image (size + 2 pad) squared, ink 255 on 0.
    `antialias` > 1: drawn that many times the size (strokes as much wider, with round ends, so a
    tap stays a dot) and box-filtered down, a pixel's value the share of it the stroke covers."""
    return render_rasters([resampled], size, pad, width, antialias)[0]


def render_rasters(
    resampled: list[np.ndarray],
    size: int = RASTER_SIZE,
    pad: int = RASTER_PAD,
    width: int = STROKE_WIDTH,
    antialias: int = 1,
) -> np.ndarray:
    """`render_raster` of each sample, (N, size + 2 pad, size + 2 pad): the same pixels, with
    the fit computed together for the samples of each stroke count and one image drawn over and
    over (a batch of 1,000: 49-76 ms instead of 71-146 here; anti-aliased, about 2.5x that)."""
    return _draw_strokes(resampled, lambda n: [255] * n, size, pad, width, antialias)


def render_order_raster(resampled: np.ndarray, size: int = RASTER_SIZE, pad: int = RASTER_PAD,
                        width: int = STROKE_WIDTH, antialias: int = 1) -> np.ndarray:
    """A second raster channel for the CNN: each stroke drawn with an intensity that grows with
    its place in the drawing order, (i + 1) / n of 255 for stroke i of n (later strokes drawn
    over earlier ones), so the network sees the order a raster alone hides."""
    return render_order_rasters([resampled], size, pad, width, antialias)[0]


def render_order_rasters(resampled: list[np.ndarray], size: int = RASTER_SIZE, pad: int = RASTER_PAD,
                         width: int = STROKE_WIDTH, antialias: int = 1) -> np.ndarray:
    """`render_order_raster` of each sample, (N, size + 2 pad, size + 2 pad), drawn as a batch."""
    return _draw_strokes(resampled, lambda n: [round(255 * (i + 1) / n) for i in range(n)],
                         size, pad, width, antialias)


DIRECTION_CHANNELS = (4, 8)  # the orientation bins a direction raster may have
_SPLAT_STEP = 0.5  # most pixels of a stroke's smoothed length between the points its ink is laid at
# A segment's orientation and length are its chord's over 3 points either side: taken segment by
# segment, a finger's jitter (sd 0.5% of the canvas at a point every 0.25%) scattered a quarter of
# the ink and the CNN read 31% of such samples (98.6% this way; docs/experiments.md).
ORIENTATION_SPAN = 3
_SPLAT_CHUNK = 1024  # samples drawn at once (bounds the memory of a large batch)


def render_direction_rasters(resampled: list[np.ndarray], n_directions: int = 4,
                             size: int = RASTER_SIZE, pad: int = RASTER_PAD) -> np.ndarray:
    """Directional feature maps, (N, size + 2 pad, size + 2 pad, n_directions) float32 in [0, 1].

    The strokes are fitted as for `render_raster`, and each bit of a stroke lays its ink in the
    channels of the two orientations (of `n_directions` spread over 180 degrees) nearest its own,
    shared linearly between them. Orientation modulo 180 degrees, so neither the strokes' order
    nor their direction shows; what shows is what a raster leaves the network to infer from a
    1-pixel line, which way each part of the character runs (the classic input of online
    handwriting recognisers). Ink is laid bilinearly at points every half pixel along the path,
    a pixel's value the length of path near it (capped at 1); a tap of no length lays none. Each
    bit's orientation and length are those of the path smoothed over `ORIENTATION_SPAN` points
    either side, so a jittery recording reads as the path it follows."""
    check_directions(n_directions)
    side = size + 2 * pad
    out = np.zeros((len(resampled), side, side, n_directions), dtype=np.float32)
    for members in _by_stroke_count(resampled).values():
        for start in range(0, len(members), _SPLAT_CHUNK):
            chunk = members[start : start + _SPLAT_CHUNK]
            group = to_image_coords(np.stack([resampled[k] for k in chunk]))
            pixels = fit_to_pixels(group, size, STROKE_WIDTH, batched=True) + pad  # (G, S, P, 2)
            out[chunk] = _splat_directions(pixels, n_directions, side)
    return out


def check_directions(n_directions: int) -> None:
    """Refuse an orientation count the direction rasters do not draw."""
    if n_directions not in DIRECTION_CHANNELS:
        raise ValueError(f"directions must be one of {DIRECTION_CHANNELS}, got {n_directions}")


def _splat_directions(pixels: np.ndarray, n_directions: int, side: int) -> np.ndarray:
    """`render_direction_rasters` of G samples with the same stroke count, (G, S, P, 2) pixels.
    Each stroke's ink is laid at points spread evenly along its smoothed length, half a pixel
    apart or closer (not at every resampled point: they lie 0.1 pixel apart in the median), each
    on the path as drawn; a sample's maps do not depend on the samples drawn with it."""
    g, n_strokes, n_points = pixels.shape[:3]
    n_segments = n_points - 1
    # each segment's way and length from the chord over the ORIENTATION_SPAN points either side
    segment = np.arange(n_segments)
    ahead = np.minimum(segment + 1 + ORIENTATION_SPAN, n_points - 1)
    behind = np.maximum(segment - ORIENTATION_SPAN, 0)
    chord = (pixels[:, :, ahead] - pixels[:, :, behind]).reshape(-1, 2)
    length = np.hypot(chord[:, 0], chord[:, 1]) / np.tile(ahead - behind, g * n_strokes)
    bin_pos = (np.arctan2(chord[:, 1], chord[:, 0]) % np.pi) / (np.pi / n_directions)
    lower = np.floor(bin_pos)
    upper_share = bin_pos - lower
    lower = lower.astype(np.int64) % n_directions
    # where the ink goes: points at equal steps of each stroke's smoothed length
    ends = np.cumsum(length.reshape(-1, n_segments), axis=1)  # (G * S, P - 1)
    total = ends[:, -1]
    count = np.maximum(1, np.ceil(total / _SPLAT_STEP)).astype(np.int64)
    stroke = np.repeat(np.arange(len(total)), count)
    at = (np.arange(len(stroke)) - (np.cumsum(count) - count)[stroke] + 0.5) / count[stroke] * total[stroke]
    apart = total.max(initial=0.0) + 1.0  # strokes laid end to end, apart, for one sorted search
    seg = np.searchsorted((ends + apart * np.arange(len(total))[:, None]).ravel(), at + apart * stroke,
                          side="right")
    seg = np.minimum(seg, stroke * n_segments + n_segments - 1)
    seg_length = length[seg]
    within = np.divide(at - (ends.ravel()[seg] - seg_length), seg_length,
                       out=np.full_like(at, 0.5), where=seg_length > 0)
    start = pixels[:, :, :-1].reshape(-1, 2)[seg]
    points = start + np.diff(pixels, axis=2).reshape(-1, 2)[seg] * within[:, None]
    ink = (total / count)[stroke]
    sample = stroke // n_strokes
    bin_below, share_above = lower[seg], upper_share[seg]
    bins = ((bin_below, 1 - share_above), ((bin_below + 1) % n_directions, share_above))
    x0, y0 = np.floor(points[:, 0]), np.floor(points[:, 1])
    fx, fy = points[:, 0] - x0, points[:, 1] - y0
    # each point's pixel and the next along x and y, kept in the image once, not once a corner
    # (with np.clip, slow on small arrays, a sample's maps took 0.20-0.24 ms, now 0.18-0.19)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xs = [np.minimum(np.maximum(x0 + d, 0), side - 1) for d in (0, 1)]
    rows = [(sample * side + np.minimum(np.maximum(y0 + d, 0), side - 1)) * side for d in (0, 1)]
    flat_index, flat_ink = [], []
    for dx, dy, corner in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                           (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        pixel = rows[dy] + xs[dx]
        for b, share in bins:
            flat_index.append(pixel * n_directions + b)
            flat_ink.append(ink * corner * share)
    maps = np.bincount(np.concatenate(flat_index), np.concatenate(flat_ink),
                       minlength=g * side * side * n_directions)
    return np.minimum(maps, 1.0).astype(np.float32).reshape(g, side, side, n_directions)


def check_antialias(antialias: int) -> None:
    """Refuse a drawing scale the rasters cannot take (1: off; beyond 8 costs time for nothing)."""
    if not 1 <= antialias <= MAX_ANTIALIAS:
        raise ValueError(f"antialias must be 1-{MAX_ANTIALIAS}, got {antialias}")


def _by_stroke_count(resampled: list[np.ndarray]) -> dict[int, list[int]]:
    """Indices of the samples with each stroke count, in order: resampled samples with the same
    count stack into one array, so a batch's features are computed a group at a time."""
    groups: dict[int, list[int]] = {}
    for k, r in enumerate(resampled):
        groups.setdefault(len(r), []).append(k)
    return groups


def _draw_strokes(resampled: list[np.ndarray], fills: Callable[[int], list[int]], size: int, pad: int,
                  width: int, antialias: int = 1) -> np.ndarray:
    """Each sample's strokes fitted into a `size` square (y flipped), stroke i of n drawn in
    fills(n)[i], then padded; with `antialias` > 1 drawn that much larger and box-filtered down."""
    check_antialias(antialias)
    out = np.zeros((len(resampled), size + 2 * pad, size + 2 * pad), dtype=np.uint8)
    side, pen = size * antialias, width * antialias
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    for members in _by_stroke_count(resampled).values():
        group = to_image_coords(np.stack([resampled[k] for k in members]))
        for k, pixels in zip(members, fit_to_pixels(group, side, pen, batched=True)):
            draw.rectangle((0, 0, side - 1, side - 1), fill=0)  # what the previous sample left
            for stroke, fill in zip(pixels, fills(len(pixels))):
                if antialias == 1:
                    draw.line(stroke.ravel().tolist(), fill=fill, width=width)
                    continue
                draw.line(stroke.ravel().tolist(), fill=fill, width=pen, joint="curve")
                r = pen / 2  # round ends: Pillow draws a wide line of no length as one pixel
                for x, y in (stroke[0], stroke[-1]):
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
            small = img if antialias == 1 else img.reduce(antialias)
            out[k, pad : pad + size, pad : pad + size] = np.asarray(small)
    return out


# --------------------------------------------------------------------------- LSTM tensor


def stroke_directions(stroke_img: np.ndarray) -> np.ndarray:
    """(n, 2) points -> (n, 2) unit direction (cos, sin) of travel at each point.

    The direction at point i is towards point i + 1 (the last point keeps the previous one). Where
    the pen did not move, the nearest defined direction is used, as the notebook filled NaNs from
    neighbours; a stroke that never moves (a dot) gets (0, 0).
    """
    delta = np.diff(stroke_img, axis=0)
    length = np.hypot(delta[:, 0], delta[:, 1])
    moving = length > 1e-12
    if not moving.any():
        return np.zeros_like(stroke_img)
    unit = np.zeros_like(delta)
    unit[moving] = delta[moving] / length[moving, None]
    idx = np.flatnonzero(moving)
    # nearest moving segment for every segment (ties go to the earlier one)
    pos = np.searchsorted(idx, np.arange(len(delta)))
    prev_idx = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    next_idx = idx[np.clip(pos, 0, len(idx) - 1)]
    seg = np.arange(len(delta))
    use_next = np.abs(next_idx - seg) < np.abs(seg - prev_idx)
    nearest = np.where(moving, seg, np.where(use_next, next_idx, prev_idx))
    unit = unit[nearest]
    return np.vstack([unit, unit[-1:]])


def fit_to_box(strokes_img: np.ndarray, batched: bool = False) -> np.ndarray:
    """The character centred and scaled so its longer side spans [-1, 1], keeping its aspect: the
    strokes' position and size on the canvas no longer matter, as for the raster."""
    return fit_to_pixels(strokes_img, 3, 1, batched) - 1.0


def join_closest_strokes(resampled: np.ndarray, n_strokes: int) -> np.ndarray:
    """A sample's resampled strokes (n, n_points, 2) with the consecutive strokes whose end and
    start lie closest joined by a straight line, pair by pair, until `n_strokes` remain; each joined
    stroke is resampled evenly along its length.

    Why: the LSTM's input has columns for `n_strokes` strokes, the most any class has, and people
    sometimes draw more (a stroke lifted midway, a stray dot on a ぎゃ). Joined, such a sample looks
    to the LSTM as it would from a writer who did not lift the pen, which it has learned to read,
    and the CNNs and the stroke-count prior still see every stroke as drawn."""
    strokes = list(resampled)
    n_points = resampled.shape[1]
    while len(strokes) > max(n_strokes, 1):
        gaps = [np.hypot(*(strokes[i + 1][0] - strokes[i][-1])) for i in range(len(strokes) - 1)]
        i = int(np.argmin(gaps))
        path = np.concatenate([strokes[i], strokes[i + 1]]).astype(np.float64)
        along = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
        at = np.linspace(0.0, along[-1], n_points)
        strokes[i : i + 2] = [np.column_stack([np.interp(at, along, path[:, 0]),
                                               np.interp(at, along, path[:, 1])])]
    return np.stack(strokes).astype(resampled.dtype)


def lstm_tensor(resampled: np.ndarray, max_strokes: int, fit_box: bool = False) -> np.ndarray:
    """Resampled strokes (app coords) -> float32 (n_points, 4 * max_strokes), the notebook's layout
    (x, y as drawn on the canvas), or with `fit_box` the character fitted to the whole box first."""
    return lstm_tensors([resampled], max_strokes, fit_box)[0]


def lstm_tensors(resampled: list[np.ndarray], max_strokes: int, fit_box: bool = False) -> np.ndarray:
    """`lstm_tensor` of many samples -> (n_samples, n_points, 4 * max_strokes). A sample with more
    strokes than that has its closest strokes joined first (`join_closest_strokes`).

    Samples with the same stroke count are computed together, as one array: a dozen array
    operations per stroke count instead of per sample. In a batch of 1,000 (serving's batches, and
    the training set) that took 0.03 ms a sample where one by one took 0.07-0.09 ms here."""
    if not resampled:
        raise ValueError("no samples")
    n_points = resampled[0].shape[1]
    out = np.zeros((len(resampled), n_points, max_strokes, 4), dtype=np.float32)
    resampled = [r if len(r) <= max_strokes else join_closest_strokes(r, max_strokes)
                 for r in resampled]
    by_count = _by_stroke_count(resampled)
    for n_strokes, ks in by_count.items():
        img = to_image_coords(np.stack([resampled[k] for k in ks]))  # (G, n_strokes, n_points, 2)
        if fit_box:
            img = fit_to_box(img, batched=True)
        delta = np.diff(img, axis=2)
        length = np.hypot(delta[..., 0], delta[..., 1])
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = delta / length[..., None]
        unit = np.concatenate([unit, unit[:, :, -1:]], axis=2)
        for g, i in zip(*np.nonzero((length <= 1e-12).any(axis=2))):  # pauses and dots: rare
            unit[g, i] = stroke_directions(img[g, i])
        rows = slice(None) if len(ks) == len(resampled) else ks  # a slice is quicker, where it can be
        out[rows, :, :n_strokes, :2] = img.transpose(0, 2, 1, 3)
        out[rows, :, :n_strokes, 2:] = unit.transpose(0, 2, 1, 3)
    out = out.reshape(len(resampled), n_points, 4 * max_strokes)
    out += 1.0
    out *= 0.5  # (a + 1) / 2, in place
    return out


# --------------------------------------------------------------------------- pen path (LSTM)


PEN_PATH_POINTS = 128
PEN_PATH_FEATURES = 5


def pen_path_tensors(resampled: list[np.ndarray], n_steps: int = PEN_PATH_POINTS,
                     fit_box: bool = True) -> np.ndarray:
    """The LSTM's other input: the whole pen path as one sequence, (n_samples, n_steps, 5).

    The strokes are laid end to end in drawing order, each stroke's end joined to the next one's
    start by a straight pen-up line, and that path is resampled to `n_steps` points evenly spaced
    along its length. Each point carries x, y (image coordinates, y down, the character fitted to
    the box with `fit_box`), the path's direction there (cos, sin; 0, 0 where it has none, as on a
    dot), all scaled by (a + 1) / 2 as `lstm_tensors` does, and whether the pen is down (1) or
    moving between strokes (0).

    Why: `lstm_tensors` gives stroke i its own columns, so a sample whose writer joined two
    strokes, or added a stray dot, shifts every later stroke into other columns and reads as
    something else. Here two strokes joined by a line differ from the same strokes apart only in
    the pen flag along that line, and the sequence does not depend on the table's stroke count."""
    if not resampled:
        raise ValueError("no samples")
    out = np.empty((len(resampled), n_steps, PEN_PATH_FEATURES), dtype=np.float32)
    for n_strokes, ks in _by_stroke_count(resampled).items():
        img = to_image_coords(np.stack([resampled[k] for k in ks]).astype(np.float64))
        if fit_box:
            img = fit_to_box(img, batched=True)
        g, n_points = len(ks), img.shape[2]
        path = img.reshape(g, n_strokes * n_points, 2)
        seg = np.diff(path, axis=1)  # (g, L - 1, 2)
        seg_len = np.hypot(seg[..., 0], seg[..., 1])
        pen_up = np.zeros(seg_len.shape[1], dtype=bool)
        pen_up[n_points - 1 :: n_points] = True  # the jump from each stroke's end to the next start
        cum = np.concatenate([np.zeros((g, 1)), np.cumsum(seg_len, axis=1)], axis=1)  # (g, L)
        total = cum[:, -1:]
        # every sample's arc positions in one sorted array (sample j's in [2j, 2j + 1]), so one
        # searchsorted finds each target's segment for the whole group
        scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
        offsets = 2.0 * np.arange(g)[:, None]
        flat = (cum * scale + offsets).ravel()
        targets = np.linspace(0.0, 1.0, n_steps)[None, :] + offsets
        at = np.searchsorted(flat, targets.ravel(), side="right").reshape(g, n_steps) - 1
        at -= np.arange(g)[:, None] * cum.shape[1]
        at = np.clip(at, 0, seg_len.shape[1] - 1)  # the path's last point: on its last segment
        rows = np.arange(g)[:, None]
        length = seg_len[rows, at]
        along = np.linspace(0.0, 1.0, n_steps)[None, :] * total  # each target's arc position
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(length > 0, (along - cum[rows, at]) / length, 0.0)
            unit = np.where(length[..., None] > 1e-12, seg[rows, at] / length[..., None], 0.0)
        points = path[rows, at] + np.clip(frac, 0.0, 1.0)[..., None] * seg[rows, at]
        out[ks, :, :2] = (points + 1.0) / 2.0
        out[ks, :, 2:4] = (unit + 1.0) / 2.0
        out[ks, :, 4] = ~pen_up[at]
    return out
