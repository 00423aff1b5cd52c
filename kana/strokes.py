"""Strokes in: reading raw samples safely, from every format kana accepts, and validating them.

A sample is a list of strokes in drawing order, each a float64 array (N, 2) of x, y in [-1, 1]
with y pointing up (the Kivy app's canvas). This is the one place where raw input becomes that,
for training (files under `data/raw/<source>/`) and for serving (the pyfunc's input) alike.

Raw pickles come from strangers, so they are read with `SafeUnpickler`, which can build plain
containers, numbers and numpy arrays of numbers and nothing else: any other global is refused
before it is called, so a payload never runs. numpy's own unpickling trusts the array headers it
is given, and CPython's the memo indices, so both are checked first: a damaged file is a named
rejection, never a crash or a machine's memory taken.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
import re
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kana.classes import ALL_CLASSES, char_id_from_filename, get_class

Strokes = list[np.ndarray]

# Generous limits: real drawings are far inside them, absurd input is refused before any work.
COORD_BOUND = 1.5  # the canvas is [-1, 1]; a finger may overshoot its edge a little
MAX_STROKES = 64
MAX_POINTS_PER_STROKE = 5000
MAX_FILE_BYTES = 16 * 1024 * 1024

_CHAR_TO_ID = {c.character: c.char_id for c in ALL_CLASSES}
_NUMBER_KINDS = "iuf"  # numpy dtype kinds of coordinates: signed and unsigned integers, floats


class InvalidSample(ValueError):
    """A sample that cannot be used; `reason` is a short code that reports count by."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------- safe unpickling


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for something other than containers, numbers and numpy arrays."""


class PickledNotNumbers(pickle.UnpicklingError):
    """A pickled numpy array or scalar of another type than numbers (objects, text, records)."""


_NUMBER_DTYPE = re.compile(r"[biuf]\d{1,2}")  # how numpy pickles bool, int, uint and float types
_MAX_DIMENSIONS = 32


class _UnpickledDtype:
    """Stands in for `numpy.dtype` while unpickling. numpy's own `dtype.__setstate__` trusts the
    sizes and flags in the pickle: one damaged byte there crashed the whole process (a segfault,
    not an exception), and a crafted one could make numpy read float bytes as object pointers. A
    type of numbers needs only its name and byte order, so those alone are read."""

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or not _NUMBER_DTYPE.fullmatch(name):
            raise PickledNotNumbers(f"a numpy array of dtype {name!r:.40}, not numbers")
        try:
            self.dtype = np.dtype(name)
        except TypeError:
            raise PickledNotNumbers(f"a numpy array of dtype {name!r}, not numbers") from None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"bad numpy dtype state {state!r:.80}")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _checked_array_layout(shape, dtype, data) -> tuple[tuple[int, ...], np.dtype, bytes]:
    """A pickled array's shape, type and bytes, refused unless the bytes are exactly its shape's."""
    if not isinstance(dtype, _UnpickledDtype):
        raise pickle.UnpicklingError(f"numpy array with dtype {type(dtype).__name__}")
    if (not isinstance(shape, tuple) or len(shape) > _MAX_DIMENSIONS
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"bad numpy array shape {shape!r:.80}")
    if isinstance(data, str):  # Python 2's pickles, read as text
        data = data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"numpy array data is {type(data).__name__}, not bytes")
    data = bytes(data)
    expected = math.prod(shape) * dtype.dtype.itemsize
    if len(data) != expected:
        raise pickle.UnpicklingError(
            f"numpy array of shape {shape} {dtype.dtype} holds {len(data)} bytes, not {expected}")
    return shape, dtype.dtype, data


class _UnpickledArray(np.ndarray):
    """What `_reconstruct` makes while unpickling: an ndarray whose state is checked before
    numpy reads it (see `_UnpickledDtype`). `np.asarray` of one is a plain ndarray."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError(f"bad numpy array state {state!r:.80}")
        shape, dtype, fortran, data = state[-4:]
        if type(fortran) not in (bool, int):
            raise pickle.UnpicklingError(f"bad numpy array order {fortran!r:.40}")
        shape, dtype, data = _checked_array_layout(shape, dtype, data)
        super().__setstate__((1, shape, dtype, bool(fortran), data))


def _reconstruct(subtype, shape, typecode):
    if subtype is not np.ndarray:
        raise ForbiddenGlobal(f"refused to build an array of {subtype!r:.60}")
    return np.ndarray.__new__(_UnpickledArray, (0,), "b")


