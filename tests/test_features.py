"""Stroke maths against known values: geomdl equality, the notebook's printed numbers, y flip,
direction features, padding."""

import numpy as np
import pytest

from kana.classes import get_class

from kana.features import (
    MAX_GAP,
    bspline_basis,
    clamped_uniform_knots,
    fill_long_gaps,
    fit_to_box,
    fit_to_pixels,
    join_closest_strokes,
    lstm_tensor,
    lstm_tensors,
    pen_path_tensors,
    render_direction_rasters,
    render_order_raster,
    render_raster,
    render_rasters,
    resample_for_model,
    resample_samples,
    resample_stroke,
    resample_stroke_geomdl,
    resample_strokes,
    stroke_directions,
    to_image_coords,
)

# Stroke 1 of the notebook's raw ぞ sample and the first resampled points it printed (y flipped).
NOTEBOOK_STROKE = np.array([
    [-0.63829786, 0.54441524], [-0.59969783, 0.54115534], [-0.52203854, 0.53634429],
    [-0.28445774, 0.52590561], [-0.18277665, 0.52704024], [-0.11830277, 0.53096032],
    [-0.07959127, 0.53289294], [-0.05653203, 0.534132], [-0.06179174, 0.52601171],
    [-0.19258281, 0.38362145], [-0.28640158, 0.2893858], [-0.38861911, 0.19933558],
    [-0.46727445, 0.13545966], [-0.51671651, 0.09681916], [-0.54672268, 0.07867789],
    [-0.54990232, 0.07755327], [-0.50747295, 0.10083437], [-0.23254772, 0.1803453],
    [0.09554889, 0.21719646], [0.23005591, 0.23266578], [0.29517465, 0.24193215],
    [0.35456353, 0.25031304], [0.36077711, 0.25031304], [0.36175251, 0.2513938],
    [0.35126064, 0.25526381], [0.31375249, 0.25627375], [0.1178258, 0.17634535],
    [0.01229286, 0.09003234], [-0.06159948, 0.00566602], [-0.09971903, -0.06441617],
    [-0.10062052, -0.13813257], [0.05016579, -0.3305881], [0.18437094, -0.37684441],
    [0.28934664, -0.38636184], [0.46767394, -0.35640216],
])
NOTEBOOK_FIRST_POINTS = np.array([
    [-0.63829786, -0.54441524], [-0.60672055, -0.54194369], [-0.57271578, -0.53968049],
    [-0.53395568, -0.53746331], [-0.48813958, -0.53513149], [-0.43542595, -0.53267543],
    [-0.38035868, -0.53035499], [-0.32793501, -0.52845787], [-0.28294698, -0.52725816],
    [-0.24661001, -0.5267928],
])


def test_resample_reproduces_the_notebook_printout():
    out = to_image_coords(resample_stroke(NOTEBOOK_STROKE, 120))
    assert out.shape == (120, 2)
    np.testing.assert_allclose(out[:10], NOTEBOOK_FIRST_POINTS, atol=1e-8)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 9, 35, 120, 500])
def test_resample_equals_geomdl(n):
    rng = np.random.default_rng(n)
    pts = rng.uniform(-1, 1, (n, 2))
    for n_points in (120, 64, 7):
        diff = np.abs(resample_stroke(pts, n_points) - resample_stroke_geomdl(pts, n_points)).max()
        assert diff <= 1e-9


def test_resampled_curve_is_clamped_to_the_stroke_ends():
    pts = np.array([[0.0, 0.0], [0.3, 0.9], [0.6, -0.2], [1.0, 0.5], [0.2, 0.1]])
    out = resample_stroke(pts)
    np.testing.assert_allclose(out[0], pts[0], atol=1e-12)
    np.testing.assert_allclose(out[-1], pts[-1], atol=1e-12)


def test_basis_is_a_partition_of_unity_and_cached():
    for n in (2, 3, 4, 10, 77):
        basis = bspline_basis(n, 120)
        np.testing.assert_allclose(basis.sum(axis=1), 1.0, atol=1e-12)
        assert basis is bspline_basis(n, 120)
        assert not basis.flags.writeable


