"""Raw data in: the app's pickles read safely, the other formats, validation, bad input."""

import gzip
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from kana.classes import char_id_from_filename, class_set, get_class, max_strokes
from kana.strokes import (
    InvalidSample,
    load_json_sample,
    load_pickle_sample,
    load_raw_dir,
    parse_strokes,
    read_json_lines,
    read_tegaki_charcol,
    read_tomoe_tdic,
    safe_unpickle,
    save_app_pickle,
)

GOOD = {1: np.array([[-0.5, 0.5], [0.5, 0.5]]), 2: np.array([[0.0, 0.8], [0.0, -0.8]])}
TDIC_I = "い\n:2\n:2 (80 60) (100 250)\n:2 (230 90) (250 200)\n"  # い as a Tomoe dictionary entry (320x320, y down)
TEGAKI_I = ("い", [[(200, 200), (250, 700)], [(700, 250), (750, 600)]])  # い as a Tegaki character (1000 wide, y down)


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


def test_every_one_file_reader_and_writer_takes_a_path_as_text(tmp_path):
    """`load_pickle_sample("data/raw/me/ka00001.pickle")`, as a user types it, reads as a Path
    does (a text path raised AttributeError: 'str' object has no attribute 'stat')."""
    save_app_pickle(list(GOOD.values()), str(tmp_path / "me" / "i0.pickle"))
    lists = [v.tolist() for v in GOOD.values()]
    for name, text in {"i0.json": json.dumps(lists),
                       "set.jsonl": json.dumps({"char_id": "i", "strokes": lists}) + "\n",
                       "set.tdic": TDIC_I}.items():
        (tmp_path / "me" / name).write_text(text, encoding="utf-8")
    for name in ("set.charcol", "set.charcol.gz"):
        _write_tegaki(tmp_path / "me" / name, [TEGAKI_I])

    def read(reader, path):  # a sample's strokes as lists, or a collection's (class, strokes)
        out = reader(path)
        if reader in (load_pickle_sample, load_json_sample):
            return [stroke.tolist() for stroke in out]
        return [(cid, [stroke.tolist() for stroke in strokes]) for cid, strokes in out]

    for reader, name in [(load_pickle_sample, "i0.pickle"), (load_json_sample, "i0.json"),
                         (read_json_lines, "set.jsonl"), (read_tomoe_tdic, "set.tdic"),
                         (read_tegaki_charcol, "set.charcol"), (read_tegaki_charcol, "set.charcol.gz")]:
        as_text = read(reader, str(tmp_path / "me" / name))
        assert as_text == read(reader, tmp_path / "me" / name), name
        if reader in (load_pickle_sample, load_json_sample):
            assert as_text == lists, name
        else:
            assert [cid for cid, _ in as_text] == ["i"], name
    with pytest.raises(FileNotFoundError, match="i1.pickle"):
        load_pickle_sample(str(tmp_path / "me" / "i1.pickle"))


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


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_of_every_protocol_and_array_layout_are_read(tmp_path, protocol):
    """Protocol 5 is Python 3.14's default; 0-2 pickle bytes through `_codecs.encode`."""
    strokes = {1: GOOD[1], 2: GOOD[2].astype(">f4"), 3: np.asfortranarray([[0.1, 0.2], [0.3, -0.4]]),
               4: np.array([[-1, 1], [1, -1]], dtype=np.int16), 5: [[np.float64(0.5), np.float32(0.25)]]}
    path = tmp_path / "a0.pickle"
    path.write_bytes(pickle.dumps(strokes, protocol=protocol))
    read = load_pickle_sample(path)
    for got, expected in zip(read, strokes.values()):
        np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.float64).reshape(-1, 2))
        assert type(got) is np.ndarray and got.dtype == np.float64


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 did at protocol 2, the app's format under a Python 2 Kivy: byte strings
    (an array's data, numpy's `b"b"`) as its `str` opcodes, which Python 3 reads back as text."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        self.write((pickle.SHORT_BINSTRING + bytes([len(obj)]) if len(obj) < 256
                    else pickle.BINSTRING + struct.pack("<i", len(obj))) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def test_python_2_pickles_are_read(tmp_path):
    """Nearly every float array has bytes over 127, which Python 3's default (ASCII) refused."""
    strokes = {1: GOOD[1] + 0.1, 2: np.linspace([-0.9, 0.9], [0.9, -0.9], 300), 3: np.float64([[0.3, 0.7]])}
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(strokes)
    written = buffer.getvalue()
    assert b"_codecs" not in written and pickle.BINSTRING + struct.pack("<i", 300 * 2 * 8) in written
    path = tmp_path / "a0.pickle"
    path.write_bytes(buffer.getvalue())
    read = load_pickle_sample(path)
    for got, expected in zip(read, strokes.values(), strict=True):
        np.testing.assert_array_equal(got, expected)
        assert type(got) is np.ndarray and got.dtype == np.float64


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own, wherever this numpy version keeps it