def _scalar(dtype, data):
    _, dtype, data = _checked_array_layout((), dtype, data)
    return np.frombuffer(data, dtype)[0]


def _frombuffer(buffer, dtype, shape, order):
    """Arrays as pickle protocol 5 writes them (Python 3.14's default)."""
    if order not in ("C", "F"):
        raise pickle.UnpicklingError(f"bad numpy array order {order!r:.40}")
    shape, dtype, data = _checked_array_layout(shape, dtype, buffer)
    return np.frombuffer(bytearray(data), dtype).reshape(shape, order=order)


def _latin1_bytes(text, encoding):
    """Bytes as Python 3 pickles them at protocols 0-2: `_codecs.encode(text, "latin1")`."""
    if not isinstance(text, str) or encoding != "latin1":
        raise ForbiddenGlobal(f"refused _codecs.encode with {type(text).__name__}, {encoding!r:.20}")
    return text.encode("latin-1")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, numbers, strings and numpy arrays of numbers.

    Containers and numbers need no globals; numpy arrays need the ones below, each replaced by a
    stand-in that checks what the pickle gives it before numpy sees it. Everything else
    (os.system, builtins.eval, subprocess, custom classes...) is refused without being called.
    """

    _ALLOWED = {
        **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
        **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
        **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _UnpickledDtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        raise ForbiddenGlobal(f"refused to load global {module}.{name}")


def check_pickle_opcodes(data: bytes) -> None:
    """Refuse a pickle that would make the unpickler take far more memory than the file holds.

    CPython's unpickler grows its memo to the largest index a PUT names: a damaged 343-byte file
    naming index 1,560,497,044 took 24 GB until the kernel killed the process, and the whole load
    with it. A pickle written by `pickle.dump` names each index right after the last, so an index
    further on is refused. Walking the opcodes (pure Python, about 50 us for an app sample) also
    refuses a count of bytes that runs past the file's end before the unpickler allocates it.
    """
    stored = 0
    try:
        for opcode, arg, pos in pickletools.genops(data):
            if opcode.name == "MEMOIZE":
                stored += 1
            elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if arg > stored:
                    raise pickle.UnpicklingError(
                        f"memo index {arg} at byte {pos}, where the pickle has stored {stored}")
                if arg == stored:  # a new entry, not one stored again
                    stored += 1
    except ValueError as exc:  # genops': an unknown opcode, a count past the end, no STOP
        raise pickle.UnpicklingError(str(exc)) from None


def safe_unpickle(data: bytes):
    """Unpickle untrusted bytes with `SafeUnpickler`, after `check_pickle_opcodes`."""
    check_pickle_opcodes(data)
    # latin1: Python 2 pickled an array's bytes as its `str`, which Python 3 reads as text; latin1
    # maps each byte to one character and back (numpy's advice for Python 2 pickles), where the
    # default ASCII refuses any byte over 127, as nearly every float array has.
    return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()


# --------------------------------------------------------------------------- parsing


def parse_strokes(obj, where: str = "sample") -> Strokes:
    """Turn any accepted sample shape into a list of (N, 2) float64 strokes in drawing order.

    Accepted: the app's dict `{1: ndarray (N, 2), ...}` (int or numeric string keys, sorted
    numerically), a list of strokes, or `{"strokes": [...]}` (a labelled record: other fields, such
    as "char_id", are ignored, but not stroke numbers, which would leave two readings of one
    sample). A stroke number given twice (1 and "1", or "1" and "01") is refused for the same
    reason. Raises InvalidSample naming `where`.
    """
    if isinstance(obj, Mapping) and "strokes" in obj:
        numbered = [key for key in obj if key != "strokes" and _stroke_number(key) is not None]
        if numbered:
            raise InvalidSample(
                "bad_structure",
                f"{where}: has both 'strokes' and stroke number {numbered[0]!r}; give one or the other",
            )
        obj = obj["strokes"]
    if isinstance(obj, Mapping):
        keyed = []
        seen = {}
        for key, value in obj.items():
            number = _stroke_number(key)
            if number is None:
                raise InvalidSample(
                    "bad_structure", f"{where}: stroke key {key!r} is not a stroke number"
                )
            if number in seen:
                raise InvalidSample(
                    "bad_structure",
                    f"{where}: stroke number {number} is given twice ({seen[number]!r} and {key!r})",
                )
            seen[number] = key
            keyed.append((number, value))
        keyed.sort(key=lambda kv: kv[0])
        raw_strokes = [v for _, v in keyed]
    elif _is_one_strokes_points(obj):
        raise InvalidSample(
            "bad_structure",
            f"{where}: is one stroke's points, not a list of strokes; "
            "give a one-stroke sample as [[[x, y], ...]] or {1: [[x, y], ...]}",
        )
    elif isinstance(obj, (list, tuple)):
        raw_strokes = list(obj)
    elif isinstance(obj, np.ndarray) and obj.dtype != object and obj.ndim == 3:
        raw_strokes = list(obj)
    else:
        raise InvalidSample(
            "bad_structure",
            f"{where}: expected a dict of strokes, a list of strokes or {{'strokes': [...]}}, "
            f"got {type(obj).__name__}",
        )
    if not raw_strokes:
        raise InvalidSample("empty_sample", f"{where}: has no strokes")
    if len(raw_strokes) > MAX_STROKES:
        raise InvalidSample(
            "too_many_strokes", f"{where}: has {len(raw_strokes)} strokes (at most {MAX_STROKES})"
        )
    return [_parse_stroke(s, f"{where}: stroke {i + 1}") for i, s in enumerate(raw_strokes)]


def _is_one_strokes_points(obj) -> bool:
    """True for a sample that is one stroke's (N, 2) points rather than strokes, the nesting level
    most easily lost in JSON: its first item is an [x, y] pair of numbers, which no stroke is."""
    if isinstance(obj, np.ndarray):
        return obj.ndim == 2 and obj.shape[1] == 2 and obj.dtype.kind in _NUMBER_KINDS
    if not isinstance(obj, (list, tuple)) or not obj:
        return False
    first = obj[0]
    if isinstance(first, np.ndarray):
        return first.shape == (2,) and first.dtype.kind in _NUMBER_KINDS
    return (isinstance(first, (list, tuple)) and len(first) == 2
            and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                    for v in first))


def _stroke_number(key) -> int | None:
    """A dict key as a stroke number (1, "1", "01"), or None where it is none (floats, bools, text)."""
    if isinstance(key, (float, bool)):
        return None
    try:
        return int(key)
    except (TypeError, ValueError, OverflowError):
        return None


_TRUE_FALSE = (bool, np.bool_)  # JSON's true/false as Python or numpy gives them: not coordinates
_NOT_COORDINATES = (*_TRUE_FALSE, str, bytes, complex, np.complexfloating)


def _not_a_coordinate(value) -> bool:
    """For one item of an object array: None, text, true/false or a complex number, or a numpy
    array (nested in a ragged list) of anything but numbers; a float cast would read some of them
    as numbers or NaN (None, true, "0.5", a complex number's real part)."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind not in _NUMBER_KINDS
    return value is None or isinstance(value, _NOT_COORDINATES)


def _list_as_array(raw, where: str) -> np.ndarray:
    """Points given as lists, as numpy reads them without being told a type, so a list of text or
    of true/false (or one true among numbers) is refused as an array of them is, not read as numbers
    ("0.5" as 0.5, true as 1).
    Numbers numpy holds only as objects (an integer beyond int64) become floats where one holds them;
    a complex number among them is refused, not read as its real part."""
    try:
        points = np.asarray(raw)
    except ValueError:  # ragged
        raise InvalidSample("bad_type", f"{where}: points must be pairs of numbers") from None
    if points.dtype.kind != "O":
        if points.dtype.kind in _NUMBER_KINDS and _holds_bools_read_as_numbers(raw, points):
            raise InvalidSample("bad_type", f"{where}: points must be pairs of numbers, got true/false")
        return points
    if any(_not_a_coordinate(v) for v in points.flat):
        raise InvalidSample("bad_type", f"{where}: points must be pairs of numbers")
    try:
        return points.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidSample("bad_type", f"{where}: points must be pairs of numbers") from None
    except OverflowError:  # an integer beyond any float, such as 10**400
        raise InvalidSample(
            "out_of_bounds", f"{where}: a coordinate is too large for a float (the canvas is [-1, 1])"
        ) from None


def _holds_bools_read_as_numbers(raw, points: np.ndarray) -> bool:
    """Whether numpy read a true/false among numbers as 1/0 ([true, 0.5] as [1.0, 0.5]). Only a list
    holding an exact 0 or 1 can have had one, so most strokes are never walked in Python."""
    if not ((points == 0) | (points == 1)).any():
        return False
    return any(isinstance(v, _TRUE_FALSE) for v in np.asarray(raw, dtype=object).flat)


def _parse_stroke(raw, where: str) -> np.ndarray:
    if isinstance(raw, (str, bytes)) or raw is None:
        raise InvalidSample("bad_structure", f"{where}: expected points, got {type(raw).__name__}")
    if isinstance(raw, (list, tuple)) and len(raw) > MAX_POINTS_PER_STROKE:
        raise InvalidSample(
            "too_many_points", f"{where}: has {len(raw)} points (at most {MAX_POINTS_PER_STROKE})"
        )
    points = np.asarray(raw) if isinstance(raw, np.ndarray) else _list_as_array(raw, where)  # a plain ndarray
    if points.dtype.kind not in _NUMBER_KINDS:  # text stays text, true/false stay bools: not read as numbers
        what = {"b": "true/false", "U": "text", "S": "text"}.get(points.dtype.kind, f"dtype {points.dtype}")
        raise InvalidSample("bad_type", f"{where}: points must be pairs of numbers, got {what}")
    points = points.astype(np.float64, copy=False)
    if points.ndim != 2 or points.shape[1:] != (2,):
        if points.size == 0:
            raise InvalidSample("empty_stroke", f"{where}: has no points")
        raise InvalidSample(
            "bad_shape", f"{where}: points have shape {points.shape}, expected (N, 2)"
        )
    if points.shape[0] == 0:
        raise InvalidSample("empty_stroke", f"{where}: has no points")
    if points.shape[0] > MAX_POINTS_PER_STROKE:
        raise InvalidSample(
            "too_many_points",
            f"{where}: has {points.shape[0]} points (at most {MAX_POINTS_PER_STROKE})",
        )
    if not np.isfinite(points).all():
        raise InvalidSample("non_finite", f"{where}: contains NaN or infinity")
    if np.abs(points).max() > COORD_BOUND:
        raise InvalidSample(
            "out_of_bounds",
            f"{where}: coordinate {np.abs(points).max():.3g} is outside [-{COORD_BOUND}, {COORD_BOUND}]"
            " (the app's canvas is [-1, 1])",
        )
    return points


def check_stroke_count(strokes: Strokes, char_id: str, where: str = "sample",
                       one_off_ok: bool = False) -> None:
    """Raise InvalidSample when the stroke count is not one the class allows (the notebook's filter).
    `one_off_ok`: one stroke fewer or one more passes too (the synthesizer joins two strokes and
    lifts the pen midway on purpose, `kana.synth.OFF_TABLE_JOINS` and `OFF_TABLE_SPLITS`)."""
    kana = get_class(char_id)
    n = len(strokes)
    if kana.strokes_off(n) > (1 if one_off_ok else 0):
        raise InvalidSample(
            "wrong_stroke_count",
            f"{where}: {n} strokes, but {char_id} is written with "
            f"{' or '.join(map(str, kana.stroke_counts))}",
        )


def sample_digest(strokes: Strokes) -> str:
    """A content hash of a sample, so that exact duplicates are counted once."""
    h = hashlib.blake2b(digest_size=16)
    for s in strokes:
        h.update(np.ascontiguousarray(s, dtype=np.float64).tobytes())
        h.update(b"|")
    return h.hexdigest()


# --------------------------------------------------------------------------- file formats


@dataclass
class RawSample:
    strokes: Strokes
    char_id: str
    source: str
    path: str  # file name, with "#k" for the k-th sample of a collection file


@dataclass
class Rejection:
    path: str
    source: str
    char_id: str | None
    reason: str
    message: str


@dataclass
class LoadReport:
    samples: list[RawSample] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    not_read: list[str] = field(default_factory=list)  # see `list_raw_files`


def _read_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidSample("too_large", f"{path.name}: {size} bytes (at most {MAX_FILE_BYTES})")
    return path.read_bytes()


def load_pickle_sample(path: str | os.PathLike) -> Strokes:
    """One app sample from a pickle, through the safe unpickler. A file that cannot be read at all
    (missing, a folder, no permission) raises the OSError that names it, as `load_json_sample` does:
    that is not a bad pickle."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        obj = safe_unpickle(data)
    except ForbiddenGlobal as exc:
        raise InvalidSample("refused_pickle", f"{path.name}: {exc}") from None
    except PickledNotNumbers as exc:
        raise InvalidSample("bad_type", f"{path.name}: {exc}") from None
    except Exception as exc:  # truncated or garbage files raise many types
        raise InvalidSample(
            "unreadable", f"{path.name}: not a readable pickle ({type(exc).__name__}: {exc})"
        ) from None
    return parse_strokes(obj, path.name)


def load_json_sample(path: str | os.PathLike) -> Strokes:
    """One sample from JSON: `{"1": [[x, y], ...]}`, a list of strokes, or `{"strokes": [...]}`."""
    path = Path(path)
    return parse_strokes(_json_value(_read_bytes(path), path.name), path.name)


def _json_value(data: bytes, where: str, encoding: str = "utf-8-sig"):
    """JSON from bytes (by default a BOM, as Windows tools write, is fine), or InvalidSample."""
    try:
        return json.loads(data.decode(encoding))
    except ValueError as exc:  # not UTF-8, not JSON, or a number of over 4,300 digits
        raise InvalidSample("unreadable", f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidSample("unreadable", f"{where}: JSON nested too deeply to read") from None


def _id_for_character(character: str, where: str) -> str:
    cid = _CHAR_TO_ID.get(character.strip())
    if cid is None:
        raise InvalidSample("unknown_char_id", f"{where}: character {character!r} is not a class")
    return cid


def read_tegaki_charcol(path: str | os.PathLike, canvas: float = 1000.0) -> Iterator[tuple[str, object]]:
    """Tegaki character collections (XML, optionally gzipped), y down on a `canvas`-wide square.

    Yields (char_id, strokes) or (None, InvalidSample) per character, so one bad character does not
    lose the rest of the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if path.name.endswith(".gz"):
        try:  # at most what a plain file may hold: 16 MiB of zeros would unzip to 16 GB
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
                data = unzipped.read(MAX_FILE_BYTES + 1)
        except Exception as exc:
            raise InvalidSample("unreadable", f"{path.name}: bad gzip ({exc})") from None
        if len(data) > MAX_FILE_BYTES:
            raise InvalidSample("too_large", f"{path.name}: unzips to more than {MAX_FILE_BYTES} bytes")
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, LookupError, ValueError) as exc:  # an encoding expat cannot read, too
        raise InvalidSample("unreadable", f"{path.name}: bad XML ({exc})") from None
    half = canvas / 2.0
    for k, char in enumerate(root.iter("character")):
        where = f"{path.name}#{k}"
        try:
            cid = _id_for_character(char.findtext("utf8") or "", where)
            strokes = [_canvas_points([(p.get("x"), p.get("y")) for p in stroke.iter("point")],
                                      half, f"{where}: stroke {i + 1}")
                       for i, stroke in enumerate(char.iter("stroke"))]
            yield cid, parse_strokes(strokes, where)
        except InvalidSample as exc:
            yield None, exc