def test_knots_match_geomdl():
    from geomdl import utilities

    for degree, n in ((3, 4), (3, 10), (2, 3), (1, 2)):
        np.testing.assert_allclose(
            clamped_uniform_knots(degree, n), utilities.generate_knot_vector(degree, n), atol=1e-12
        )


def test_single_point_stroke_resamples_to_that_point():
    out = resample_stroke(np.array([[0.25, -0.5]]))
    assert out.shape == (120, 2)
    np.testing.assert_allclose(out, [[0.25, -0.5]] * 120)


def test_long_gaps_are_cut_into_equal_pieces_and_drawn_points_kept():
    """Gaps are measured against the character's longer side (0.1 here); the jump from one
    stroke to the next is not a gap; repeated points stay."""
    first = np.array([[0.0, 0.0], [0.1, 0.0], [0.1, 0.01], [0.1, 0.01]])
    second = np.array([[0.0, 0.05]])
    third = np.array([[0.0, 0.1], [0.0, 0.04]])
    filled = fill_long_gaps([[first, second, third]], 0.3)[0]
    assert len(filled) == 3
    np.testing.assert_allclose(filled[0], [[0, 0], [0.025, 0], [0.05, 0], [0.075, 0], [0.1, 0],
                                           [0.1, 0.01], [0.1, 0.01]])
    np.testing.assert_array_equal(filled[1], second)
    np.testing.assert_allclose(filled[2], [[0, 0.1], [0, 0.08], [0, 0.06], [0, 0.04]])
    for [nothing_to_fill] in (fill_long_gaps([[first]], 2.0), fill_long_gaps([[first]], 0.0),
                              fill_long_gaps([[first[:1]]], 0.01)):
        np.testing.assert_array_equal(nothing_to_fill[0], first[: len(nothing_to_fill[0])])


