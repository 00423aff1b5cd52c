"""The KanjiVG synthesizer: the raw app format, allowed stroke counts, determinism, variety."""

import numpy as np
import pytest

from kana.classes import class_set, get_class
from kana.strokes import check_stroke_count, parse_strokes
from kana.synth import (
    glyph_strokes,
    kanji_characters,
    parse_svg_path,
    record_stroke,
    split_stroke,
    synthesize_dataset,
    synthesize_sample,
    turning_points,
)


def test_svg_path_parser_on_absolute_relative_and_smooth_curves():
    pts = parse_svg_path("M10,10 L20,10 l0,10 H5 V0 c1,1 2,2 3,3 s2,2 3,3 Z")
    np.testing.assert_allclose(pts[0], [10, 10])
    np.testing.assert_allclose(pts[1], [20, 10])
    np.testing.assert_allclose(pts[2], [20, 20])
    np.testing.assert_allclose(pts[3], [5, 20])
    np.testing.assert_allclose(pts[4], [5, 0])
    np.testing.assert_allclose(pts[-1], [10, 10])  # Z closes to the start


def test_glyphs_come_in_app_coordinates_with_kanjivg_stroke_order():
    ka = glyph_strokes("か")
    assert len(ka) == 3
    allpts = np.vstack(ka)
    assert allpts.min() >= -1 and allpts.max() <= 1
    # か's third stroke is the short tick at the right
    assert ka[2][:, 0].mean() > ka[1][:, 0].mean()


def test_every_class_synthesizes_a_valid_raw_sample():
    rng = np.random.default_rng(0)
    for kana in class_set("all"):
        for _ in range(3):
            sample = synthesize_sample(kana, rng, off_table_join=0, off_table_split=0, joined_marks=0)
            strokes = parse_strokes({i + 1: s for i, s in enumerate(sample)}, kana.char_id)
            check_stroke_count(strokes, kana.char_id)
            assert all(np.abs(s).max() <= 1.0 for s in strokes)
            default = synthesize_sample(kana, rng)  # sometimes a stroke more or fewer, off the table
            check_stroke_count(parse_strokes(default, kana.char_id), kana.char_id, one_off_ok=True)


def test_off_table_joins_give_one_stroke_fewer_and_keep_a_compounds_small_kana():
    rng = np.random.default_rng(2)

    def counts(char_id, share):
        return {len(synthesize_sample(get_class(char_id), rng, off_table_join=share, off_table_split=0,
                                      joined_marks=0)) for _ in range(40)}

    assert counts("ka", 0) == {3} and counts("ka", 1) == {2}
    assert counts("ta", 1) == {3}
    assert counts("ki", 1) == {3, 4}  # き may have 3 strokes: joined on the table, not below it
    assert counts("sya", 1) == {4}  # し has one stroke, and ゃ is never joined to it
    assert counts("tya", 1) == {4}  # ち's two strokes joined, ゃ's three kept
    assert counts("zya", 1) == {6}  # じ's body is one stroke: nothing to join
    # an off-table join never joins a voicing mark (ば with its ticks joined has ぱ's count; that is
    # `joined_marks`, off here): the body's strokes are joined
    bodies = {"ga": "か", "ba": "は", "pa": "は", "dya": "ち"}
    for char_id, body in bodies.items():
        kana = get_class(char_id)
        marks = 1 if char_id == "pa" else 2
        n_body = len(glyph_strokes(body))
        for _ in range(10):
            sample = synthesize_sample(kana, rng, off_table_join=1, order_slip=0, reversed_stroke=0,
                                       joined_marks=0)
            assert len(sample) == sum(len(glyph_strokes(c)) for c in kana.character) - 1
            extent = np.ptp(np.vstack(sample), axis=0).max()
            mark = sample[n_body - 1 : n_body - 1 + marks]  # right after the joined body
            assert all(np.ptp(s, axis=0).max() < 0.35 * extent for s in mark), char_id
    share = np.mean([len(synthesize_sample(get_class("ka"), rng, off_table_split=0)) == 2
                     for _ in range(400)])
    assert 0.05 < share < 0.16  # the default, OFF_TABLE_JOINS = 0.1