def read_tomoe_tdic(path: str | os.PathLike, canvas: float = 320.0) -> Iterator[tuple[str, object]]:
    """Tomoe dictionaries (`.tdic`): a character line, `:n` its stroke count, then n lines
    `:m (x y) (x y) ...` of m points each, on a 320x320 canvas with y down. The counts are checked:
    an entry cut short or a point damaged is a named rejection, not read as another drawing, and
    so are `:` lines before the first character line (as `#0`)."""
    path = Path(path)
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSample("unreadable", f"{path.name}: not UTF-8 ({exc})") from None
    half = canvas / 2.0
    entries: list[tuple[str | None, list[str]]] = []  # a character, its `:` lines (stroke count first)
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith(":"):
            entries.append((line, []))
        else:
            if not entries:  # `:` lines before any character (its line lost): named, not dropped
                entries.append((None, []))
            entries[-1][1].append(line[1:])
    for k, (character, counted_lines) in enumerate(entries):
        where = f"{path.name}#{k}"
        try:
            if character is None:
                raise InvalidSample("bad_structure", f"{where}: ':' lines ({len(counted_lines)}) before "
                                    "the first character line belong to no character")
            cid = _id_for_character(character, where)
            stroke_texts = counted_lines[1:]
            declared = _tdic_count(counted_lines[0], where) if counted_lines else 0
            if declared != len(stroke_texts):
                raise InvalidSample("bad_structure",
                                    f"{where}: declares {declared} strokes, holds {len(stroke_texts)}")
            strokes = [_tdic_points(t, half, f"{where}: stroke {i + 1}") for i, t in enumerate(stroke_texts)]
            yield cid, parse_strokes(strokes, where)
        except InvalidSample as exc:
            yield None, exc


