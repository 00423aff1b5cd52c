"""benchmarks/tomoe_composites.py: voiced kana and compounds built from templates of basic kana."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import PROJECT_DIR
from kana.classes import class_set
from kana.strokes import load_raw_dir, save_app_pickle
from kana.synth import glyph_strokes, turning_points

sys.path.insert(0, str(PROJECT_DIR / "benchmarks"))
import tomoe_composites  # noqa: E402

TEMPLATES = "かきはやゆよ"


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Tomoe-like templates (KanjiVG's glyphs as turning points) of a few basic kana."""
    folder = tmp_path_factory.mktemp("templates")
    ids = {c.character: c.char_id for c in class_set("all")}
    for k, ch in enumerate(TEMPLATES):
        save_app_pickle([turning_points(s, 0.04) for s in glyph_strokes(ch)], folder / f"{ids[ch]}{k:05d}.pickle")
    return folder


def _box(strokes):
    pts = np.vstack(strokes)
    return pts.min(axis=0), pts.max(axis=0)


def test_every_class_the_templates_can_make_is_made_with_a_count_its_table_allows(templates):
    samples = tomoe_composites.composites(templates)
    by_class = {}
    for cid, group, strokes in samples:
        by_class.setdefault(cid, []).append((group, strokes))
    expected = {c.char_id for c in class_set("all")
                if all(ch in TEMPLATES or ch in "がぎばぱゃゅょ" for ch in c.character)}
    assert set(by_class) == expected
    assert {g for g, _ in by_class["ka"]} == {"basic"} and len(by_class["ka"]) == 1
    assert len(by_class["ga"]) == len(tomoe_composites.MARK_SIZES)  # one per mark size
    # きゃ: one き, one や, each small size; ぎゃ: each mark size, each small size
    assert len(by_class["kya"]) == len(tomoe_composites.SMALL_SIZES)
    assert len(by_class["gya"]) == len(tomoe_composites.MARK_SIZES) * len(tomoe_composites.SMALL_SIZES)
    classes = {c.char_id: c for c in class_set("all")}
    for cid, group, strokes in samples:
        assert len(strokes) in classes[cid].stroke_counts, cid
        lo, hi = _box(strokes)
        assert np.allclose((lo + hi) / 2, 0) and np.isclose((hi - lo).max(), 1.6), cid


def test_a_voicing_mark_goes_to_the_bases_upper_right_and_a_small_kana_to_its_lower_right(templates):
    samples = tomoe_composites.composites(templates)
    ga = next(s for cid, _, s in samples if cid == "ga")
    base, marks = ga[:3], ga[3:]  # か has 3 strokes, ゛ 2
    b_lo, b_hi = _box(base)
    m_lo, m_hi = _box(marks)
    assert m_lo[0] > (b_lo[0] + b_hi[0]) / 2 and m_lo[1] > (b_lo[1] + b_hi[1]) / 2
    assert all(len(m) <= 4 for m in marks)  # turning points, as Tomoe records

    kya = [s for cid, _, s in samples if cid == "kya"]
    sizes = []
    for strokes in kya:
        first, small = strokes[:4], strokes[4:]  # き has 4 strokes, や 3
        f_lo, f_hi = _box(first)
        s_lo, s_hi = _box(small)
        assert s_lo[0] > f_hi[0]  # to the right, with a gap
        assert np.isclose(s_lo[1], f_lo[1])  # bottoms aligned
        sizes.append((s_hi - s_lo).max() / (f_hi - f_lo).max())
    assert np.allclose(sorted(sizes), sorted(tomoe_composites.SMALL_SIZES))


def test_written_files_load_back_as_their_classes(templates, tmp_path):
    samples = tomoe_composites.composites(templates)
    groups = tomoe_composites.write_raw(samples, tmp_path / "out")
    assert sum(groups.values()) == len(samples) and set(groups) == {"basic", "voiced", "compound"}
    report = load_raw_dir(tmp_path / "out")
    assert not report.rejections
    assert sorted(s.char_id for s in report.samples) == sorted(cid for cid, _, _ in samples)


def test_a_bad_template_is_named_and_the_others_still_used(templates, tmp_path, capsys):
    import shutil

    folder = tmp_path / "templates"
    shutil.copytree(templates, folder)
    (folder / "ko00009.pickle").write_bytes(b"not a pickle")
    (folder / "xx00010.pickle").write_bytes(b"")
    samples = tomoe_composites.composites(folder)
    err = capsys.readouterr().err
    assert "template skipped: ko00009.pickle" in err and "xx00010.pickle" in err
    assert {cid for cid, _, _ in samples} == {cid for cid, _, _ in tomoe_composites.composites(templates)}