class _PickledDtype:
    """Pickles as numpy pickles a dtype, with the state given (numpy writes (3, "<", None, None,
    None, -1, -1, 0) for float64)."""

    def __init__(self, name, state):
        self.name, self.state = name, state

    def __reduce__(self):
        return (np.dtype, (self.name, False, True), self.state)


class _PickledArray:
    """Pickles as numpy pickles an array, with the parts given."""

    def __init__(self, shape, dtype, data, subtype=np.ndarray):
        self.shape, self.dtype, self.data, self.subtype = shape, dtype, data, subtype

    def __reduce__(self):
        return (_RECONSTRUCT, (self.subtype, (0,), b"b"), (1, self.shape, self.dtype, False, self.data))


def test_damaged_pickles_are_read_or_rejected_never_crash(tmp_path):
    """numpy's own unpickling trusts a dtype's flags and sizes: one byte changed there (a 6-item
    state) killed the process with a segfault, losing the whole load; and one changed in a memo
    index (LONG_BINPUT) made CPython's unpickler grow its memo to 12 GB and more, until the kernel
    killed the process. Run in a child with its memory capped, so that a crash fails this test
    rather than the suite or the machine."""
    f8 = (3, "<", None, None, None, -1, -1, 0)
    four = np.array([[0.0, 0.5], [0.25, -0.5]]).tobytes()
    cases = {
        "a_segfault": _PickledArray((2, 2), _PickledDtype("f8", (3, "<", 20046, -1, -1, 0)), four),
        "a_objectflag": _PickledArray((2, 2), _PickledDtype("f8", f8[:-1] + (1,)), four),
        "a_shortdata": _PickledArray((2, 3), _PickledDtype("f8", f8), four),
        "a_hugeshape": _PickledArray((2**62, 2), _PickledDtype("f8", f8), four),
        "a_badshape": _PickledArray((-2, 2), _PickledDtype("f8", f8), four),
        "a_objects": _PickledArray((2, 2), _PickledDtype("O8", (3, "|", None, None, None, -1, -1, 63)),
                                   [0.0, 0.5, 0.25, -0.5]),
        "a_badorder": _PickledArray((2, 2), _PickledDtype("f8", (3, "?", None, None, None, -1, -1, 0)),
                                    four),
        "a_matrix": _PickledArray((2, 2), _PickledDtype("f8", f8), four, subtype=np.matrix),
    }
    folder = tmp_path / "src"
    folder.mkdir()
    for name, array in cases.items():
        (folder / f"{name}.pickle").write_bytes(pickle.dumps({1: array, 2: GOOD[2]}, protocol=4))
    # PROTO 4, EMPTY_DICT, LONG_BINPUT 1560497044 (as a damaged file had it), STOP
    (folder / "a_memoindex.pickle").write_bytes(b"\x80\x04}r" + (1560497044).to_bytes(4, "little") + b".")
    # PROTO 5, BYTEARRAY8 of 2**40 bytes, with 2 there
    (folder / "a_bytearray.pickle").write_bytes(b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b"xx.")
    child = ("import json, resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
             "from kana.strokes import load_raw_dir\n"
             "report = load_raw_dir(sys.argv[1], any_stroke_count=True)\n"
             "print(json.dumps({'read': {s.path: s.strokes[0].tolist() for s in report.samples},"
             " 'rejected': {r.path: [r.reason, r.message] for r in report.rejections}}))")
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Error" not in done.stderr  # nothing printed by numpy
    report = json.loads(done.stdout)
    # the flags and sizes numpy kept are not read: a type of numbers needs its name and byte order
    assert report["read"] == {f"src/{n}.pickle": [[0.0, 0.5], [0.25, -0.5]] for n in ("a_segfault", "a_objectflag")}
    rejected = {path.split("/")[1].split(".")[0]: reason_message for path, reason_message in report["rejected"].items()}
    assert {name: reason for name, (reason, _) in rejected.items()} == {
        "a_shortdata": "unreadable", "a_hugeshape": "unreadable", "a_badshape": "unreadable",
        "a_objects": "bad_type", "a_badorder": "unreadable", "a_matrix": "refused_pickle",
        "a_memoindex": "unreadable", "a_bytearray": "unreadable"}
    assert "memo index 1560497044 at byte 3" in rejected["a_memoindex"][1]
    assert "holds 32 bytes, not 48" in rejected["a_shortdata"][1]
    assert "dtype 'O8', not numbers" in rejected["a_objects"][1]
    assert all(f"{name}.pickle" in message for name, (_, message) in rejected.items())