def read_json_lines(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """JSON Lines (`.jsonl`), a sample an object a line, as `../shared`'s real handwriting is shared:
    `{"char_id": "a", "character": "あ", "strokes": [[[x, y], ...], ...]}` in the app's
    coordinates, its class by `char_id` or `character` (both, if given, must agree); other fields,
    such as "source", are ignored (the folder is the source), stroke numbers refused as
    `parse_strokes` refuses them beside "strokes". Read a line at a time, so a file of a
    whole data set may be any size, each line (a sample) at most MAX_FILE_BYTES. Blank lines are
    skipped; a bad line loses only itself, named `#k` with its line number."""
    path = Path(path)
    k = 0
    with open(path, "rb") as fh:
        # b"\n" is JSON Lines' separator (str.splitlines would also split at a U+2028 in a string)
        for number, line in enumerate(iter(lambda: fh.readline(MAX_FILE_BYTES + 2), b""), 1):
            if not line.strip():
                continue
            where = f"{path.name}#{k} (line {number})"
            k += 1
            if len(line.rstrip(b"\r\n")) > MAX_FILE_BYTES:
                while line and not line.endswith(b"\n"):  # the rest of the line, a piece at a time
                    line = fh.readline(1 << 20)
                yield None, InvalidSample("too_large", f"{where}: a line of over {MAX_FILE_BYTES} bytes")
                continue
            try:
                record = _json_value(line, where, "utf-8-sig" if number == 1 else "utf-8")
                if not isinstance(record, Mapping):
                    raise InvalidSample("bad_structure", f'{where}: expected an object with "strokes", '
                                        f"got {type(record).__name__}")
                if "strokes" not in record:
                    raise InvalidSample("bad_structure", f'{where}: has no "strokes" field')
                yield _record_char_id(record, where), parse_strokes(record, where)
            except InvalidSample as exc:
                yield None, exc


def _record_char_id(record: Mapping, where: str) -> str:
    """The class of a labelled record: its `char_id`, or the class of its `character`."""
    char_id, character = record.get("char_id"), record.get("character")
    if char_id is None and character is None:
        raise InvalidSample("unknown_char_id", f'{where}: has neither "char_id" nor "character"')
    if char_id is not None:
        try:
            named = get_class(char_id).character
        except (KeyError, TypeError):  # TypeError: a list or an object, unhashable
            raise InvalidSample("unknown_char_id", f"{where}: char_id {char_id!r} is not a class") from None
        if character is not None and character != named:
            raise InvalidSample("bad_structure", f"{where}: char_id {char_id!r} is "
                                f"{named}, but character is {character!r}")
        return char_id
    if not isinstance(character, str):
        raise InvalidSample("unknown_char_id", f"{where}: character {character!r} is not a class")
    return _id_for_character(character, where)


_TDIC_POINT = re.compile(r"\(\s*([^\s()]+)\s+([^\s()]+)\s*\)")  # "(x y)"; its numbers are read by float()


def _tdic_count(text: str, where: str) -> int:
    """A count on a Tomoe `:` line (of strokes, or of a stroke's points)."""
    try:
        return int(text)
    except ValueError:
        raise InvalidSample("bad_structure", f"{where}: {text.strip()!r:.40} is not a count") from None


def _tdic_points(text: str, half: float, where: str) -> list[tuple[float, float]]:
    """A Tomoe stroke line after its colon, `m (x y) (x y) ...`, as points flipped to y up."""
    count, paren, points_text = text.partition("(")
    points_text = paren + points_text
    left = _TDIC_POINT.sub(" ", points_text).strip()
    if left:
        raise InvalidSample("bad_type", f"{where}: {left!r:.40} is not a point (x y)")
    pairs = _TDIC_POINT.findall(points_text)
    declared = _tdic_count(count, where)
    if declared != len(pairs):
        raise InvalidSample("bad_structure", f"{where}: declares {declared} points, holds {len(pairs)}")
    return _canvas_points(pairs, half, where)


def _canvas_points(pairs, half: float, where: str) -> list[tuple[float, float]]:
    """(x, y) texts on a y-down canvas `2 * half` wide, as the app's coordinates (y up). A point
    that is not two numbers is named by its number in the stroke `where` names."""
    points = []
    for n, (x, y) in enumerate(pairs, 1):
        try:
            points.append((float(x) / half - 1.0, 1.0 - float(y) / half))
        except (TypeError, ValueError):  # TypeError: an XML point without its x or y (None)
            raise InvalidSample("bad_type", f"{where}: point {n} (x {x!r:.20}, y {y!r:.20}) "
                                "is not two numbers") from None
    return points


# Files of many samples each, and their readers: each yields (char_id, strokes) or
# (None, InvalidSample) per sample, so one bad sample does not lose the rest of the file.
COLLECTION_READERS = {".jsonl": read_json_lines, ".charcol": read_tegaki_charcol,
                      ".charcol.gz": read_tegaki_charcol, ".tdic": read_tomoe_tdic}
# Every file read: a sample a file (the app's pickles, and JSON), and the collections above.
RAW_SUFFIXES = (".pickle", ".pkl", ".json", *COLLECTION_READERS)


def list_raw_files(raw_dir: Path) -> tuple[list[Path], list[str]]:
    """In one walk of `raw_dir`, in a stable order: every raw file to read, and the files in no
    format kana reads by their paths under it (reported, so that samples saved as `.npy` or `.txt`
    are not left out unseen). Hidden files and folders are passed over, and never walked into:
    `.DS_Store`, `.git`, and the `._a00001.pickle` metadata twins macOS writes beside each file on
    some disks and in zips. A linked folder is walked like any other (a contributor's folder kept
    on another disk), except one that leads back to a folder above it. A link to nothing and a
    folder that cannot be listed (no permission) are listed to read, so that reading names them. A
    `.json` beside a `.pickle` of the same name is that sample's readable copy (the drawing page
    writes both) and is read once, as the pickle."""
    to_read, not_read = [], []
    if not raw_dir.is_dir():
        return to_read, not_read
    found = []
    above = {os.fspath(raw_dir): {os.path.realpath(raw_dir)}}  # a folder's real path, its parents'
    for folder, dirs, names in os.walk(raw_dir, followlinks=True,  # and a folder it cannot list:
                                       onerror=lambda exc: found.append(Path(exc.filename))):
        chain = above.pop(folder)
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".")]
        for name in list(dirs):
            real = os.path.realpath(os.path.join(folder, name))
            if real in chain:  # a link back up: walking it would never end, and its files are read
                dirs.remove(name)
            else:
                above[os.path.join(folder, name)] = chain | {real}
        found += [Path(folder, name) for name in names if not name.startswith(".")]
    for path in sorted(found):
        is_file = path.is_file()
        if is_file and not path.name.lower().endswith(RAW_SUFFIXES):
            not_read.append(path.relative_to(raw_dir).as_posix())
        elif not (is_file or path.is_dir() or path.is_symlink() and not path.exists()):
            continue  # a pipe or a socket
        elif not (path.suffix.lower() == ".json" and path.with_suffix(".pickle").is_file()):
            to_read.append(path)
    return to_read, not_read


