"""Raw data in: the app's pickles read safely, the other formats, validation, bad input."""

import gzip
import json
import os
import pickle

import numpy as np
import pytest

from kana.classes import char_id_from_filename, class_set, get_class, max_strokes
from kana.strokes import (
    InvalidSample,
    load_pickle_sample,
    load_raw_dir,
    parse_strokes,
    safe_unpickle,
    save_app_pickle,
)

GOOD = {1: np.array([[-0.5, 0.5], [0.5, 0.5]]), 2: np.array([[0.0, 0.8], [0.0, -0.8]])}


class _Payload:
    """Unpickling this runs os.system(...): the classic hostile pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


def test_class_sets_and_table():
    assert [len(class_set(n)) for n in ("basic46", "extended", "all")] == [46, 72, 108]
    assert class_set("basic46")[-1].char_id == "-n"
    assert get_class("ki").stroke_counts == (3, 4)
    assert get_class("kya").character == "きゃ"
    assert "wi" not in [c.char_id for c in class_set("all")]
    assert max_strokes("all") == 9
    with pytest.raises(ValueError, match="unknown class_set"):
        class_set("katakana")


def test_strokes_off_a_class_table_count_to_its_nearest_allowed_count():
    ki = get_class("ki")  # 3 or 4 strokes
    assert [ki.strokes_off(n) for n in (1, 2, 3, 4, 5, 7)] == [2, 1, 0, 0, 1, 3]


@pytest.mark.parametrize(
    "name, expected",
    [("ka00012.pickle", "ka"), ("kya1.pickle", "kya"), ("-n3.pickle", "-n"), ("n3.pickle", None),
     ("a.json", "a"), ("gyo_x.pickle", "gyo"), ("zz.pickle", None)],
)
def test_char_id_from_filename_longest_match(name, expected):
    assert char_id_from_filename(name) == expected


def test_app_pickle_round_trip(tmp_path):
    save_app_pickle(list(GOOD.values()), tmp_path / "i0.pickle")
    strokes = load_pickle_sample(tmp_path / "i0.pickle")
    assert len(strokes) == 2
    np.testing.assert_array_equal(strokes[1], GOOD[2])


def test_hostile_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "a0.pickle"
    path.write_bytes(pickle.dumps({1: _Payload(marker)}))
    with pytest.raises(InvalidSample, match="refused to load global posix.system") as exc:
        load_pickle_sample(path)
    assert exc.value.reason == "refused_pickle"
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [_EvalPayload(), {1: np.array([[0.0, 0.0]]), "x": pickle.PickleBuffer}, set([1, 2])],
    ids=["eval", "class-object", "set-of-ints"],
)
def test_other_pickles_are_refused_or_rejected(tmp_path, payload):
    path = tmp_path / "a0.pickle"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InvalidSample):
        load_pickle_sample(path)


def test_truncated_and_garbage_pickles_are_unreadable(tmp_path):
    good = pickle.dumps(GOOD)
    (tmp_path / "a0.pickle").write_bytes(good[: len(good) // 2])
    (tmp_path / "a1.pickle").write_bytes(b"\x00\xffnot a pickle")
    for name in ("a0.pickle", "a1.pickle"):
        with pytest.raises(InvalidSample) as exc:
            load_pickle_sample(tmp_path / name)
        assert exc.value.reason in {"unreadable", "refused_pickle"}
        assert name in str(exc.value)


def test_object_dtype_array_is_not_numbers(tmp_path):
    path = tmp_path / "a0.pickle"
    path.write_bytes(pickle.dumps({1: np.array([["x", "y"]], dtype=object)}))
    with pytest.raises(InvalidSample) as exc:
        load_pickle_sample(path)
    assert exc.value.reason == "bad_type"


@pytest.mark.parametrize(
    "sample, reason",
    [
        ({}, "empty_sample"),
        ([], "empty_sample"),
        ({1: np.zeros((0, 2))}, "empty_stroke"),
        ({1: []}, "empty_stroke"),
        ({1: [[0.0, np.nan]]}, "non_finite"),
        ({1: [[0.0, np.inf]]}, "non_finite"),
        ({1: [[0.0, 0.0, 0.0]]}, "bad_shape"),
        ({1: [[0.0, 0.0]], "x": [[0.0, 0.0]]}, "bad_structure"),
        ({float("inf"): [[0.0, 0.0]]}, "bad_structure"),
        ({1.0: [[0.0, 0.0]]}, "bad_structure"),
        ({1: [[1e9, 0.0]]}, "out_of_bounds"),
        ({1: [["a", 0.0]]}, "bad_type"),
        ({1: "strokes"}, "bad_structure"),
        ("abc", "bad_structure"),
        (42, "bad_structure"),
        ([[[0.0, 0.0]]] * 10_000, "too_many_strokes"),
        ({1: [[0.0, 0.0]] * 100_000}, "too_many_points"),
    ],
)
def test_parse_rejects_bad_samples_with_a_reason(sample, reason):
    with pytest.raises(InvalidSample) as exc:
        parse_strokes(sample, "s.pickle")
    assert exc.value.reason == reason
    assert "s.pickle" in str(exc.value)


def test_parse_accepts_every_documented_shape():
    as_lists = [[[-0.5, 0.5], [0.5, 0.5]], [[0.0, 0.8], [0.0, -0.8]]]
    shapes = [GOOD, {"2": as_lists[1], "1": as_lists[0]}, as_lists, {"strokes": as_lists},
              {1: [[0, 0], [1, 1]], 2: [[0, 1]]}]
    for s in shapes[:4]:
        parsed = parse_strokes(s)
        np.testing.assert_allclose(parsed[0], as_lists[0])
        np.testing.assert_allclose(parsed[1], as_lists[1])
    assert parse_strokes(shapes[4])[0].dtype == np.float64  # integers are fine


def test_numeric_keys_sort_numerically():
    s = {str(k): [[k / 20.0, 0.0]] for k in range(1, 12)}
    parsed = parse_strokes(s)
    assert [p[0, 0] for p in parsed] == [k / 20.0 for k in range(1, 12)]


def _write_tegaki(path, chars):
    body = "".join(
        f"<character><utf8>{ch}</utf8><strokes>"
        + "".join("<stroke>" + "".join(f'<point x="{x}" y="{y}"/>' for x, y in st) + "</stroke>" for st in strokes)
        + "</strokes></character>"
        for ch, strokes in chars
    )
    xml = f'<?xml version="1.0" encoding="UTF-8"?><character-collection><set name="x">{body}</set></character-collection>'
    data = xml.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def test_load_raw_dir_keeps_valid_samples_beside_bad_ones(tmp_path):
    alice = tmp_path / "alice"
    alice.mkdir()
    save_app_pickle(list(GOOD.values()), alice / "i00001.pickle")  # い: 2 strokes, valid
    save_app_pickle([GOOD[1]], alice / "i00002.pickle")  # wrong stroke count
    save_app_pickle(list(GOOD.values()), alice / "zz001.pickle")  # unknown char_id
    (alice / "a9.pickle").write_bytes(pickle.dumps({1: _Payload(tmp_path / "pwned")}))
    (alice / "u1.json").write_text(json.dumps({"1": [[0, 0.5], [0.2, 0.5]], "2": [[0, 0.3], [0, -0.6]]}))
    (alice / "u2.json").write_bytes(b"{not json")
    (alice / "notes.txt").write_text("ignored: not a raw format")
    # Tomoe dictionary (320x320, y down): one good い and one character that is no class
    (alice / "hira.tdic").write_text(
        "い\n:2\n:2 (80 60) (100 250)\n:2 (230 90) (250 200)\nX\n:1\n:2 (1 1) (2 2)\n", encoding="utf-8"
    )
    _write_tegaki(alice / "c.charcol.gz", [("い", [[(200, 200), (250, 700)], [(700, 250), (750, 600)]]),
                                           ("い", [[(200, "bad")]])])
    report = load_raw_dir(tmp_path)
    kept = sorted(s.path for s in report.samples)
    assert kept == ["alice/c.charcol.gz#0", "alice/hira.tdic#0", "alice/i00001.pickle", "alice/u1.json"]
    reasons = {r.path: r.reason for r in report.rejections}
    assert reasons == {
        "alice/i00002.pickle": "wrong_stroke_count",
        "alice/zz001.pickle": "unknown_char_id",
        "alice/a9.pickle": "refused_pickle",
        "alice/u2.json": "unreadable",
        "alice/hira.tdic#1": "unknown_char_id",
        "alice/c.charcol.gz#1": "bad_type",
    }
    assert not (tmp_path / "pwned").exists()
    assert {s.source for s in report.samples} == {"alice"}
    tomoe = next(s for s in report.samples if s.path == "alice/hira.tdic#0")
    np.testing.assert_allclose(tomoe.strokes[0][0], [80 / 160 - 1, 1 - 60 / 160])  # y flipped up
    tegaki = next(s for s in report.samples if s.path.startswith("alice/c.charcol"))
    np.testing.assert_allclose(tegaki.strokes[0][0], [-0.6, 0.6])
    # for scoring real drawings, a count off the table is kept; every other rejection stands
    scored = load_raw_dir(tmp_path, any_stroke_count=True)
    assert sorted(s.path for s in scored.samples) == sorted(kept + ["alice/i00002.pickle"])
    assert {r.path for r in scored.rejections} == set(reasons) - {"alice/i00002.pickle"}


def test_a_bad_part_of_a_file_is_a_named_rejection_and_the_rest_is_kept(tmp_path):
    bob = tmp_path / "bob"
    bob.mkdir()
    # a Tomoe dictionary whose first character has a point that is no number: only it is lost
    (bob / "d.tdic").write_text(
        "う\n:1\n:2 (80 60) (1O0 250)\nい\n:2\n:2 (80 60) (100 250)\n:2 (230 90) (250 200)\n",
        encoding="utf-8",
    )
    (bob / "i1.json").write_text('{"1": ' + "[" * 100_000 + "]" * 100_000 + "}")  # deeper than Python reads
    (bob / "i2.json").write_bytes("\ufeff".encode() + json.dumps({"1": [[0, 0.5], [0.2, 0.5]], "2": [[0, 0.3], [0, -0.6]]}).encode())
    (bob / "e.charcol").write_bytes(b'<?xml version="1.0" encoding="UTF-9"?><character-collection/>')
    (bob / "i3.pickle").write_bytes(pickle.dumps({float("inf"): GOOD[1], 2: GOOD[2]}))
    report = load_raw_dir(tmp_path)
    assert sorted(s.path for s in report.samples) == ["bob/d.tdic#1", "bob/i2.json"]  # a BOM is fine
    rejected = {r.path: (r.reason, r.message) for r in report.rejections}
    assert {path: reason for path, (reason, _) in rejected.items()} == {
        "bob/d.tdic#0": "bad_type",
        "bob/i1.json": "unreadable",
        "bob/e.charcol": "unreadable",
        "bob/i3.pickle": "bad_structure",
    }
    assert "1O0" in rejected["bob/d.tdic#0"][1] and "nested too deeply" in rejected["bob/i1.json"][1]
    assert "UTF-9" in rejected["bob/e.charcol"][1] and "inf" in rejected["bob/i3.pickle"][1]


def _mutated(data: bytes, rng: np.random.Generator) -> bytes:
    """`data` with a few bytes changed, cut, or spliced with something a parser chokes on."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        at = int(rng.integers(0, len(out) + 1))
        what = rng.random()
        if what < 0.4 and at < len(out):
            out[at] = int(rng.integers(0, 256))
        elif what < 0.6:
            del out[at : at + int(rng.integers(1, 9))]
        elif what < 0.85:
            junk = [b"(", b")", b"-", b"9e999", b"nan", b"[", b"]", b"\x00", b"<", b":", b'"', b"\xe3"]
            out[at:at] = junk[int(rng.integers(0, len(junk)))]
        else:
            del out[at:]
    return bytes(out)