def test_zip_and_xml_bombs_are_refused_and_the_rest_kept(tmp_path):
    """17 KB of gzip that unzips to 17 MB (16 MB of it would be 16 GB), and XML entities that
    expand a billion-fold, each refused by name without taking the memory."""
    from kana.strokes import MAX_FILE_BYTES

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "zipped.charcol.gz").write_bytes(gzip.compress(b"\0" * (MAX_FILE_BYTES + 1)))
    entities = "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 10))
    (folder / "laughs.charcol").write_text(
        f'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY e0 "lol">{entities}]><character-collection>'
        "<set><character><utf8>&e9;</utf8></character></set></character-collection>")
    save_app_pickle(list(GOOD.values()), folder / "i0.pickle")
    report = load_raw_dir(tmp_path)
    assert [s.path for s in report.samples] == ["src/i0.pickle"]
    rejected = {r.path: (r.reason, r.message) for r in report.rejections}
    assert rejected["src/zipped.charcol.gz"] == (
        "too_large", f"zipped.charcol.gz: unzips to more than {MAX_FILE_BYTES} bytes")
    assert rejected["src/laughs.charcol"][0] == "unreadable" and "amplification" in rejected["src/laughs.charcol"][1]


def test_truncated_and_garbage_pickles_are_unreadable(tmp_path):
    good = pickle.dumps(GOOD)
    (tmp_path / "a0.pickle").write_bytes(good[: len(good) // 2])
    (tmp_path / "a1.pickle").write_bytes(b"\x00\xffnot a pickle")
    for name in ("a0.pickle", "a1.pickle"):
        with pytest.raises(InvalidSample) as exc:
            load_pickle_sample(tmp_path / name)
        assert exc.value.reason in {"unreadable", "refused_pickle"}
        assert name in str(exc.value)


def test_a_file_that_cannot_be_read_raises_its_os_error_and_in_a_folder_is_a_named_rejection(
        tmp_path, refuse_reading):
    """Missing, a folder or not permitted is not a bad sample: both loaders raise the OSError that
    names the file, and reading a folder turns it into one rejection that keeps the file's class."""
    for loader, suffix in ((load_pickle_sample, ".pickle"), (load_json_sample, ".json")):
        with pytest.raises(FileNotFoundError, match=f"i0{suffix}"):
            loader(tmp_path / f"i0{suffix}")
        (tmp_path / f"i1{suffix}").mkdir()
        with pytest.raises(IsADirectoryError, match=f"i1{suffix}"):
            loader(tmp_path / f"i1{suffix}")
    alice = tmp_path / "raw" / "alice"
    save_app_pickle(list(GOOD.values()), alice / "i00001.pickle")
    save_app_pickle(list(GOOD.values()), alice / "i00002.pickle")
    (alice / "i00003.json").write_text(json.dumps([s.tolist() for s in GOOD.values()]))
    refuse_reading(alice / "i00002.pickle", alice / "i00003.json")
    report = load_raw_dir(tmp_path / "raw")
    assert [s.path for s in report.samples] == ["alice/i00001.pickle"]
    assert sorted((r.path, r.char_id, r.reason, r.message) for r in report.rejections) == [
        ("alice/i00002.pickle", "i", "unreadable",
         f"alice/i00002.pickle: [Errno 13] Permission denied: '{alice / 'i00002.pickle'}'"),
        ("alice/i00003.json", "i", "unreadable",
         f"alice/i00003.json: [Errno 13] Permission denied: '{alice / 'i00003.json'}'")]


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
        ({1: [[0.0, 0.0]], "1": [[0.5, 0.5]]}, "bad_structure"),  # stroke 1 twice
        ({"strokes": [[[0.0, 0.0]]], "2": [[0.5, 0.5]]}, "bad_structure"),  # two readings
        ({1: [[1e9, 0.0]]}, "out_of_bounds"),
        ({1: [[10**400, 0.0]]}, "out_of_bounds"),  # no float holds it
        ({1: [["a", 0.0]]}, "bad_type"),
        ({1: [["0.5", "0.5"]]}, "bad_type"),  # text, as in an array of text, though it reads as numbers
        ({1: [[True, False], [False, True]]}, "bad_type"),  # JSON's true/false, as an array of bools
        ({1: [[0.5, 0.5], [True, 0.5]]}, "bad_type"),  # one true among numbers, not read as 1.0
        ({1: [[0, 0], [0, False]]}, "bad_type"),  # nor false among integers as 0
        ({1: [[np.True_, Decimal("0.5")]]}, "bad_type"),  # numpy's true among numbers it holds as objects
        ({1: [[Decimal("0.5"), np.complex128(0.3 + 1j)]]}, "bad_type"),  # not read as its real part, 0.3
        ({1: [[Decimal("0.5"), np.array(0.3 + 1j)]]}, "bad_type"),  # nor from inside an array
        ({1: [[Decimal("0.5"), np.array("0.5")]]}, "bad_type"),  # nor text from inside one as a number
        ({1: [[None, 0.0]]}, "bad_type"),  # JSON's null: not a point missing (NaN), a wrong value
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
    labelled = {"source": "tomoe", "char_id": "i", "character": "い", "strokes": as_lists}  # a .jsonl line
    shapes = [GOOD, {"2": as_lists[1], "1": as_lists[0]}, as_lists, {"strokes": as_lists}, labelled,
              {1: [[0, 0], [1, 1]], 2: [[0, 1]]}]
    for s in shapes[:5]:
        parsed = parse_strokes(s)
        np.testing.assert_allclose(parsed[0], as_lists[0])
        np.testing.assert_allclose(parsed[1], as_lists[1])
    assert parse_strokes(shapes[5])[0].dtype == np.float64  # integers are fine


def test_a_stroke_number_given_twice_or_beside_strokes_is_named():
    """Either would silently drop strokes: one of the two 1s, or every numbered stroke."""
    point = [[0.0, 0.0]]
    cases = {
        "stroke number 1 is given twice ('1' and '01')": {"1": point, "01": point},
        "has both 'strokes' and stroke number '3'": {"char_id": "a", "strokes": [point], "3": point},
    }
    for message, sample in cases.items():
        with pytest.raises(InvalidSample, match=re.escape(message)):
            parse_strokes(sample, "u1.json")
    assert len(parse_strokes({"strokes": [point, point], "char_id": "i", "note": "x"})) == 2


def test_one_strokes_points_given_as_a_sample_is_named():
    """The nesting level most easily lost in JSON: the error says so, not "stroke 1: points have
    shape (2,)"; strokes of one point each still parse."""
    points = [[-0.5, 0.5], [0.5, 0.5]]
    for sample in (points, tuple(map(tuple, points)), np.array(points), list(np.array(points))):
        with pytest.raises(InvalidSample, match=re.escape("sample 3: is one stroke's points, not a list of "
                                                          "strokes; give a one-stroke sample as [[[x, y], ...]]")):
            parse_strokes(sample, "sample 3")
    assert [s.shape for s in parse_strokes([[points[0]], [points[1]]])] == [(1, 2), (1, 2)]
    assert len(parse_strokes(np.array([points]))) == 1


def test_numeric_keys_sort_numerically():
    s = {str(k): [[k / 20.0, 0.0]] for k in range(1, 12)}
    parsed = parse_strokes(s)
    assert [p[0, 0] for p in parsed] == [k / 20.0 for k in range(1, 12)]


def _tegaki_xml(chars) -> bytes:
    """A Tegaki character collection of (character, strokes) pairs, as XML."""
    body = "".join(
        f"<character><utf8>{ch}</utf8><strokes>"
        + "".join("<stroke>" + "".join(f'<point x="{x}" y="{y}"/>' for x, y in st) + "</stroke>" for st in strokes)
        + "</strokes></character>"
        for ch, strokes in chars
    )
    xml = f'<?xml version="1.0" encoding="UTF-8"?><character-collection><set name="x">{body}</set></character-collection>'
    return xml.encode("utf-8")


def _write_tegaki(path, chars):
    data = _tegaki_xml(chars)
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
    (alice / "notes.txt").write_text("ignored: not a raw format, but named")
    (alice / ".DS_Store").write_bytes(b"\0")  # hidden: not named
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "ab12").write_bytes(b"\0")
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # macOS's metadata twin
    (alice / "._i00001.pickle").write_bytes(apple_double)
    (tmp_path / "__MACOSX" / "alice").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "alice" / "._i00001.pickle").write_bytes(apple_double)
    (alice / ".trash").mkdir()
    save_app_pickle(list(GOOD.values()), alice / ".trash" / "i00003.pickle")  # hidden folder: passed over
    # Tomoe dictionary (320x320, y down): one good い and one character that is no class
    (alice / "hira.tdic").write_text(
        TDIC_I + "X\n:1\n:2 (1 1) (2 2)\n", encoding="utf-8"
    )
    _write_tegaki(alice / "c.charcol.gz", [TEGAKI_I, ("い", [[(200, "bad")]])])
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
    bad_point = next(r.message for r in report.rejections if r.path == "alice/c.charcol.gz#1")
    assert bad_point == "c.charcol.gz#1: stroke 1: point 1 (x '200', y 'bad') is not two numbers"
    assert not (tmp_path / "pwned").exists()
    assert report.not_read == ["alice/notes.txt"]
    assert {s.source for s in report.samples} == {"alice"}
    tomoe = next(s for s in report.samples if s.path == "alice/hira.tdic#0")
    np.testing.assert_allclose(tomoe.strokes[0][0], [80 / 160 - 1, 1 - 60 / 160])  # y flipped up
    tegaki = next(s for s in report.samples if s.path.startswith("alice/c.charcol"))
    np.testing.assert_allclose(tegaki.strokes[0][0], [-0.6, 0.6])
    # for scoring real drawings, a count off the table is kept; every other rejection stands
    scored = load_raw_dir(tmp_path, any_stroke_count=True)
    assert sorted(s.path for s in scored.samples) == sorted(kept + ["alice/i00002.pickle"])
    assert {r.path for r in scored.rejections} == set(reasons) - {"alice/i00002.pickle"}


