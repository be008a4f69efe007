"""Pixel sizes in nanometres from what microscope files record, with the reason when there is none.

A file may state its pixel size in several places (a TIFF from a Thermo Fisher microscope has its
FEI tag and, after Fiji, ImageJ's calibration too). Every place the file's own parsers expose
(tifffile's ``fei_metadata``, ``sem_metadata``, ``tvips_metadata``, ``ome_metadata``,
``imagej_metadata`` and the resolution tags; rosettasciio's axes) is read; when they agree the size
is known, when two disagree or the only one is in a unit that is not a length, the size is left
unknown and :class:`PixelSize` says why in one line, so a wrong scale never reaches a density.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Lengths in nanometres; spellings as written by ImageJ, DigitalMicrograph, OME and TIFF writers.
NM_PER_UNIT = {
    "pm": 1e-3,
    "picometer": 1e-3,
    "picometre": 1e-3,
    "å": 0.1,
    "angstrom": 0.1,
    "ångström": 0.1,
    "\\u00c5": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "µm": 1e3,
    "μm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "\\u00b5m": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
}
AGREEMENT = 0.01
"""Two recorded pixel sizes within this relative difference are the same one (rounding in text tags)."""
TIFF_RESOLUTION_UNIT_CENTIMETER = 3
OME_DEFAULT_UNIT = "µm"  # the OME schema's default for PhysicalSizeX


def nanometres(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as nanometres; None for unknown or non-length units (e.g. 1/nm)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if unit is None or not np.isfinite(value) or value <= 0:
        return None
    factor = NM_PER_UNIT.get(str(unit).strip().lower())
    return None if factor is None else value * factor


@dataclass(frozen=True)
class Recorded:
    """One place in a file that states the pixel width (and height, where it does)."""

    source: str
    """Where it was read, in words a user recognises: "FEI metadata", "ImageJ calibration"…"""
    width: float
    height: float | None
    unit: str | None


@dataclass(frozen=True)
class PixelSize:
    """A file's pixel size in nm (None when unknown), where it came from, and why it is unknown."""

    nm: float | None
    source: str = ""
    note: str = ""
    """One line saying why the size is unknown (empty when known or when nothing was recorded)."""

    @classmethod
    def unknown(cls, note: str = "") -> PixelSize:
        return cls(None, "", note)


NOT_RECORDED = PixelSize.unknown("the file records no pixel size")


def _describe(value: float, unit: str | None) -> str:
    return f"{value:g} {unit}" if unit else f"{value:g} (no unit)"


def resolve(recorded: Iterable[Recorded]) -> PixelSize:
    """The pixel size all recorded values agree on; unknown (with the reason) for a value in a
    non-length unit, non-square pixels, or two places that disagree."""
    recorded = list(recorded)
    if not recorded:
        return NOT_RECORDED
    known: list[tuple[str, float]] = []
    problems: list[str] = []
    for entry in recorded:
        width = nanometres(entry.width, entry.unit)
        if width is None:
            problems.append(f"{entry.source}: {_describe(entry.width, entry.unit)} is not a length per pixel")
            continue
        height = None if entry.height is None else nanometres(entry.height, entry.unit)
        if height is not None and abs(height - width) > AGREEMENT * width:
            problems.append(f"{entry.source}: pixels are not square ({width:g} x {height:g} nm)")
            continue
        known.append((entry.source, width))
    for source, width in known[1:]:
        if abs(width - known[0][1]) > AGREEMENT * known[0][1]:
            return PixelSize.unknown(
                f"contradictory pixel sizes: {known[0][0]} says {known[0][1]:g} nm, {source} says {width:g} nm"
            )
    if problems and not known:
        return PixelSize.unknown(problems[0])
    if not known:
        return NOT_RECORDED
    return PixelSize(known[0][1], " and ".join(dict.fromkeys(source for source, _ in known)))


# -- TIFF -------------------------------------------------------------------------------------------
def tiff_recorded(tif) -> list[Recorded]:
    """Every pixel size a ``tifffile.TiffFile`` records, through tifffile's own metadata parsers."""
    found: list[Recorded] = []
    for reader in (_fei, _zeiss_sem, _tvips, _ome, _imagej_or_resolution):
        try:
            entry = reader(tif)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            entry = None  # a malformed tag is as good as none; the others still count
        if entry is not None:
            found.append(entry)
    return found