def test_damaged_files_of_every_format_never_stop_the_load(tmp_path):
    """Every file a load meets ends as a sample or a named rejection, however it is damaged."""
    good_xml = ('<?xml version="1.0" encoding="UTF-8"?><character-collection><set name="x"><character>'
                '<utf8>い</utf8><strokes><stroke><point x="200" y="200"/><point x="250" y="700"/></stroke>'
                '<stroke><point x="700" y="250"/><point x="750" y="600"/></stroke></strokes></character>'
                "</set></character-collection>").encode()
    originals = {
        "pickle": pickle.dumps(GOOD, protocol=4),
        "json": json.dumps({k: v.tolist() for k, v in GOOD.items()}).encode(),
        "tdic": "い\n:2\n:2 (80 60) (100 250)\n:2 (230 90) (250 200)\n".encode(),
        "charcol": good_xml,
        "charcol.gz": gzip.compress(good_xml),
    }
    rng = np.random.default_rng(7)
    folder = tmp_path / "src"
    folder.mkdir()
    for k in range(400):
        for suffix, data in originals.items():
            (folder / f"i{suffix[:2]}{k}.{suffix}").write_bytes(_mutated(data, rng))
    report = load_raw_dir(tmp_path, any_stroke_count=True)
    files = {path.split("#")[0] for path in [s.path for s in report.samples] + [r.path for r in report.rejections]}
    assert len(files) == 400 * len(originals)
    assert report.samples and report.rejections
    assert all(r.path.split("#")[0].split("/")[-1] in r.message for r in report.rejections)  # named