def _polyline_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest point of the polyline."""
    a, ab = polyline[:-1], np.diff(polyline, axis=0)
    t = ((points[:, None] - a[None]) * ab[None]).sum(-1) / np.maximum((ab**2).sum(-1), 1e-12)
    nearest = a[None] + np.clip(t, 0, 1)[..., None] * ab[None]
    return np.hypot(*(points[:, None] - nearest).transpose(2, 0, 1)).min(axis=1)


ZIGZAG = np.array([[-0.45, 0.72], [0.17, 0.66], [-0.71, 0.1], [0.49, 0.19], [0.0, -0.2], [0.06, -0.7]])


def test_a_stroke_of_turning_points_keeps_its_corners_once_its_gaps_are_filled():
    """The notebook's spline alone cuts a 6-point zigzag's corners by a fifth of its size; with
    the gaps filled first it stays within 1.5% of what was drawn, both ways."""
    size = np.ptp(ZIGZAG, axis=0).max()
    plain = resample_for_model([ZIGZAG], max_gap=0.0)[0]
    filled = resample_for_model([ZIGZAG], max_gap=0.02)[0]
    assert _polyline_distance(ZIGZAG, plain).max() > 0.2 * size
    assert _polyline_distance(ZIGZAG, filled).max() < 0.015 * size
    assert _polyline_distance(filled, ZIGZAG).max() < 0.015 * size
    np.testing.assert_array_equal(plain, resample_strokes([ZIGZAG])[0].astype(np.float32))


def test_gaps_are_measured_against_each_characters_size_also_in_a_batch():
    small = [ZIGZAG * 0.2, ZIGZAG[:2] * 0.2 + 0.5]
    big = [s * 5 for s in small]
    dot = [np.array([[0.3, 0.3]])]
    batch = resample_samples([small, dot, big, [NOTEBOOK_STROKE]], max_gap=0.02)
    np.testing.assert_allclose(batch[0] * 5, batch[2], atol=1e-5)
    for sample, resampled in zip([small, dot, big, [NOTEBOOK_STROKE]], batch):
        np.testing.assert_array_equal(resampled, resample_for_model(sample, max_gap=0.02))
    np.testing.assert_array_equal(batch[1], np.full((1, 120, 2), 0.3, dtype=np.float32))
    # a densely recorded stroke keeps its path, closer still to what was drawn
    plain, filled = resample_for_model([NOTEBOOK_STROKE])[0], resample_for_model([NOTEBOOK_STROKE], max_gap=0.02)[0]
    assert _polyline_distance(filled, plain).max() < 0.02
    assert _polyline_distance(NOTEBOOK_STROKE, filled).max() < 0.5 * _polyline_distance(NOTEBOOK_STROKE, plain).max()


def test_raster_flips_y_so_up_is_the_top_of_the_image():
    # A horizontal bar high on the canvas and a dot low on it: after the flip the bar is on top.
    strokes = [np.array([[-0.8, 0.9], [0.8, 0.9]]), np.array([[0.0, -0.9], [0.01, -0.9]])]
    img = render_raster(resample_strokes(strokes))
    assert img.shape == (32, 32) and img.dtype == np.uint8
    rows = np.flatnonzero(img.max(axis=1))
    assert rows.min() == 2 and rows.max() == 29  # fitted into 28x28, padded by 2
    top_row_ink = (img[rows.min()] > 0).sum()
    bottom_row_ink = (img[rows.max()] > 0).sum()
    assert top_row_ink > 20 and bottom_row_ink <= 3


def test_raster_keeps_aspect_and_centres():
    tall = [np.array([[0.0, -0.5], [0.0, 0.5]])]
    img = render_raster(resample_strokes(tall))
    cols = np.flatnonzero(img.max(axis=0))
    assert len(cols) == 1 and cols[0] in (15, 16)  # a centred vertical line, not stretched wide


def test_a_batch_of_rasters_is_each_sample_drawn_alone():
    """Drawn together (fits per stroke count, one image reused), every raster is the one the
    sample gets on its own: nothing of one sample is left in the next."""
    rng = np.random.default_rng(3)
    samples = [resample_strokes([rng.uniform(-1, 1, (rng.integers(2, 9), 2)) for _ in range(n)])
               for n in (1, 3, 1, 2, 3, 3, 1)]
    batch = render_rasters(samples)
    assert batch.shape == (7, 32, 32) and batch.dtype == np.uint8
    for sample, raster in zip(samples, batch):
        np.testing.assert_array_equal(raster, render_raster(sample))
    assert render_rasters([]).shape == (0, 32, 32)


def test_anti_aliased_raster_keeps_where_a_stroke_runs_within_a_pixel():
    """A bar fitted to run midway between two pixel rows: the notebook's drawing puts it all in
    one row, anti-aliased (drawn 4x larger, then each 4x4 block averaged) half in each."""
    bar = resample_strokes([np.array([[-1.0, 0.0], [1.0, 0.0]])])
    plain, smooth = render_raster(bar), render_raster(bar, antialias=4)
    assert smooth.shape == plain.shape == (32, 32) and smooth.dtype == np.uint8
    inner = slice(4, 28)  # away from the round ends
    assert (plain[15, inner] == 255).all() and not plain[16].any()
    assert (smooth[15, inner] == 128).all() and (smooth[16, inner] == 128).all()
    assert not np.delete(smooth, [15, 16], axis=0).any()
    np.testing.assert_array_equal(render_rasters([bar, bar], antialias=4)[1], smooth)


def test_an_anti_aliased_tap_stays_a_dot():
    """Pillow draws a wide line of no length as one pixel of the larger image, which averaging
    would all but erase: a tapped voicing mark must stay about a pixel's worth of ink."""
    strokes = [np.array([[-0.8, 0.8], [0.8, -0.8]]), np.array([[0.5, 0.5]])]
    smooth = render_raster(resample_strokes(strokes), antialias=4)
    alone = render_raster(resample_strokes([np.array([[-0.8, 0.8], [0.8, -0.8]])]), antialias=4)
    tap = smooth.astype(int) - alone
    rows, cols = np.nonzero(tap)
    assert 1 <= len(rows) <= 4 and np.ptp(rows) <= 1 and np.ptp(cols) <= 1
    assert 0.5 * 255 <= tap.sum() <= 2 * 255