def _fei(tif) -> Recorded | None:
    """Thermo Fisher / FEI SFEG and Helios tags: ``[Scan] PixelWidth`` in metres."""
    metadata = tif.fei_metadata
    if not metadata:
        return None
    for section in ("Scan", "EScan", "Image"):
        values = metadata.get(section) or {}
        if "PixelWidth" in values:
            return Recorded(
                "FEI metadata", float(values["PixelWidth"]), _float_or_none(values.get("PixelHeight")), "m"
            )
    return None


def _zeiss_sem(tif) -> Recorded | None:
    """Zeiss SEM tag: ``AP_IMAGE_PIXEL_SIZE`` (or ``AP_PIXEL_SIZE``) as (name, value, unit)."""
    metadata = tif.sem_metadata
    if not metadata:
        return None
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = metadata.get(key)
        if entry and len(entry) >= 3:
            return Recorded("Zeiss SEM metadata", float(entry[1]), None, str(entry[2]))
    return None


def _tvips(tif) -> Recorded | None:
    """TVIPS camera tag: ``PixelSizeX/Y`` in nm."""
    metadata = tif.tvips_metadata
    if not metadata or "PixelSizeX" not in metadata:
        return None
    return Recorded(
        "TVIPS metadata", float(metadata["PixelSizeX"]), _float_or_none(metadata.get("PixelSizeY")), "nm"
    )


def _ome(tif) -> Recorded | None:
    """OME-XML ``Pixels`` ``PhysicalSizeX/Y`` with their units (micrometres when unstated)."""
    if not tif.is_ome:
        return None
    import tifffile

    document = tifffile.xml2dict(tif.ome_metadata)
    image = document["OME"]["Image"]
    pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    if "PhysicalSizeX" not in pixels:
        return None
    unit = pixels.get("PhysicalSizeXUnit", OME_DEFAULT_UNIT)
    width_nm = nanometres(pixels["PhysicalSizeX"], unit)
    if width_nm is None:  # not a length: ``resolve`` says so
        return Recorded("OME metadata", float(pixels["PhysicalSizeX"]), None, str(unit))
    height_nm = nanometres(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit", OME_DEFAULT_UNIT))
    return Recorded("OME metadata", width_nm, height_nm, "nm")


def _imagej_or_resolution(tif) -> Recorded | None:
    """XResolution/YResolution (pixels per unit) with ImageJ's ``unit``, else ResolutionUnit
    centimetre (inch is skipped: image programs write a nominal 72 dpi; "pixel" is ImageJ's
    uncalibrated default)."""
    page = tif.pages[0]
    if "XResolution" not in page.tags:
        return None
    width, height = (_per_pixel(page.tags[name].value) for name in ("XResolution", "YResolution"))
    if width is None:
        return None
    imagej_unit = (tif.imagej_metadata or {}).get("unit")
    if imagej_unit:
        if str(imagej_unit).strip().lower() in ("pixel", "pixels", ""):
            return None
        return Recorded("ImageJ calibration", width, height, str(imagej_unit))
    if int(page.resolutionunit) == TIFF_RESOLUTION_UNIT_CENTIMETER:
        return Recorded("TIFF resolution", width, height, "cm")
    return None


def _per_pixel(rational) -> float | None:
    """Units per pixel from a TIFF resolution rational (pixels per unit)."""
    try:
        numerator, denominator = rational
    except (TypeError, ValueError):
        return None
    if numerator <= 0 or denominator <= 0:
        return None
    return denominator / numerator


def _float_or_none(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# -- rosettasciio ------------------------------------------------------------------------------------
def axes_recorded(axes: Sequence[dict], source: str) -> list[Recorded]:
    """The pixel size rosettasciio's axes give an image: the last two (y, x) axes' scales and units.
    A scale of 1 with no unit is rosettasciio's "uncalibrated" and records nothing."""
    if len(axes) < 2:
        return []
    y_axis, x_axis = sorted(axes, key=lambda axis: axis.get("index_in_array", 0))[-2:]
    width, unit = x_axis.get("scale"), x_axis.get("units")
    if width is None or (not unit and float(width) == 1.0) or float(width) == 0.0:
        return []
    if y_axis.get("units") not in (unit, None):  # y in another unit: compare as lengths
        height_nm, width_nm = nanometres(y_axis.get("scale"), y_axis.get("units")), nanometres(width, unit)
        if height_nm is not None and width_nm is not None:
            return [Recorded(source, width_nm, height_nm, "nm")]
    return [Recorded(source, float(width), _float_or_none(y_axis.get("scale")), unit)]