def describe_not_read(raw_dir, not_read: list[str], shown: int = 10) -> str:
    """One line naming the files `list_raw_files` found unreadable (the first `shown` of them)."""
    names = ", ".join(not_read[:shown]) + (f" and {len(not_read) - shown} more" if len(not_read) > shown else "")
    return (f"not read: {len(not_read)} file(s) under {raw_dir} in no format kana reads "
            f"({' '.join(RAW_SUFFIXES)}): {names}")


def source_of(path: Path, raw_dir: Path) -> str:
    """The contributor/device folder a file sits in (its first folder under raw_dir; raw_dir's own
    name for a file directly in it, also where raw_dir is '.' or ends in '..')."""
    rel = path.relative_to(raw_dir)
    return rel.parts[0] if len(rel.parts) > 1 else os.path.basename(os.path.abspath(raw_dir))


def check_raw_folder(param: str, folder: str, hint: str = "") -> None:
    """Refuse a folder of raw files named by parameter `param` that is no folder, or one kana may
    not list, before any work: a mistyped path or a folder copied from another account would
    otherwise cost a whole run (`list_raw_files` finds nothing there)."""
    if not folder:
        return
    if not Path(folder).is_dir():
        raise ValueError(f"{param} {folder!r} is not a folder (looked from {Path.cwd()}){hint}")
    try:
        with os.scandir(folder):
            pass
    except OSError as exc:
        raise ValueError(f"{param} {folder!r} cannot be listed: {exc.strerror or exc}") from exc