def test_a_split_stroke_is_cut_in_two_along_its_length():
    line = np.column_stack([np.linspace(0, 1, 101), np.zeros(101)])
    dot_pair = [np.array([[0.0, 0.5], [0.01, 0.5]])]
    first, second = split_stroke([line], np.random.default_rng(0), splittable=1)
    assert 0.25 <= first[-1, 0] <= 0.75 and first[0, 0] == 0  # cut 25-75% along, from its start
    assert 0 <= second[0, 0] - first[-1, 0] <= 0.08 + 0.011  # up to 8% lost, give or take a point
    assert second[-1, 0] == 1 and np.all(np.diff(np.concatenate([first[:, 0], second[:, 0]])) > 0)
    # only the first `splittable` strokes are cut: a compound's small kana and marks stay whole
    kept = split_stroke([line] + dot_pair, np.random.default_rng(1), splittable=1)
    assert len(kept) == 3 and kept[2] is dot_pair[0]
    assert split_stroke(dot_pair, np.random.default_rng(2), splittable=1) == dot_pair  # too short


def test_a_stroke_of_a_few_points_is_recorded():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5):  # a split's stub can be this short (3 and 4 points once failed)
        stub = np.column_stack([np.linspace(0, 0.03, n), np.zeros(n)])
        pts = record_stroke(rng, stub, pace=0.01)
        assert len(pts) >= 2 and np.allclose(pts[0], stub[0]) and np.allclose(pts[-1], stub[-1])


def test_off_table_splits_give_one_stroke_more_up_to_max_strokes():
    rng = np.random.default_rng(5)

    def counts(char_id, **kw):
        return {len(synthesize_sample(get_class(char_id), rng, off_table_join=0, **kw)) for _ in range(30)}

    assert counts("ka", off_table_split=1) == {4} and counts("ka", off_table_split=0) == {3}
    assert counts("ka", off_table_split=1, max_strokes=3) == {3}  # no room for one more
    assert counts("ki", off_table_split=1) == {3, 5}  # 3 strokes (joined on the table) + 1 is on it
    so = counts("so", off_table_split=1)  # 1 or 2 strokes on the table, so 2 + 1 only
    assert so == {1, 3}
    share = np.mean([len(synthesize_sample(get_class("ka"), rng, off_table_join=0)) == 4
                     for _ in range(600)])
    assert 0.02 < share < 0.09  # the default, OFF_TABLE_SPLITS = 0.05


def test_joined_strokes_give_the_lower_allowed_count():
    rng = np.random.default_rng(1)
    counts = {len(synthesize_sample(get_class("ki"), rng, off_table_split=0)) for _ in range(60)}
    assert counts == {3, 4}


def same_samples(xs: list, ys: list) -> bool:
    """Two lists of (label, strokes) equal pair by pair: as many samples, the same labels, stroke
    counts and points (zip alone would pass a list cut short)."""
    return len(xs) == len(ys) and all(
        lx == ly and len(sx) == len(sy) and all(np.array_equal(p, q) for p, q in zip(sx, sy))
        for (lx, sx), (ly, sy) in zip(xs, ys))


def test_synthesis_is_seeded_and_independent_of_class_subset():
    classes = list(class_set("basic46"))
    a = synthesize_dataset(classes[:5], 3, seed=7)
    b = synthesize_dataset(classes[:5], 3, seed=7)
    c = synthesize_dataset(classes[3:5], 3, seed=7)
    assert same_samples(a, b)
    assert same_samples(a[9:], c)
    e = synthesize_dataset(classes[4:2:-1], 3, seed=7)  # the same classes in the other order
    assert same_samples(a[12:] + a[9:12], e)
    d = synthesize_dataset(classes[:1], 3, seed=8)
    assert not np.array_equal(a[0][1][0], d[0][1][0])


def test_samples_vary_like_handwriting():
    rng = np.random.default_rng(2)
    samples = [synthesize_sample(get_class("a"), rng) for _ in range(40)]
    widths = [np.ptp(np.vstack(s)[:, 0]) for s in samples]
    points = [len(st) for s in samples for st in s]
    assert np.std(widths) > 0.05  # sizes differ
    assert min(points) <= 6 and max(points) >= 30  # fast/sparse and slow/dense recordings