@pytest.mark.parametrize("antialias", [0, 9])
def test_a_drawing_scale_the_rasters_cannot_take_is_refused(antialias):
    with pytest.raises(ValueError, match="^antialias must be 1-8"):
        render_rasters([resample_strokes([np.array([[0.0, 0.0], [1.0, 1.0]])])], antialias=antialias)


def test_order_raster_shades_each_stroke_by_its_place_in_the_order():
    # a cross: the bar first, then the stem drawn over it
    strokes = [np.array([[-0.8, 0.0], [0.8, 0.0]]), np.array([[0.0, 0.8], [0.0, -0.8]])]
    resampled = resample_strokes(strokes)
    ink, order = render_raster(resampled), render_order_raster(resampled)
    assert order.shape == ink.shape == (32, 32) and order.dtype == np.uint8
    assert ((order > 0) == (ink > 0)).all()  # the same pixels as the plain raster
    assert set(np.unique(order)) == {0, 128, 255}  # stroke 1 of 2 at half, stroke 2 at full
    bar_row = np.flatnonzero(ink.sum(axis=1) > 255 * 20)[0]
    stem_col = np.flatnonzero(ink.sum(axis=0) > 255 * 20)[0]
    bar, stem = order[bar_row], order[:, stem_col]
    assert (bar[bar > 0] == 128).sum() >= 26  # the bar at half (but where the stem crosses it)
    assert (stem[stem > 0] == 255).all()  # the stem, drawn last, at full
    # drawn in the other order, the bar is last: all of it at full, the stem at half
    reverse = render_order_raster(resampled[::-1])
    assert (reverse[bar_row][bar > 0] == 255).all()
    assert (reverse[:, stem_col][stem > 0] == 128).sum() >= 26


def test_direction_rasters_lay_each_strokes_ink_by_the_way_it_runs():
    # a cross (bar, then stem) and a diagonal rising to the right on the app canvas
    cross = resample_strokes([np.array([[-0.8, 0.0], [0.8, 0.0]]), np.array([[0.0, 0.8], [0.0, -0.8]])])
    rising = resample_strokes([np.array([[-0.5, -0.5], [0.5, 0.5]])])
    maps = render_direction_rasters([cross, rising], 4)
    assert maps.shape == (2, 32, 32, 4) and maps.dtype == np.float32 and maps.max() <= 1.0
    ink = maps.sum(axis=(1, 2))
    # bins: 0 horizontal, 1 falling to the right in the image, 2 vertical, 3 rising in the image;
    # each line fills the 28-pixel box (27 pixels from end to end), its ink its length
    np.testing.assert_allclose(ink[0], [27, 0, 27, 0], atol=1e-3)
    np.testing.assert_allclose(ink[1], [0, 0, 0, 27 * np.sqrt(2)], atol=1e-3)
    # the ink lies where the raster's does, within a pixel (a line at a half pixel shares its
    # ink between the two rows, where Pillow draws one of them): the bar's by its row
    raster = render_raster(cross)
    bar_row = np.flatnonzero(raster.sum(axis=1) > 255 * 20)[0]
    assert maps[0, bar_row - 1 : bar_row + 2, :, 0].sum() > 0.99 * 27
    assert not maps[0, ..., 2].sum(axis=0)[np.r_[:12, 21:32]].any()  # the stem's in the middle
    # orientation modulo 180 degrees: the strokes drawn in the other order and backwards alike
    backwards = resample_strokes([np.array([[0.0, -0.8], [0.0, 0.8]]), np.array([[0.8, 0.0], [-0.8, 0.0]])])
    np.testing.assert_allclose(render_direction_rasters([backwards], 4)[0], maps[0], atol=1e-6)
    # between two bins, shared: 22.5 degrees half in each of the nearest two; a tap lays no ink
    slope = np.tan(np.pi / 8)
    between = resample_strokes([np.array([[-0.5, -0.5 * slope], [0.5, 0.5 * slope]])])
    half = render_direction_rasters([between], 4)[0].sum(axis=(0, 1))
    np.testing.assert_allclose(half[[0, 3]], [27 / np.cos(np.pi / 8) / 2] * 2, rtol=1e-3)  # 27 wide
    assert half[[1, 2]].sum() < 1e-6
    tap = resample_strokes([np.array([[0.1, 0.1], [0.1, 0.1]])])
    assert render_direction_rasters([tap], 8).shape == (1, 32, 32, 8)
    assert not render_direction_rasters([tap], 8).any()
    assert (render_raster(tap) > 0).sum() == 1  # its spline's rounding (1e-17) not blown up to a line
    with pytest.raises(ValueError, match="^directions must be one of"):
        render_direction_rasters([cross], 3)


