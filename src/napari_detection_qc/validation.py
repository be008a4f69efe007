"""Typed, range-checked reading of the plain data inside the files the product reads.

Every file kind (detector header, detectron2 config, forest metadata, store meta.json and
detections.csv, COCO JSON, pixel-size tables) is plain data that a careless or hostile writer
controls. Its values are checked here against an explicit schema (type, range, length) before any
of them sizes an allocation, bounds a loop or reaches ``int()``/``float()``, and anything outside
is an :class:`InvalidFileError`: one line naming the file and the field. :func:`parsing` turns the
errors plain Python raises on malformed data (``TypeError`` from ``int(None)``, ``OverflowError``
from ``int(1e400)``, ``RecursionError`` from deep nesting, ...) into the same one line, so a
loader that misses a case still refuses the file instead of crashing.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_detection_qc.io import InputError, list_inputs

MALFORMED_DATA_ERRORS = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    ZeroDivisionError,
    UnicodeError,
)
"""What Python raises while walking data of the wrong shape; :func:`parsing` names the file."""
MAX_JSON_BYTES = 1 << 30
"""Larger JSON files are refused before reading (COCO files of whole data sets stay far below)."""
MAX_NESTING = 64
"""Deeper nesting than any product file has; JSON deeper than this is refused, not recursed into."""


class InvalidFileError(InputError):
    """A file whose content is outside the types and ranges its kind allows (one line). An
    :class:`InputError`, so ``--keep-going`` skips it like any other unreadable input."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on a single line, cut to ``limit`` characters (a refusal must stay one line)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@contextmanager