def test_compounds_put_the_small_kana_at_the_lower_right():
    rng = np.random.default_rng(3)

    def centre(pts):
        return (pts.min(axis=0) + pts.max(axis=0)) / 2

    right = lower = 0
    sizes = []
    for _ in range(40):
        sample = synthesize_sample(get_class("kya"), rng, vertical_compound=0.0, off_table_split=0)
        assert len(sample) in (6, 7)  # joins stay inside き: ゃ keeps its 3 strokes
        base, small = np.vstack(sample[:-3]), np.vstack(sample[-3:])
        right += centre(small)[0] > centre(base)[0]
        lower += centre(small)[1] < centre(base)[1]  # y up: lower means smaller y
        sizes.append(np.ptp(small, axis=0).max() / np.ptp(base, axis=0).max())
    # slant and the bending of the whole character may lift it now and then, as in real writing
    assert right == 40 and lower >= 34
    # a third to four fifths of the base kana's size, give or take the per-stroke scatter
    assert np.median(sizes) < 0.7 and min(sizes) < 0.4 and max(sizes) > 0.75
    assert np.mean(np.array(sizes) < 1.0) >= 0.95


def test_some_compounds_are_written_as_vertical_text_sets_them():
    def parts(sample):
        return np.vstack(sample[:-3]), np.vstack(sample[-3:])  # き (joined or not), then ゃ

    rng = np.random.default_rng(4)
    for _ in range(30):  # always: the small kana under the kana, in the right half of its column
        base, small = parts(synthesize_sample(get_class("kya"), rng, vertical_compound=1.0))
        small_centre = (small.min(axis=0) + small.max(axis=0)) / 2
        assert small_centre[1] < base[:, 1].min() + 0.05 * np.ptp(base[:, 1])  # y up: below it
        assert base[:, 0].min() < small_centre[0]  # its column: starting no further right than
        assert small.min(axis=0)[0] < base[:, 0].max() + 0.1 * np.ptp(base[:, 0])  # the kana ends
    under = []
    for _ in range(300):  # by default, one compound in five (VERTICAL_COMPOUNDS)
        base, small = parts(synthesize_sample(get_class("kya"), rng))
        small_centre_y = (small[:, 1].min() + small[:, 1].max()) / 2
        under.append(small_centre_y < base[:, 1].min() + 0.05 * np.ptp(base[:, 1]))
    assert 0.13 < np.mean(under) < 0.27


def test_turning_points_keep_ends_and_corners():
    corner = np.vstack([np.column_stack([np.linspace(0, 1, 50), np.zeros(50)]),
                        np.column_stack([np.ones(50), np.linspace(0, -1, 50)])])
    kept = turning_points(corner, tolerance=0.02)
    np.testing.assert_allclose(kept[0], [0, 0])
    np.testing.assert_allclose(kept[-1], [1, -1])
    assert len(kept) == 3
    np.testing.assert_allclose(kept[1], [1, 0], atol=0.03)
    # a smooth circle keeps enough points to stay within the tolerance
    t = np.linspace(0, 2 * np.pi, 400)
    circle = np.column_stack([np.cos(t), np.sin(t)])
    kept = turning_points(circle, tolerance=0.05)
    assert 6 <= len(kept) <= 20
    seg_mid = (kept[1:] + kept[:-1]) / 2
    assert np.all(1 - np.hypot(*seg_mid.T) <= 0.05 + 1e-9)


def test_kanji_characters_are_seeded_cjk():
    chars = kanji_characters(30, seed=1)
    assert len(chars) == 30 and chars == kanji_characters(30, seed=1)
    assert all(0x4E00 <= ord(c) <= 0x9FFF for c in chars)


def test_order_slips_swap_two_consecutive_strokes_within_one_kana():
    from kana.synth import _slip_order

    strokes = ["a1", "a2", "a3", "s1", "s2"]  # a compound: 3 base strokes, then the small kana
    seen = set()
    for k in range(200):
        out = _slip_order(strokes, np.random.default_rng(k), keep_apart=3)
        assert sorted(out) == sorted(strokes)
        moved = [i for i in range(5) if out[i] != strokes[i]]
        assert len(moved) == 2 and moved[1] == moved[0] + 1  # one adjacent pair swapped
        seen.add(tuple(moved))
    assert seen == {(0, 1), (1, 2), (3, 4)}  # never (2, 3): across the two kana
    assert _slip_order(["only"], np.random.default_rng(0)) == ["only"]
    assert _slip_order(["a", "s"], np.random.default_rng(0), keep_apart=1) == ["a", "s"]


def test_so_is_split_at_its_first_corner_into_a_tick_and_the_rest():
    from kana.synth import split_at_first_corner

    (so,) = glyph_strokes("そ")
    tick, rest = split_at_first_corner(so, np.random.default_rng(0))
    # the rest starts at the top-right corner of そ's opening zig (KanjiVG: about (0.29, 0.66))
    np.testing.assert_allclose(rest[0], [0.29, 0.66], atol=0.04)
    np.testing.assert_allclose(rest[-1], so[-1], atol=0.02)
    np.testing.assert_allclose(tick[0], so[0], atol=1e-9)  # turned and shortened about its start
    direction = tick[-1] - tick[0]
    assert direction[0] > 0 and direction[1] < 0  # down to the right (y up)
    assert np.hypot(*direction) < np.hypot(*(rest[0] - so[0]))