def test_a_batch_of_direction_rasters_is_each_sample_drawn_alone():
    """Serving draws one sample, training a batch: the same maps (each segment is laid at as many
    points as it needs, whatever its batch-mates' segments are)."""
    from kana.synth import synthesize_sample

    rng = np.random.default_rng(2)
    samples = [synthesize_sample(get_class(c), rng) for c in ("a", "ke", "ke", "ki", "no", "pya")]
    samples.append([np.array([[-0.9, -0.9], [0.9, 0.9]]), np.array([[0.0, 0.0], [0.01, 0.0]])])
    resampled = resample_samples(samples, max_gap=0.0)
    batch = render_direction_rasters(resampled, 4)
    for k, r in enumerate(resampled):
        np.testing.assert_array_equal(render_direction_rasters([r], 4)[0], batch[k])


def test_a_jittery_recording_lays_its_ink_as_the_path_it_follows():
    """A finger's recording, a point every 0.25% of the canvas each off by sd 0.5%: segment by
    segment a bar's ink ran every which way (62% of it horizontal, and 8% more of it); measured
    along the smoothed path, it lies as the bar's."""
    from kana.synth import densify

    bar = densify(np.array([[-0.8, 0.0], [0.8, 0.0]]), step=0.005)
    jittery = bar + np.random.default_rng(0).normal(0, 0.005, bar.shape)
    ink = render_direction_rasters(resample_samples([[jittery]], max_gap=MAX_GAP), 4)[0].sum(axis=(0, 1))
    assert ink[0] / ink.sum() > 0.9
    assert abs(ink.sum() - 27) < 0.5  # the bar's length, not its zigzag's


def test_directions_of_straight_strokes_in_image_coordinates():
    right = to_image_coords(resample_stroke(np.array([[-0.5, 0.0], [0.5, 0.0]])))
    up = to_image_coords(resample_stroke(np.array([[0.0, -0.5], [0.0, 0.5]])))
    np.testing.assert_allclose(stroke_directions(right), [[1.0, 0.0]] * 120, atol=1e-12)
    # drawn upwards on the app canvas = towards smaller y in image coordinates
    np.testing.assert_allclose(stroke_directions(up), [[0.0, -1.0]] * 120, atol=1e-12)


def test_directions_fill_pauses_from_neighbours_and_dots_get_zero():
    pts = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    d = stroke_directions(pts)
    np.testing.assert_allclose(d[0], [1.0, 0.0])  # pause before moving right: takes the next
    np.testing.assert_allclose(d[-1], [0.0, 1.0])
    assert np.isfinite(d).all()
    assert not stroke_directions(np.zeros((5, 2))).any()


def test_lstm_tensor_layout_scaling_and_padding():
    strokes = [np.array([[-0.5, 0.5], [0.5, 0.5]]), np.array([[0.0, 0.5], [0.0, -0.5]])]
    t = lstm_tensor(resample_strokes(strokes), max_strokes=4)
    assert t.shape == (120, 16) and t.dtype == np.float32
    # stroke 1: x from -0.5 to 0.5 -> (x+1)/2 from 0.25 to 0.75; y=0.5 up -> -0.5 image -> 0.25
    np.testing.assert_allclose(t[[0, -1], 0], [0.25, 0.75], atol=1e-6)
    np.testing.assert_allclose(t[:, 1], 0.25, atol=1e-6)
    np.testing.assert_allclose(t[:, 2:4], [[1.0, 0.5]] * 120, atol=1e-6)  # cos 1, sin 0
    np.testing.assert_allclose(t[:, 6:8], [[0.5, 1.0]] * 120, atol=1e-6)  # stroke 2 goes down
    np.testing.assert_allclose(t[:, 8:], 0.5)  # zero padding, scaled like the notebook