def parsing(path, what: str, passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Errors raised while interpreting ``path`` become one :class:`InvalidFileError` naming it.

    Errors that already name their file (``InvalidFileError`` and ``passthrough``) go through as
    they are; so do out-of-memory and disk errors, which are the machine's, not the file's.
    """
    try:
        yield
    except (InvalidFileError, *passthrough):
        raise
    except MemoryError:
        raise
    except RecursionError:
        raise InvalidFileError(f"{path}: not a valid {what} (nested too deeply)") from None
    except KeyError as error:
        raise InvalidFileError(f"{path}: not a valid {what} (missing field {one_line(error, 80)})") from None
    except MALFORMED_DATA_ERRORS as error:
        raise InvalidFileError(f"{path}: not a valid {what} ({one_line(error, 200)})") from None


def require_regular_file(path, what: str) -> Path:
    """``path`` if it is a regular file; a FIFO, device or socket is refused at once (reading one
    would block forever or never end), as is a missing file."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise InvalidFileError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        raise InvalidFileError(f"{path}: the {what} is {kind}")
    return path


def list_regular_inputs(path) -> list[Path]:
    """``io.list_inputs`` with non-regular files refused at once: a FIFO named like an image would
    block the read forever. Broken links stay listed, so that reading them reports them."""
    files = list_inputs(path)
    for file in files:
        if file.exists() and not file.is_file() and not file.is_dir():  # a listed folder is a zarr array
            require_regular_file(file, "input")
    return files


def nesting_depth_exceeds(text: str, limit: int = MAX_NESTING) -> bool:
    """Whether JSON text opens more than ``limit`` brackets at once (outside strings), checked
    without recursing, so that a 100,000-deep file is refused instead of blowing the stack."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file as plain data: regular file, bounded size and nesting, no NaN/Infinity
    literals, duplicate keys refused (the later one would silently win)."""
    path = require_regular_file(path, what)
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidFileError(f"{path}: a {what} of {size} bytes is over the {max_bytes} byte limit")
    with parsing(path, what):
        text = path.read_bytes().decode("utf-8-sig")
        if nesting_depth_exceeds(text):
            raise InvalidFileError(f"{path}: not a valid {what} (nested deeper than {MAX_NESTING} levels)")
        try:
            return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as error:
            raise InvalidFileError(f"{path}: not a valid {what} (JSON: {one_line(error, 120)})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"key {duplicate!r} appears twice")
    return dict(pairs)


# -- schemas ---------------------------------------------------------------------------------------
class Spec:
    """A rule for one value; :meth:`check` returns it (normalised) or raises ``SchemaError``."""

    def check(self, value: Any, where: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class SchemaError(ValueError):
    """One value outside its spec; ``where`` is its dotted field name."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"field {where or '(top level)'}: {problem}")
        self.where = where


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return one_line(repr(value), 60)


def is_number(value: Any) -> bool:
    """int or float but not bool (``True`` is an int in Python, never a size in a file)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Int(Spec):
    """An integer in [low, high]; integral floats (``3.0``) are accepted as the integer they are."""

    low: int
    high: int

    def check(self, value, where):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(where, f"expected an integer, got {_describe(value)}")
        if not self.low <= value <= self.high:
            raise SchemaError(where, f"{_describe(value)} is outside [{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class Real(Spec):
    """A finite number in [low, high] (``open_low``: strictly above low)."""

    low: float
    high: float
    open_low: bool = False

    def check(self, value, where):
        if not is_number(value):
            raise SchemaError(where, f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise SchemaError(where, f"{_describe(value)} is too large") from None
        if not math.isfinite(number):
            raise SchemaError(where, f"expected a finite number, got {_describe(value)}")
        above = number > self.low if self.open_low else number >= self.low
        if not (above and number <= self.high):
            bracket = "(" if self.open_low else "["
            raise SchemaError(where, f"{_describe(value)} is outside {bracket}{self.low:g}, {self.high:g}]")
        return number


@dataclass(frozen=True)
class Text(Spec):
    """A string of at most ``max_length`` characters, one of ``choices`` when given."""

    choices: tuple[str, ...] = ()
    max_length: int = 4096
    noun: str = "value"
    """What a choice names, for the refusal (``unknown backbone 'vit_h'; known: ...``)."""

    def check(self, value, where):
        if not isinstance(value, str):
            raise SchemaError(where, f"expected text, got {_describe(value)}")
        if len(value) > self.max_length:
            raise SchemaError(where, f"text of {len(value)} characters (at most {self.max_length})")
        if self.choices and value not in self.choices:
            raise SchemaError(
                where, f"unknown {self.noun} {_describe(value)}; known: {', '.join(self.choices)}"
            )
        return value


@dataclass(frozen=True)
class Flag(Spec):
    """A boolean."""

    def check(self, value, where):
        if not isinstance(value, bool):
            raise SchemaError(where, f"expected true or false, got {_describe(value)}")
        return value


@dataclass(frozen=True)
class Maybe(Spec):
    """None or a value of ``spec``."""

    spec: Spec

    def check(self, value, where):
        return None if value is None else self.spec.check(value, where)


@dataclass(frozen=True)
class Seq(Spec):
    """A list (or tuple) of ``min_length`` to ``max_length`` items, each of ``item``."""

    item: Spec
    min_length: int = 0
    max_length: int = 1 << 20

    def check(self, value, where):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(where, f"expected a list, got {_describe(value)}")
        if not self.min_length <= len(value) <= self.max_length:
            raise SchemaError(
                where, f"a list of {len(value)} items (expected {self.min_length} to {self.max_length})"
            )
        return [self.item.check(item, f"{where}[{index}]") for index, item in enumerate(value)]


@dataclass(frozen=True)
class Record(Spec):
    """A mapping with ``fields`` (all required unless named in ``optional``); other keys are kept
    unchecked (headers carry free-form notes), unless ``closed``."""

    fields: Mapping[str, Spec]
    optional: frozenset[str] = frozenset()
    closed: bool = False

    def check(self, value, where):
        if not isinstance(value, Mapping):
            raise SchemaError(where, f"expected a mapping, got {_describe(value)}")
        checked = dict(value)
        for key, spec in self.fields.items():
            name = f"{where}.{key}" if where else key
            if key not in value:
                if key in self.optional:
                    continue
                raise SchemaError(name, "missing")
            checked[key] = spec.check(value[key], name)
        if self.closed:
            extra = sorted(str(k) for k in value if k not in self.fields)
            if extra:
                raise SchemaError(where, f"unknown field(s) {', '.join(extra[:5])}")
        return checked


@dataclass(frozen=True)
class Anything(Spec):
    """Any value (free-form notes); still bounded in nesting by the reader."""

    def check(self, value, where):
        return value


DETECTOR_DESCRIPTION = Record(
    {
        "detector": Text(max_length=1000),
        "engine": Text(max_length=100),
        "weights_sha256": Maybe(Text(max_length=64)),
        "score_threshold": Real(0.0, 1.0),
        "max_detections": Int(1, 10**6),
        "second_look": Flag(),
        "weights_path": Maybe(Text()),
    },
    optional=frozenset(
        {
            "detector",
            "engine",
            "weights_sha256",
            "score_threshold",
            "max_detections",
            "second_look",
            "weights_path",
        }
    ),
)
"""What a store's meta.json (and a forest file) records about the detector that made the detections."""


def validate(value: Any, spec: Spec, path, what: str, error: type[ValueError] = InvalidFileError) -> Any:
    """``value`` checked against ``spec``; one ``error`` (an :class:`InvalidFileError` unless the
    file kind has its own) naming ``path`` and the field."""
    try:
        return spec.check(value, "")
    except SchemaError as problem:
        raise error(f"{path}: invalid {what}: {one_line(problem, 240)}") from None
    except RecursionError:
        raise error(f"{path}: invalid {what}: nested too deeply") from None