def test_load_raw_dir_walks_linked_folders_and_names_links_to_nothing(tmp_path):
    elsewhere = tmp_path / "other_disk" / "carol"  # a contributor's folder kept outside raw/
    (elsewhere / "deeper").mkdir(parents=True)
    save_app_pickle(list(GOOD.values()), elsewhere / "i00001.pickle")
    save_app_pickle(list(GOOD.values()), elsewhere / "deeper" / "i00002.pickle")
    raw = tmp_path / "raw"
    (raw / "alice").mkdir(parents=True)
    save_app_pickle(list(GOOD.values()), raw / "alice" / "i00001.pickle")
    (raw / "carol").symlink_to(elsewhere, target_is_directory=True)
    (raw / "alice" / "loop").symlink_to(raw, target_is_directory=True)  # back up: walked once
    (raw / "dave").symlink_to(tmp_path / "usb_not_mounted", target_is_directory=True)
    (raw / "alice" / "i00003.pickle").symlink_to(tmp_path / "moved.pickle")
    report = load_raw_dir(raw)
    assert sorted((s.source, s.path) for s in report.samples) == [
        ("alice", "alice/i00001.pickle"), ("carol", "carol/deeper/i00002.pickle"),
        ("carol", "carol/i00001.pickle")]
    rejected = {r.path: (r.char_id, r.reason, r.message) for r in report.rejections}
    assert rejected == {  # "dave" is a folder's name, not a sample's of class "da"
        "dave": (None, "unreadable", f"dave: a link to {tmp_path / 'usb_not_mounted'}, which does not exist"),
        "alice/i00003.pickle": ("i", "unreadable",
                                f"alice/i00003.pickle: a link to {tmp_path / 'moved.pickle'}, which does not exist"),
    }
    assert report.not_read == []