def test_closest_strokes_are_joined_by_a_straight_line_until_they_fit():
    """A bar drawn in two pieces (gap 0.1) and a stroke far off: the pieces join first, into one
    stroke evenly along the whole bar; then everything, through the line to the far stroke."""
    pieces = [np.array([[0.0, 0.0], [0.4, 0.0]]), np.array([[0.5, 0.0], [1.0, 0.0]]),
              np.array([[1.0, -1.0], [1.0, -0.5]])]
    resampled = resample_strokes(pieces, 11)
    two = join_closest_strokes(resampled, 2)
    assert two.shape == (2, 11, 2) and two.dtype == resampled.dtype
    np.testing.assert_allclose(two[0], np.column_stack([np.linspace(0, 1, 11), np.zeros(11)]), atol=1e-12)
    np.testing.assert_array_equal(two[1], resampled[2])
    one = join_closest_strokes(resampled, 1)[0]  # 1 along the bar, 1 down to the stroke, 0.5 up it
    np.testing.assert_allclose(one[[0, 4, 6, 8, 10]], [[0, 0], [1, 0], [1, -0.5], [1, -1], [1, -0.5]],
                               atol=1e-12)
    np.testing.assert_array_equal(join_closest_strokes(resampled, 3), resampled)


def test_a_sample_with_more_strokes_than_the_lstm_has_columns_gets_its_closest_joined():
    """The LSTM's input holds `max_strokes` strokes, the most any class has; a sample drawn with more
    (a stroke lifted midway, a stray dot) is read with its closest strokes joined, not refused."""
    strokes = [np.array([[-0.5, 0.5], [0.0, 0.5]]), np.array([[0.05, 0.5], [0.5, 0.5]]),
               np.array([[0.0, 0.5], [0.0, -0.5]])]
    resampled = resample_strokes(strokes)
    t = lstm_tensor(resampled, max_strokes=2)
    np.testing.assert_array_equal(t, lstm_tensor(join_closest_strokes(resampled, 2), 2))
    np.testing.assert_allclose(t[[0, -1], 0], [0.25, 0.75], atol=1e-6)  # the bar, whole
    np.testing.assert_allclose(t[:, 6:8], [[0.5, 1.0]] * 120, atol=1e-6)  # the stem, second


def test_lstm_tensor_fitted_to_the_box_ignores_where_and_how_big_it_was_drawn():
    # a "T" drawn small in the upper left: x -0.9..-0.5 (0.4 wide), y 0.3..0.9 (0.6 tall, up)
    strokes = [np.array([[-0.9, 0.9], [-0.5, 0.9]]), np.array([[-0.7, 0.9], [-0.7, 0.3]])]
    t = lstm_tensor(resample_strokes(strokes), max_strokes=2, fit_box=True)
    # the taller side spans the box: y image -0.9..-0.3 -> -1..1, so scale 2 / 0.6; centred x
    # -0.7 -> 0, so x runs -0.4 * 2 / 0.6 / 2 = -2/3 .. 2/3; then (a + 1) / 2
    np.testing.assert_allclose(t[[0, -1], 0], [(1 - 2 / 3) / 2, (1 + 2 / 3) / 2], atol=1e-6)
    np.testing.assert_allclose(t[:, 1], 0.0, atol=1e-6)  # the bar at the top of the box
    np.testing.assert_allclose(t[[0, -1], 5], [0.0, 1.0], atol=1e-6)  # the stem top to bottom
    np.testing.assert_allclose(t[:, 4], 0.5, atol=1e-6)  # in the middle
    # directions are unchanged, and so is the tensor wherever and however big it is drawn
    np.testing.assert_allclose(t[:, 2:4], lstm_tensor(resample_strokes(strokes), 2)[:, 2:4], atol=1e-6)
    moved = [s * 2.2 + [0.9, -1.2] for s in strokes]
    np.testing.assert_allclose(lstm_tensor(resample_strokes(moved), 2, fit_box=True), t, atol=1e-6)


