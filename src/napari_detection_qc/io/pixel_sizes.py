"""Where a pixel size (nm) comes from, besides the image file itself (``io``): a table, in the
format the seed paper's authors keep them (one line per image, ``image name, nm per pixel``, with
or without a header line, comma- or tab-separated), or a napari layer (what our reader or the
detection widget recorded, or the layer's scale in length units). No napari import: a layer is
anything with ``metadata``, ``scale`` and ``units``.

A table entry names an input by its file name (``a.tif``), else by stem (``a``, or ``a.png`` for
``a.tif``); folders in the name are ignored. The table's value replaces whatever the file itself records.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from napari_detection_qc.io import InputError, base_name, nanometres
from napari_detection_qc.validation import one_line, require_regular_file

MAX_TABLE_BYTES = 16 << 20
MAX_PIXEL_SIZE_NM = 1e6
"""A millimetre per pixel: far beyond any micrograph; larger values are typos or hostile."""

# the key under which our reader and widgets keep their records in a layer's metadata
METADATA_KEY = "detection_qc"


def pixel_size_from_layer(layer) -> float | None:
    """The pixel size (nm) of a layer: the one recorded in its metadata (our reader, the
    detection widget), else its last axis' scale when its unit is a length; None when unknown."""
    if layer is None:
        return None
    recorded = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY, {}).get("pixel_size_nm")
    if recorded and float(recorded) > 0:
        return float(recorded)
    units, scale = getattr(layer, "units", None), getattr(layer, "scale", None)
    if not units or scale is None or len(scale) == 0:
        return None
    return nanometres(float(scale[-1]), str(units[-1]))


def read_pixel_size_table(path) -> dict[str, float]:
    """``{image name: nm per pixel}``; InputError naming the file and line for a bad value."""
    path = require_regular_file(path, "pixel-size table")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise InputError(f"{path}: a pixel-size table over {MAX_TABLE_BYTES} bytes is not plausible")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the pixel-size table ({exc})") from exc
    try:
        return _parse_table(path, text)
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable pixel-size table ({one_line(exc, 200)})") from None


def _parse_table(path: Path, text: str) -> dict[str, float]:
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    delimiter = "\t" if "\t" in first else ","
    sizes: dict[str, float] = {}
    first_row = True
    for number, row in enumerate(csv.reader(lines, delimiter=delimiter), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        is_first, first_row = first_row, False
        if len(cells) < 2 or not cells[0]:
            raise InputError(f"{path}, line {number}: expected 'image name, nm per pixel', got {row}")
        try:
            value = float(cells[1])
        except ValueError:
            if is_first:  # a header line
                continue
            raise InputError(f"{path}, line {number}: {cells[1]!r} is not a number") from None
        if not math.isfinite(value) or not 0 < value <= MAX_PIXEL_SIZE_NM:
            raise InputError(
                f"{path}, line {number}: the pixel size must be a positive number of nm, at most {MAX_PIXEL_SIZE_NM:g}, "
                f"got {one_line(cells[1], 40)}"
            )
        name = base_name(cells[0])
        if sizes.get(name, value) != value:
            raise InputError(f"{path}, line {number}: {name} is listed twice with different pixel sizes")
        sizes[name] = value
    if not sizes:
        raise InputError(f"{path}: the pixel-size table holds no entries")
    return sizes


def match_pixel_sizes(table: dict[str, float], sources: Sequence[Path], table_name: str) -> dict[Path, float]:
    """The table's pixel size of every input it names: by file name (the same name in two folders
    names both), else by stem (every input of that stem). An entry that names no input is an
    error: a typo would otherwise silently leave an image without its size."""
    by_name: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for source in sources:
        by_name.setdefault(Path(source).name, []).append(Path(source))
        by_stem.setdefault(Path(source).stem, []).append(Path(source))
    matched: dict[Path, float] = {}
    unmatched = []
    for name, value in table.items():
        named = by_name.get(name) or by_stem.get(Path(name).stem, [])
        if not named:
            unmatched.append(name)
        for source in named:
            if matched.get(source, value) != value:
                raise InputError(
                    f"{table_name}: {source} is given two different pixel sizes (by name and by stem)"
                )
            matched[source] = value
    if unmatched:
        listed = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise InputError(f"{table_name}: no input image named {listed}")
    return matched