def load_raw_dir(raw_dir: str | bytes | os.PathLike, class_ids: set[str] | None = None,
                 any_stroke_count: bool = False) -> LoadReport:
    """Load, parse and validate every raw file under `raw_dir`.

    Nothing here raises for one bad file: each rejected file or sample is named in the report with
    its reason, and everything valid is kept. `class_ids` limits the classes kept (others are
    rejected as `not_in_class_set`). Samples whose stroke count their class's table does not allow
    are rejected (the notebook's filter, for training), unless `any_stroke_count` (for scoring
    real drawings: a served model reads whatever is drawn). Files in no format read here are named
    in `not_read`. A `raw_dir` that is no folder, or cannot be listed, raises ValueError naming it:
    a mistyped path read as an empty folder would go unseen (and '' is refused, not read as '.');
    None, or anything else that is no path, raises TypeError naming it.
    """
    try:
        folder = os.fsdecode(raw_dir)  # bytes too, as os.listdir(b".") names folders
    except TypeError:
        got = "None" if raw_dir is None else f"a value of type {type(raw_dir).__name__}"
        raise TypeError(f"raw_dir must name a folder (a str, bytes or Path), got {got}") from None
    if not folder:
        raise ValueError("raw_dir is empty: name a folder ('.' for the current one)")
    check_raw_folder("raw_dir", folder)
    raw_dir = Path(folder)
    to_read, not_read = list_raw_files(raw_dir)
    report = load_raw_files(raw_dir, to_read, class_ids, any_stroke_count)
    report.not_read = not_read
    return report