def test_lstm_tensor_matches_per_stroke_directions_including_pauses():
    rng = np.random.default_rng(4)
    strokes = [rng.uniform(-1, 1, (n, 2)) for n in (2, 5, 9)] + [np.zeros((3, 2)) + 0.3]
    strokes[1][2] = strokes[1][1]  # a pause inside a stroke
    resampled = resample_strokes(strokes)
    t = lstm_tensor(resampled, max_strokes=5)
    for i, r in enumerate(resampled):
        img = to_image_coords(r)
        np.testing.assert_allclose(t[:, 4 * i : 4 * i + 2], (img + 1) / 2, atol=1e-6)
        np.testing.assert_allclose(t[:, 4 * i + 2 : 4 * i + 4], (stroke_directions(img) + 1) / 2, atol=1e-6)


def test_fitting_a_batch_fits_each_character_on_its_own():
    rng = np.random.default_rng(5)
    chars = rng.uniform(-1, 1, (4, 3, 7, 2)) * [[[[0.2, 1.0]]], [[[1.0, 0.1]]], [[[0.5, 0.5]]], [[[1, 1]]]]
    chars[3] = 0.25  # a single dot: nothing to scale, it lands in the middle
    fitted = fit_to_pixels(chars, 28, 1, batched=True)
    for k in range(4):
        np.testing.assert_array_equal(fitted[k], fit_to_pixels(chars[k], 28, 1))
    np.testing.assert_allclose(fitted[3], 13.5)
    # each longer side spans the square (27 pixels between the outermost points)
    span = fitted.reshape(4, -1, 2).max(axis=1) - fitted.reshape(4, -1, 2).min(axis=1)
    np.testing.assert_allclose(span.max(axis=1)[:3], 27.0)


def test_lstm_tensors_of_a_mixed_batch_match_each_samples_strokes():
    """Samples of different stroke counts (grouped inside) come back in order, each as the
    per-stroke maths give it: position and direction, with dots and pauses."""
    rng = np.random.default_rng(6)
    samples = []
    for n in (3, 1, 2, 3, 1, 4):
        strokes = [rng.uniform(-1, 1, (int(rng.integers(2, 9)), 2)) for _ in range(n)]
        samples.append(strokes)
    samples[1] = [np.zeros((2, 2)) + 0.4]  # a dot
    samples[3][1][2] = samples[3][1][1]  # a pause inside a stroke
    resampled = [resample_strokes(s).astype(np.float32) for s in samples]
    for fit_box in (False, True):
        batch = lstm_tensors(resampled, max_strokes=5, fit_box=fit_box)
        assert batch.shape == (6, 120, 20) and batch.dtype == np.float32
        for k, r in enumerate(resampled):
            img = fit_to_box(to_image_coords(r)) if fit_box else to_image_coords(r)
            for i in range(len(r)):
                np.testing.assert_allclose(batch[k, :, 4 * i : 4 * i + 2], (img[i] + 1) / 2, atol=1e-6)
                np.testing.assert_allclose(batch[k, :, 4 * i + 2 : 4 * i + 4],
                                           (stroke_directions(img[i]) + 1) / 2, atol=1e-6)
            np.testing.assert_allclose(batch[k, :, 4 * len(r) :], 0.5)  # padding
            np.testing.assert_array_equal(batch[k], lstm_tensor(r, 5, fit_box))
    fitted = lstm_tensors(resampled, max_strokes=3)  # the 4-stroke sample joined, the rest as before
    for k, r in enumerate(resampled):
        np.testing.assert_array_equal(fitted[k], lstm_tensor(join_closest_strokes(r, 3) if len(r) > 3 else r, 3))
    assert not np.array_equal(fitted[5], lstm_tensors(resampled, max_strokes=5)[5, :, :12])