def test_load_raw_dir_names_a_folder_it_may_not_list(tmp_path, refuse_listing):
    for source in ("alice", "bob"):
        save_app_pickle(list(GOOD.values()), tmp_path / source / "i00001.pickle")
    locked = tmp_path / "bob"
    refuse_listing(locked)
    report = load_raw_dir(tmp_path)
    assert [s.path for s in report.samples] == ["alice/i00001.pickle"]
    assert [(r.path, r.char_id, r.reason, r.message) for r in report.rejections] == [
        ("bob", None, "unreadable", f"bob: [Errno 13] Permission denied: '{locked}'")]


def test_a_bad_part_of_a_file_is_a_named_rejection_and_the_rest_is_kept(tmp_path):
    bob = tmp_path / "bob"
    bob.mkdir()
    # a Tomoe dictionary whose first character has a point that is no number: only it is lost
    (bob / "d.tdic").write_text(
        "う\n:1\n:2 (80 60) (1O0 250)\n" + TDIC_I,
        encoding="utf-8",
    )
    (bob / "i1.json").write_text('{"1": ' + "[" * 100_000 + "]" * 100_000 + "}")  # deeper than Python reads
    (bob / "i2.json").write_bytes("\ufeff".encode() + json.dumps({"1": [[0, 0.5], [0.2, 0.5]], "2": [[0, 0.3], [0, -0.6]]}).encode())
    (bob / "e.charcol").write_bytes(b'<?xml version="1.0" encoding="UTF-9"?><character-collection/>')
    (bob / "i3.pickle").write_bytes(pickle.dumps({float("inf"): GOOD[1], 2: GOOD[2]}))
    (bob / "i4.json").write_text('{"1": [[0.5, ' + "9" * 5000 + "]]}")  # Python reads at most 4,300 digits
    report = load_raw_dir(tmp_path)
    assert sorted(s.path for s in report.samples) == ["bob/d.tdic#1", "bob/i2.json"]  # a BOM is fine
    rejected = {r.path: (r.reason, r.message) for r in report.rejections}
    assert {path: reason for path, (reason, _) in rejected.items()} == {
        "bob/d.tdic#0": "bad_type",
        "bob/i1.json": "unreadable",
        "bob/e.charcol": "unreadable",
        "bob/i3.pickle": "bad_structure",
        "bob/i4.json": "unreadable",
    }
    assert "4300 digits" in rejected["bob/i4.json"][1]
    assert rejected["bob/d.tdic#0"][1] == "d.tdic#0: stroke 1: point 2 (x '1O0', y '250') is not two numbers"
    assert "nested too deeply" in rejected["bob/i1.json"][1]
    assert "UTF-9" in rejected["bob/e.charcol"][1] and "inf" in rejected["bob/i3.pickle"][1]