def load_raw_files(raw_dir: Path, paths: list[Path], class_ids: set[str] | None = None,
                   any_stroke_count: bool = False) -> LoadReport:
    """`load_raw_dir` for some of the files under `raw_dir` (preprocessing hands each worker a
    share of them, in order)."""
    report = LoadReport()
    for path in paths:
        source = source_of(path, raw_dir)
        name = path.relative_to(raw_dir).as_posix()
        lower = path.name.lower()
        reader = next((r for suffix, r in COLLECTION_READERS.items() if lower.endswith(suffix)), None)
        try:
            if not path.is_file():  # listed to be named here: a folder it could not list, whose
                if path.is_dir():  # samples would be lost unnamed, or a link to nothing
                    with os.scandir(path):  # raises why (no permission), named below
                        pass
                    raise InvalidSample("unreadable", f"{name}: a folder that could not be listed")
                raise InvalidSample("unreadable", f"{name}: a link to {os.readlink(path)}, "
                                                  "which does not exist")  # a disk not mounted
            if reader is not None:
                read = 0
                for k, (cid, result) in enumerate(reader(path)):
                    _accept(report, result, cid, source, f"{name}#{k}", class_ids, any_stroke_count)
                    read += 1
                if not read:
                    raise InvalidSample("empty_sample", f"{name}: holds no characters")
                continue
            cid = char_id_from_filename(path.name)
            if cid is None:
                raise InvalidSample(
                    "unknown_char_id", f"{name}: file name does not start with a known char_id"
                )
            loader = load_json_sample if lower.endswith(".json") else load_pickle_sample
            _accept(report, loader(path), cid, source, name, class_ids, any_stroke_count)
        except (InvalidSample, OSError) as exc:
            if isinstance(exc, OSError):  # missing, a folder, no permission: not read at all
                exc = InvalidSample("unreadable", f"{name}: {exc}")
            # the class a sample file's name gives; not a collection's, a folder's or a dead
            # link's, whose names ("dave") say nothing of classes
            one_sample = reader is None and lower.endswith(RAW_SUFFIXES)
            cid = char_id_from_filename(path.name) if one_sample else None
            report.rejections.append(Rejection(name, source, cid, exc.reason, str(exc)))
    return report


def _accept(report, result, cid, source, name, class_ids, any_stroke_count=False) -> None:
    if isinstance(result, InvalidSample):
        report.rejections.append(Rejection(name, source, cid, result.reason, str(result)))
        return
    if class_ids is not None and cid not in class_ids:
        report.rejections.append(
            Rejection(name, source, cid, "not_in_class_set", f"{name}: {cid} is not in the class set")
        )
        return
    try:
        if not any_stroke_count:
            check_stroke_count(result, cid, name)
    except InvalidSample as exc:
        report.rejections.append(Rejection(name, source, cid, exc.reason, str(exc)))
        return
    report.samples.append(RawSample(result, cid, source, name))


def strokes_to_app_dict(strokes: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """The app's raw format: `{1: ndarray (N, 2), 2: ...}`."""
    return {i + 1: np.asarray(s, dtype=np.float64) for i, s in enumerate(strokes)}


def save_app_pickle(strokes: Sequence[np.ndarray], path: str | os.PathLike) -> None:
    """Write a sample exactly as the app does (a pickled dict of arrays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(strokes_to_app_dict(strokes), fh, protocol=4)