def _walk_pen_path(strokes_img: np.ndarray, n_steps: int) -> np.ndarray:
    """pen_path_tensors for one sample, the slow way: the path's points and pen states one by one,
    each target point found by walking the segments (an independent check of the vectorized one)."""
    points = [p for stroke in strokes_img for p in stroke]
    pen = [k % len(strokes_img[0]) != len(strokes_img[0]) - 1 for k in range(len(points) - 1)]
    lengths = [float(np.hypot(*(b - a))) for a, b in zip(points, points[1:])]
    total = sum(lengths)
    rows = []
    for t in np.linspace(0, 1, n_steps) * total:
        start, k = 0.0, 0
        while k < len(lengths) - 1 and start + lengths[k] <= t:  # the segment that holds t
            start, k = start + lengths[k], k + 1
        seg = points[k + 1] - points[k]
        frac = min(max((t - start) / lengths[k], 0.0), 1.0) if lengths[k] > 0 else 0.0
        unit = seg / lengths[k] if lengths[k] > 1e-12 else np.zeros(2)
        rows.append([*((points[k] + frac * seg + 1) / 2), *((unit + 1) / 2), float(pen[k])])
    return np.array(rows)


def test_pen_path_of_two_strokes_apart_or_joined_differs_only_in_the_pen_flag():
    """Two strokes on a line, x -0.9..-0.3 and 0.3..0.9, then the same drawn as one stroke: 12
    points evenly along the path (none on a stroke's end), the pen up on the jump between them."""
    line = lambda a, b: np.stack([np.linspace(a, b, 120), np.zeros(120)], axis=1)
    apart = np.stack([line(-0.9, -0.3), line(0.3, 0.9)])
    joined = line(-0.9, 0.9)[None]
    t = pen_path_tensors([apart, joined], 12, fit_box=False)
    assert t.shape == (2, 12, 5) and t.dtype == np.float32
    np.testing.assert_allclose(t[:, :, 0], [(np.linspace(-0.9, 0.9, 12) + 1) / 2] * 2, atol=1e-6)
    np.testing.assert_allclose(t[:, :, 1:4], [[[0.5, 1.0, 0.5]] * 12] * 2, atol=1e-6)  # y 0, going right
    np.testing.assert_array_equal(t[1, :, 4], 1.0)
    inside_the_jump = np.abs(np.linspace(-0.9, 0.9, 12)) < 0.3
    assert inside_the_jump.sum() == 4
    np.testing.assert_array_equal(t[0, :, 4], ~inside_the_jump)
    np.testing.assert_array_equal(t[0, :, :4], t[1, :, :4])


def test_pen_path_tensors_of_a_mixed_batch_match_a_walk_along_each_path():
    """Samples of different stroke counts (grouped inside) come back in order, each as walking its
    path gives it, with dots, pauses and a whole sample that is one dot; fitted to the box or not."""
    rng = np.random.default_rng(8)
    samples = [[rng.uniform(-1, 1, (int(rng.integers(2, 9)), 2)) for _ in range(n)] for n in (3, 1, 2, 3, 1, 4)]
    samples[1] = [np.zeros((2, 2)) + 0.4]  # the whole sample a dot
    samples[3][1] = np.zeros((3, 2)) - 0.2  # a dot between two strokes
    samples[5][2][2] = samples[5][2][1]  # a pause inside a stroke
    resampled = [resample_strokes(s).astype(np.float32) for s in samples]
    for fit_box in (False, True):
        batch = pen_path_tensors(resampled, 50, fit_box=fit_box)
        assert batch.shape == (6, 50, 5) and np.isfinite(batch).all()
        for k, r in enumerate(resampled):
            img = to_image_coords(r.astype(np.float64))
            img = fit_to_box(img) if fit_box else img
            np.testing.assert_allclose(batch[k], _walk_pen_path(img, 50), atol=1e-5)
            np.testing.assert_array_equal(batch[k], pen_path_tensors([r], 50, fit_box)[0])
    np.testing.assert_allclose(batch[1, :, 2:4], 0.5)  # a dot has no direction
    assert not batch[3, :, 4].all() and batch[3, :, 4].any()  # pen up between strokes only
    with pytest.raises(ValueError, match="no samples"):
        pen_path_tensors([], 50)