def test_json_lines_are_read_a_sample_a_line_and_a_bad_line_loses_only_itself(tmp_path):
    carol = tmp_path / "carol"
    carol.mkdir()
    i_strokes = [[[0, 0.5], [0.2, 0.5]], [[0, 0.3], [0, -0.6]]]
    lines = [
        json.dumps({"source": "pen", "char_id": "i", "character": "い", "strokes": i_strokes}),
        json.dumps({"character": "い", "strokes": {"1": i_strokes[0], "2": i_strokes[1]}, "note": "\u2028"},
                   ensure_ascii=False),  # a line separator inside a string does not end the line
        "",
        json.dumps({"char_id": "i", "strokes": i_strokes[:1]}),  # a count off the table
        json.dumps({"char_id": "zz", "strokes": i_strokes}),
        json.dumps({"char_id": "i", "character": "う", "strokes": i_strokes}),
        json.dumps({"strokes": i_strokes}),
        json.dumps(i_strokes),
        json.dumps({"char_id": "i", "strokes": [[], i_strokes[1]]}),
        '{"char_id": "i", "strokes": [[[0, 0.5]',
        json.dumps({"char_id": "i", "strokes": i_strokes}),
        json.dumps({"char_id": "i", "points": i_strokes}),
        json.dumps({"char_id": "i", "strokes": i_strokes, "3": i_strokes[0]}),  # two readings
    ]
    (carol / "pen.jsonl").write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    (carol / "utf16.jsonl").write_bytes('{"character": "\u3044"}'.encode("utf-16"))
    (carol / "empty.jsonl").write_text("\n\n")
    report = load_raw_dir(tmp_path)
    assert sorted(s.path for s in report.samples) == ["carol/pen.jsonl#0", "carol/pen.jsonl#1", "carol/pen.jsonl#9"]
    assert {s.char_id for s in report.samples} == {"i"} and {s.source for s in report.samples} == {"carol"}
    np.testing.assert_allclose(report.samples[1].strokes[1], i_strokes[1])
    rejected = {r.path: (r.reason, r.message) for r in report.rejections}
    assert {path: reason for path, (reason, _) in rejected.items()} == {
        "carol/pen.jsonl#2": "wrong_stroke_count",
        "carol/pen.jsonl#3": "unknown_char_id",
        "carol/pen.jsonl#4": "bad_structure",
        "carol/pen.jsonl#5": "unknown_char_id",
        "carol/pen.jsonl#6": "bad_structure",
        "carol/pen.jsonl#7": "empty_stroke",
        "carol/pen.jsonl#8": "unreadable",
        "carol/pen.jsonl#10": "bad_structure",
        "carol/pen.jsonl#11": "bad_structure",
        "carol/utf16.jsonl#0": "unreadable",
        "carol/empty.jsonl": "empty_sample",
    }
    assert rejected["carol/pen.jsonl#3"][1] == "pen.jsonl#3 (line 5): char_id 'zz' is not a class"
    assert rejected["carol/pen.jsonl#4"][1] == "pen.jsonl#4 (line 6): char_id 'i' is い, but character is 'う'"
    assert 'neither "char_id" nor "character"' in rejected["carol/pen.jsonl#5"][1]
    assert rejected["carol/pen.jsonl#6"][1] == 'pen.jsonl#6 (line 8): expected an object with "strokes", got list'
    assert "(line 9): stroke 1: has no points" in rejected["carol/pen.jsonl#7"][1]
    assert "(line 10): not valid JSON" in rejected["carol/pen.jsonl#8"][1]
    assert rejected["carol/pen.jsonl#10"][1] == 'pen.jsonl#10 (line 12): has no "strokes" field'
    assert rejected["carol/pen.jsonl#11"][1] == (
        "pen.jsonl#11 (line 13): has both 'strokes' and stroke number '3'; give one or the other")
    assert "(line 1): not valid JSON ('utf-8' codec can't decode" in rejected["carol/utf16.jsonl#0"][1]
    assert rejected["carol/empty.jsonl"] == ("empty_sample", "carol/empty.jsonl: holds no characters")
    classes = {r.path: r.char_id for r in report.rejections}
    assert classes["carol/empty.jsonl"] is None and classes["carol/pen.jsonl#2"] == "i"  # not "e", from its name
    scored = load_raw_dir(tmp_path, any_stroke_count=True)  # as `real_dir` reads
    assert "carol/pen.jsonl#2" in {s.path for s in scored.samples}