def test_so_and_zo_come_in_both_written_forms():
    rng = np.random.default_rng(4)
    on_table = {"off_table_join": 0, "off_table_split": 0, "joined_marks": 0}
    assert {len(synthesize_sample(get_class("so"), rng, **on_table)) for _ in range(40)} == {1, 2}
    assert {len(synthesize_sample(get_class("zo"), rng, **on_table)) for _ in range(40)} == {3, 4}


def test_a_reversed_stroke_is_drawn_from_its_end():
    rng = np.random.default_rng(5)
    # く is written from the top down: reversed, it starts at the bottom (y up)
    for _ in range(10):
        (forward,) = synthesize_sample(get_class("ku"), rng, reversed_stroke=0.0)
        (backward,) = synthesize_sample(get_class("ku"), rng, reversed_stroke=1.0)
        assert forward[0, 1] > forward[-1, 1] and backward[0, 1] < backward[-1, 1]


def test_a_voicing_mark_is_resized_about_its_own_centre_and_nothing_else_moves():
    from kana.synth import resize_voicing_mark, voicing_mark_strokes

    assert [voicing_mark_strokes(c) for c in "かがぱゔゃ"] == [0, 2, 1, 2, 0]
    ga = list(glyph_strokes("が"))  # か (3 strokes), then the two ticks of ゛
    small = resize_voicing_mark(ga, "が", 0.5)
    for before, after in zip(ga[:3], small[:3]):
        np.testing.assert_array_equal(before, after)
    centre = np.vstack(ga[3:]).mean(axis=0)
    for before, after in zip(ga[3:], small[3:]):
        np.testing.assert_allclose(after - centre, (before - centre) * 0.5)
    # a compound holds its base kana first: ぎゃ's ゛ are strokes 4 and 5, ゃ's strokes stay
    gya = list(glyph_strokes("ぎ")) + list(glyph_strokes("ゃ"))
    out = resize_voicing_mark(gya, "ぎゃ", 0.4)
    moved = [i for i in range(len(gya)) if not np.array_equal(gya[i], out[i])]
    assert moved == [4, 5]
    ka = list(glyph_strokes("か"))
    assert resize_voicing_mark(ka, "か", 0.4) is ka  # no mark: as it was


def test_small_voicing_marks_shrink_the_mark_in_the_recorded_sample():
    def mark_extent(sample):  # ば's ゛ (its last two strokes) as a share of the whole drawing
        return np.ptp(np.vstack(sample[-2:]), axis=0).max() / np.ptp(np.vstack(sample), axis=0).max()

    kw = {"allowed_counts": (5,), "order_slip": 0.0, "reversed_stroke": 0.0, "off_table_join": 0.0}
    plain = [mark_extent(synthesize_sample(get_class("ba"), np.random.default_rng(k), small_marks=0.0, **kw))
             for k in range(40)]
    small = [mark_extent(synthesize_sample(get_class("ba"), np.random.default_rng(k), small_marks=1.0, **kw))
             for k in range(40)]
    assert np.median(small) < 0.75 * np.median(plain)


def test_a_joined_voicing_mark_is_its_two_ticks_in_one_stroke():
    from kana.synth import join_voicing_mark

    ba = list(glyph_strokes("ば"))  # は (3 strokes), then the two ticks of ゛
    joined = join_voicing_mark(ba, "ば")
    assert len(joined) == 4 and all(np.array_equal(a, b) for a, b in zip(ba[:3], joined[:3]))
    # the first tick, a straight line from its end to the second's start, then the second tick
    assert np.array_equal(joined[3][: len(ba[3])], ba[3]) and np.array_equal(joined[3][-len(ba[4]) :], ba[4])
    bridge = joined[3][len(ba[3]) - 1 : len(joined[3]) - len(ba[4]) + 1]
    direction = (ba[4][0] - ba[3][-1]) / np.linalg.norm(ba[4][0] - ba[3][-1])
    steps = np.diff(bridge, axis=0)
    assert np.allclose(steps / np.linalg.norm(steps, axis=1, keepdims=True), direction)
    # a compound keeps its small kana apart; ゜ and no mark: as they were
    bya = list(glyph_strokes("び")) + list(glyph_strokes("ゃ"))
    assert [len(s) for s in join_voicing_mark(bya, "びゃ")[-3:]] == [len(s) for s in bya[-3:]]
    pa, ka = list(glyph_strokes("ぱ")), list(glyph_strokes("か"))
    assert join_voicing_mark(pa, "ぱ") is pa and join_voicing_mark(ka, "か") is ka