def test_class_filter_rejects_other_classes(tmp_path):
    save_app_pickle([GOOD[1]] * 3, tmp_path / "src" / "kya1.pickle".replace("kya", "zo"))
    report = load_raw_dir(tmp_path, class_ids={c.char_id for c in class_set("basic46")})
    assert [r.reason for r in report.rejections] == ["not_in_class_set"]


def test_missing_raw_dir_is_empty(tmp_path):
    report = load_raw_dir(tmp_path / "nope")
    assert report.samples == [] and report.rejections == []


def test_safe_unpickle_keeps_numpy_and_containers():
    obj = {1: np.arange(6.0).reshape(3, 2), "meta": [1, 2.5, "x", (None, True)], "s": np.float32(2)}
    out = safe_unpickle(pickle.dumps(obj))
    np.testing.assert_array_equal(out[1], obj[1])
    assert out["meta"] == obj["meta"] and out["s"] == 2


def test_non_utf8_file_names_are_read_or_rejected_by_name(tmp_path):
    folder = tmp_path / "dave"
    folder.mkdir()
    good = os.fsencode(folder) + b"/i\xff\xfe.pickle"  # starts with a class id, then junk bytes
    with open(good, "wb") as fh:
        pickle.dump(GOOD, fh)
    with open(os.fsencode(folder) + b"/\xff\xfe.pickle", "wb") as fh:
        pickle.dump(GOOD, fh)
    report = load_raw_dir(tmp_path)
    assert [s.char_id for s in report.samples] == ["i"]
    assert [r.reason for r in report.rejections] == ["unknown_char_id"]
    assert "\udcff" in report.rejections[0].path  # the undecodable bytes, escaped, not dropped