def test_a_json_lines_file_may_be_any_size_and_a_line_too_large_loses_only_itself(tmp_path, monkeypatch):
    monkeypatch.setattr("kana.strokes.MAX_FILE_BYTES", 1000)  # 16 MiB, a sample's most
    good = json.dumps({"char_id": "i", "strokes": [[[0, 0.5], [0.2, 0.5]], [[0, 0.3], [0, -0.6]]]})
    longest = good[:-1] + " " * (1000 - len(good)) + "}"  # 1,000 bytes: the most a line may hold
    lines = [good] * 19 + [longest, json.dumps({"char_id": "i", "strokes": [[[0.1, 0.1]] * 200] * 2})] + [good] * 3
    (tmp_path / "dave").mkdir()
    (tmp_path / "dave" / "many.jsonl").write_text("\r\n".join(lines))  # no line end after the last
    assert (tmp_path / "dave" / "many.jsonl").stat().st_size > 3000 and len(lines[20]) > 3000
    report = load_raw_dir(tmp_path)
    assert len(report.samples) == 23 and report.samples[-1].path == "dave/many.jsonl#23"
    assert [(r.path, r.reason, r.message) for r in report.rejections] == [
        ("dave/many.jsonl#20", "too_large", "many.jsonl#20 (line 21): a line of over 1000 bytes")]


TOMOE = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev_real"


@pytest.mark.skipif(not TOMOE.is_dir(), reason="../shared is not beside the checkout")
def test_the_shared_tomoe_json_lines_read_as_their_pickles(tmp_path):
    """`../shared` ships Tomoe's templates both ways: one `.jsonl`, and a pickle each."""
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "tomoe.jsonl").write_bytes((TOMOE / "tomoe_hiragana.jsonl").read_bytes())
    from_lines = load_raw_dir(tmp_path, any_stroke_count=True)
    from_pickles = load_raw_dir(TOMOE / "tomoe_raw", any_stroke_count=True)
    assert not from_lines.rejections and not from_pickles.rejections
    assert len(from_lines.samples) == len(from_pickles.samples) == 47
    for line, pickled in zip(from_lines.samples, sorted(from_pickles.samples, key=lambda s: s.path[-12:]),
                             strict=True):
        assert line.char_id == pickled.char_id
        for a, b in zip(line.strokes, pickled.strokes, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-12)


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


def test_a_tomoe_entry_that_does_not_hold_what_it_declares_is_named_not_read_as_another_drawing(tmp_path):
    """Tomoe's lines say how many strokes and points follow: a point lost to damage, or an entry
    cut short, read as a different drawing (a stroke of one point, a character a stroke short)."""
    damaged = {  # each entry, and what its rejection says after "t.tdic#<k>: "
        "い\n:2\n:2 (80 60) (100)\n:2 (230 90) (250 200)\n": ("bad_type", "stroke 1: '(100)' is not a point (x y)"),
        "い\n:2\n:2 (80 60 70) (100 250)\n:2 (230 90) (250 200)\n":
            ("bad_type", "stroke 1: '(80 60 70)' is not a point (x y)"),
        "い\n:2\n:2 (80 60) garbage (100 250)\n:2 (230 90) (250 200)\n":
            ("bad_type", "stroke 1: 'garbage' is not a point (x y)"),
        "い\n:2\n:3 (80 60) (100 250)\n:2 (230 90) (250 200)\n":
            ("bad_structure", "stroke 1: declares 3 points, holds 2"),
        "い\n:3\n:2 (80 60) (100 250)\n:2 (230 90) (250 200)\n": ("bad_structure", "declares 3 strokes, holds 2"),
        "い\n:two\n:2 (80 60) (100 250)\n:2 (230 90) (250 200)\n": ("bad_structure", "'two' is not a count"),
    }
    (tmp_path / "t.tdic").write_text("".join(damaged) + TDIC_I, encoding="utf-8")
    read = list(read_tomoe_tdic(tmp_path / "t.tdic"))
    assert [(cid, exc.reason, str(exc)) for cid, exc in read[:-1]] == [
        (None, reason, f"t.tdic#{k}: {message}") for k, (reason, message) in enumerate(damaged.values())]
    (tmp_path / "i.tdic").write_text(TDIC_I, encoding="utf-8")
    (_, alone), = read_tomoe_tdic(tmp_path / "i.tdic")
    assert read[-1][0] == "i" and [s.tolist() for s in read[-1][1]] == [s.tolist() for s in alone]  # kept
    (tmp_path / "h.tdic").write_text(":2\n:2 (80 60) (100 250)\n:2 (230 90) (250 200)\n" + TDIC_I,
                                     encoding="utf-8")  # its first character line lost
    (_, headless), (cid, kept) = read_tomoe_tdic(tmp_path / "h.tdic")
    assert (headless.reason, str(headless)) == (
        "bad_structure", "h.tdic#0: ':' lines (3) before the first character line belong to no character")
    assert cid == "i" and [s.tolist() for s in kept] == [s.tolist() for s in alone]
    (tmp_path / "z.tdic").write_text("い\n:2\n:0\n:2 (230 90) (250 200)\n", encoding="utf-8")
    (_, empty), = read_tomoe_tdic(tmp_path / "z.tdic")  # a stroke of no points is one, not the count
    assert (empty.reason, str(empty)) == ("empty_stroke", "z.tdic#0: stroke 1: has no points")