def test_joined_voicing_marks_in_samples_leave_other_classes_as_they_were():
    kw = {"order_slip": 0.0, "off_table_join": 0.0, "off_table_split": 0.0}
    counts = [len(synthesize_sample(get_class("bi"), np.random.default_rng(k), joined_marks=1.0, **kw))
              for k in range(10)]
    assert counts == [2] * 10  # び (3 strokes) with its ゛ in one: ぴ's count
    bya = synthesize_sample(get_class("bya"), np.random.default_rng(0), joined_marks=1.0, **kw)
    assert len(bya) == 5  # びゃ: ひ, the joined ゛, ゃ's 3 strokes (never joined to the ゛)
    # one slip off the table at a time: a ば whose ゛ is joined has no body strokes joined too
    counts = {len(synthesize_sample(get_class("ba"), np.random.default_rng(k), joined_marks=1.0,
                                    off_table_join=1.0, off_table_split=0.0)) for k in range(20)}
    assert counts == {4}
    for cid in ("pa", "ka", "pya"):  # a ゜ or no mark: no draw, the same sample
        a, b = (synthesize_sample(get_class(cid), np.random.default_rng(2), joined_marks=j) for j in (0.0, 1.0))
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_an_off_table_join_after_a_joined_voicing_mark_may_take_the_bodys_last_stroke():
    # ぎ: き's 4 strokes, then ゛. With the ゛ in one stroke (5: on its table "5 or 6") an off-table
    # join may join any two of き's strokes, its last (the bottom curve) too: the ゛ is one stroke of
    # the tail now, not two (counted as two, き's last stroke was never chosen)
    kw = {"joined_marks": 1.0, "off_table_join": 1.0, "off_table_split": 0.0, "order_slip": 0.0,
          "reversed_stroke": 0.0}
    samples = [synthesize_sample(get_class("gi"), np.random.default_rng(k), **kw) for k in range(20)]
    assert {len(s) for s in samples} == {4}

    def height(stroke, sample):
        return np.ptp(stroke[:, 1]) / np.ptp(np.vstack(sample)[:, 1])

    # き's third stroke (the long diagonal) joined to its fourth: one stroke from the top to the bottom
    assert any(height(s[2], s) > 0.8 for s in samples)
    assert all(height(s[3], s) < 0.35 for s in samples)  # the ゛ stays last, apart


def _stroke_centre_spread(samples) -> float:
    """How much the strokes' centres move between samples, with each character fitted to its box."""
    centres = []
    for s in samples:
        pts = np.vstack(s)
        lo, extent = pts.min(axis=0), np.ptp(pts, axis=0).max()
        centres.append([(st.mean(axis=0) - lo) / extent for st in s])
    return float(np.std(np.array(centres), axis=0).mean())


def test_messier_writers_place_their_strokes_further_astray(monkeypatch):
    import kana.synth

    # あ in the textbook order, never joined or split
    textbook = {"order_slip": 0.0, "reversed_stroke": 0.0, "allowed_counts": (3,), "off_table_join": 0.0,
                "off_table_split": 0.0}

    def spread(n=100, **kw):
        rng = np.random.default_rng(4)
        samples = [synthesize_sample(get_class("a"), rng, **textbook, **kw) for _ in range(n)]
        return _stroke_centre_spread(samples)

    neat, usual, messy = spread(messiness=0.0), spread(messiness=1.0), spread(messiness=2.0)
    assert neat < usual < messy
    assert messy > 1.3 * usual
    # the default: MESSY_WRITERS of the samples are messier than the usual writer
    monkeypatch.setattr(kana.synth, "MESSY_WRITERS", 0.0)
    none_messy = spread()
    monkeypatch.setattr(kana.synth, "MESSY_WRITERS", 1.0)
    all_messy = spread()
    assert none_messy < 1.1 * usual < all_messy < messy


def test_messiness_out_of_range_is_refused():
    with pytest.raises(ValueError, match="messiness"):
        synthesize_sample(get_class("a"), np.random.default_rng(0), messiness=-1)