def test_damaged_files_of_every_format_never_stop_the_load(tmp_path):
    """Every file a load meets ends as a sample or a named rejection, however it is damaged."""
    good_xml = _tegaki_xml([TEGAKI_I])
    originals = {
        "pickle": [pickle.dumps(GOOD, protocol=protocol) for protocol in (2, 4, 5)],
        "json": json.dumps({k: v.tolist() for k, v in GOOD.items()}).encode(),
        "tdic": TDIC_I.encode(),
        "charcol": good_xml,
        "charcol.gz": gzip.compress(good_xml),
        "jsonl": (json.dumps({"char_id": "i", "strokes": [v.tolist() for v in GOOD.values()]}) + "\n") .encode() * 2,
    }
    rng = np.random.default_rng(7)
    folder = tmp_path / "src"
    folder.mkdir()
    for k in range(400):
        for suffix, data in originals.items():
            data = data[k % len(data)] if isinstance(data, list) else data
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


def test_load_raw_dir_refuses_a_folder_that_is_not_there_or_may_not_be_listed(tmp_path, refuse_listing,
                                                                             monkeypatch):
    # a mistyped path read as an empty folder would pass unseen: a scoring script would report
    # accuracy over nothing, a loop over contributors' folders would skip one
    save_app_pickle(list(GOOD.values()), tmp_path / "alice" / "i00001.pickle")
    with pytest.raises(ValueError, match=r"raw_dir '.*alcie' is not a folder \(looked from "):
        load_raw_dir(tmp_path / "alcie")
    with pytest.raises(ValueError, match=r"raw_dir '.*i00001\.pickle' is not a folder"):
        load_raw_dir(tmp_path / "alice" / "i00001.pickle")
    monkeypatch.chdir(tmp_path / "alice")
    with pytest.raises(ValueError, match=r"^raw_dir is empty: name a folder \('\.' for the current one\)$"):
        load_raw_dir("")  # an unset variable, say: not the current folder unasked
    assert [(s.path, s.source) for s in load_raw_dir(".").samples] == [("i00001.pickle", "alice")]
    (tmp_path / "alice" / "notes").mkdir()
    assert [s.source for s in load_raw_dir("notes/..").samples] == ["alice"]  # not '..'
    refuse_listing(tmp_path / "alice")
    with pytest.raises(ValueError, match=r"raw_dir '.*alice' cannot be listed: Permission denied$"):
        load_raw_dir(tmp_path / "alice")
    assert [r.path for r in load_raw_dir(tmp_path).rejections] == ["alice"]  # read from above: named


@pytest.mark.parametrize("raw_dir, named", [(None, "None"), (3, "a value of type int"),
                                             (["a"], "a value of type list")])
def test_load_raw_dir_names_a_raw_dir_that_is_no_path(raw_dir, named):
    # an unset setting read in Python: Python's own "expected str, bytes or os.PathLike object"
    # named no parameter
    with pytest.raises(TypeError, match=f"^raw_dir must name a folder \\(a str, bytes or Path\\), got {named}$"):
        load_raw_dir(raw_dir)


def test_load_raw_dir_reads_a_folder_named_in_bytes(tmp_path):
    save_app_pickle(list(GOOD.values()), tmp_path / "alice" / "i00001.pickle")
    report = load_raw_dir(os.fsencode(tmp_path))  # as os.listdir(b".") and os.walk name folders
    assert [(s.path, s.source) for s in report.samples] == [("alice/i00001.pickle", "alice")]


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
