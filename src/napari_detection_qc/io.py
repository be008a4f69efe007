"""Reading micrographs and stacks from disk for batch runs: TIFF, PNG/JPEG, NPY and Gatan DM3/DM4.

A file is one input: a 2-D image is one frame, a stack is ``(T, Y, X)`` (RGB(A) frames keep a
trailing channel axis; the detectors convert them). A TIFF whose samples are stored as separate
planes is read as a stack of those planes: such a file is byte for byte what tifffile writes by
default for a 3- or 4-frame grayscale stack, and reading it as frames loses nothing either way.
Frames larger than ``MAX_FRAME_PIXELS`` are refused from the header, before any pixel is read. Batch workers read single frames
(:func:`read_frame`) straight from the file, so a long series is never shipped whole between
processes. The pixel size is returned in nanometres when the file records a physical one.
Every failure to read is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DM_SUFFIXES = (".dm3", ".dm4")
SUPPORTED_SUFFIXES = TIFF_SUFFIXES + PLAIN_IMAGE_SUFFIXES + (".npy",) + DM_SUFFIXES

# Lengths in nanometres; spellings as written by ImageJ, DigitalMicrograph and TIFF writers.
NM_PER_UNIT = {
    "pm": 1e-3,
    "picometer": 1e-3,
    "å": 0.1,
    "angstrom": 0.1,
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
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
}
TIFF_RESOLUTION_UNIT_CENTIMETER = 3
MAX_FRAME_PIXELS = 2**28  # 16384 x 16384; a header claiming more is refused before allocating


class InputError(ValueError):
    """A file that cannot be read as an image or stack; the message names the file."""


@dataclass(frozen=True)
class InputInfo:
    """What a batch run needs to plan one file without loading its pixels."""

    path: Path
    n_frames: int
    frame_shape: tuple[int, int]
    pixel_size_nm: float | None
    is_2d: bool


def nanometres(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as nanometres; None for unknown or non-length units (e.g. 1/nm)."""
    if unit is None or not np.isfinite(value) or value <= 0:
        return None
    factor = NM_PER_UNIT.get(str(unit).strip().lower())
    return None if factor is None else float(value) * factor


def base_name(name: str) -> str:
    """The file name in a name that tables and annotation files may write with a folder from
    either system (``images/a.png``, ``C:\\data\\a.png``)."""
    return PureWindowsPath(PurePosixPath(name).name).name


def list_inputs(path) -> list[Path]:
    """The image files a path stands for: the file itself, or a folder's supported files, sorted."""
    path = Path(path)
    if path.is_dir():  # broken symbolic links are listed, so that reading them reports them
        files = sorted(
            p
            for p in path.iterdir()
            if (p.is_file() or (p.is_symlink() and not p.exists())) and p.suffix.lower() in SUPPORTED_SUFFIXES
        )
        if not files:
            raise InputError(f"{path}: no supported images in this folder ({', '.join(SUPPORTED_SUFFIXES)})")
        return files
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    return [path]


def stack_layout(shape: tuple[int, ...], path: Path) -> tuple[int, tuple[int, int], bool]:
    """(frame count, (Y, X), single 2-D image?) of an image or stack of this shape."""
    shape = tuple(int(s) for s in shape)
    rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    spatial = shape[:-1] if rgb else shape
    if len(spatial) not in (2, 3) or 0 in shape:
        raise InputError(
            f"{path}: expected an image (Y, X), RGB (Y, X, 3|4) or a stack (T, Y, X), got shape {shape}"
        )
    if math.prod(spatial[-2:]) > MAX_FRAME_PIXELS:
        raise InputError(
            f"{path}: frames of {spatial[-2]} x {spatial[-1]} pixels are too large "
            f"(at most {MAX_FRAME_PIXELS} pixels per frame)"
        )
    if len(spatial) == 2:
        return 1, spatial, True
    return spatial[0], spatial[1:], False


def as_frame_stack(array, path: Path):
    """(T, Y, X[, C]) view of an image or stack."""
    _, _, is_2d = stack_layout(array.shape, path)
    return array[None] if is_2d else array


def describe(path) -> InputInfo:
    """Frame count, frame shape and pixel size of a file, reading as few pixels as the format allows."""
    path = Path(path)
    shape, pixel_size = _read_with(path, lambda reader: reader.shape_and_pixel_size(path), "this file")
    n_frames, frame_shape, is_2d = stack_layout(shape, path)
    return InputInfo(path, n_frames, frame_shape, pixel_size, is_2d)


def read_frames(path) -> tuple[np.ndarray, float | None]:
    """The whole image or stack as an array ((Y, X), (T, Y, X), RGB allowed) and its pixel size in nm."""
    path = Path(path)
    array, pixel_size = _read_with(path, lambda reader: reader.read(path), "this file")
    stack_layout(array.shape, path)  # a clear error for shapes no detector takes
    return array, pixel_size


def read_frame(path, index: int) -> np.ndarray:
    """Frame ``index`` of a file, reading only that frame where the format allows it."""
    path = Path(path)
    return _read_with(path, lambda reader: reader.frame(path, index), f"frame {index}")


def _read_with(path: Path, action, what: str):
    """``action(reader)`` with the file's reader; any library error becomes an InputError that
    names the file (every library raises its own types on corrupt files)."""
    reader = _reader_for(path)
    if not path.exists():
        broken = f"broken symbolic link to {os.readlink(path)}" if path.is_symlink() else "no such file"
        raise InputError(f"{path}: {broken}")
    try:
        return action(reader)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read {what} ({exc})") from exc


def _reader_for(path: Path):
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return TiffReader
    if suffix in PLAIN_IMAGE_SUFFIXES:
        return PlainImageReader
    if suffix == ".npy":
        return NpyReader
    if suffix in DM_SUFFIXES:
        return DigitalMicrographReader
    raise InputError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def _whole_file_frame(reader, path: Path, index: int) -> np.ndarray:
    array, _ = reader.read(path)
    return np.asarray(as_frame_stack(array, path)[index])


class TiffReader:
    """tifffile; one page per frame is read on its own. Pixel size from XResolution with ImageJ's
    ``unit`` or ResolutionUnit centimetre (inch is skipped: image programs write a nominal 72 dpi)."""

    @staticmethod
    def _series_shape(series) -> tuple[int, ...]:
        """The series' shape with all frame axes (e.g. time, channel, and samples stored as
        separate planes) merged into one, napari-style; only contiguous samples (YXS) stay RGB."""
        shape = tuple(series.shape)
        leading = len(shape) - (3 if series.axes.endswith("S") else 2)
        if leading > 1:
            shape = (math.prod(shape[:leading]),) + shape[leading:]
        return shape

    @staticmethod
    def _pixel_size(tif) -> float | None:
        page = tif.pages[0]
        if "XResolution" not in page.tags:
            return None
        numerator, denominator = page.tags["XResolution"].value
        if numerator <= 0 or denominator <= 0:
            return None
        pixel_width = denominator / numerator  # units per pixel
        imagej_unit = (tif.imagej_metadata or {}).get("unit")
        if imagej_unit:
            return nanometres(pixel_width, imagej_unit)
        if int(page.resolutionunit) == TIFF_RESOLUTION_UNIT_CENTIMETER:
            return nanometres(pixel_width, "cm")
        return None

    @classmethod
    def shape_and_pixel_size(cls, path: Path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = cls._series_shape(tif.series[0])
            return shape, cls._pixel_size(tif)

    @classmethod
    def read(cls, path: Path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = cls._series_shape(series)
            stack_layout(shape, path)  # refuse huge frames before allocating them
            return series.asarray().reshape(shape), cls._pixel_size(tif)

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = cls._series_shape(series)
            n_frames, _, _ = stack_layout(shape, path)
            if n_frames > 1 and len(series.pages) == n_frames:  # one page per frame: read that page
                return tif.asarray(key=index, series=0)
            mappable = series.dataoffset is not None
        if mappable:  # uncompressed frames back to back, as in ImageJ files over 4 GB: map, read one
            return np.array(as_frame_stack(tifffile.memmap(path, mode="r").reshape(shape), path)[index])
        return _whole_file_frame(cls, path, index)


class PlainImageReader:
    """PNG/JPEG through Pillow (not imageio, whose plugin search writes ~/.imageio on a bad file):
    always one frame, grayscale or RGB(A), no pixel size. The shape comes from the header alone."""

    # Pillow modes -> the mode the pixels are read in (palette and two-band images to RGB(A) / gray)
    MODES = {"1": "L", "P": "RGBA", "PA": "RGBA", "LA": "L", "La": "L", "CMYK": "RGB", "YCbCr": "RGB",
             "HSV": "RGB", "LAB": "RGB", "RGBa": "RGBA", "RGBX": "RGB"}
    CHANNELS = {"RGB": 3, "RGBA": 4}

    @classmethod
    def _mode(cls, image) -> str:
        if image.mode == "P" and "transparency" not in image.info:
            return "RGB"
        return cls.MODES.get(image.mode, image.mode)

    @classmethod
    def shape_and_pixel_size(cls, path: Path):
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
            channels = cls.CHANNELS.get(cls._mode(image))
        return ((height, width) if channels is None else (height, width, channels)), None

    @classmethod
    def read(cls, path: Path):
        from PIL import Image

        with Image.open(path) as image:
            stack_layout(cls.shape_and_pixel_size(path)[0], path)  # refuse huge frames before decoding
            mode = cls._mode(image)
            return np.asarray(image if mode == image.mode else image.convert(mode)), None

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        return _whole_file_frame(cls, path, index)


class NpyReader:
    """NumPy ``.npy`` without pickles; frames are read through a memory map."""

    @staticmethod
    def _open(path: Path) -> np.ndarray:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise InputError(f"{path}: pixels must be integers or floats, got {array.dtype}")
        return array

    @classmethod
    def shape_and_pixel_size(cls, path: Path):
        return cls._open(path).shape, None

    @classmethod
    def read(cls, path: Path):
        return np.array(cls._open(path)), None

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        return np.array(as_frame_stack(cls._open(path), path)[index])


class DigitalMicrographReader:
    """Gatan DM3/DM4 through rosettasciio (an optional dependency), lazily so frames load one by one.
    Pixel size from the last (x) axis' scale and units."""

    @staticmethod
    def _image_signal(path: Path) -> dict:
        try:
            from rsciio.digitalmicrograph import file_reader
        except ImportError as exc:
            raise InputError(
                f'{path}: reading Gatan DM3/DM4 files needs rosettasciio: pip install "napari-detection-qc[dm]"'
            ) from exc
        signals = [s for s in file_reader(str(path), lazy=True) if np.ndim(s["data"]) >= 2]
        if not signals:
            raise InputError(f"{path}: the file holds no image")
        return signals[0]

    @classmethod
    def _pixel_size(cls, signal: dict) -> float | None:
        axes = signal.get("axes") or []
        if not axes:
            return None
        x_axis = axes[-1]
        return nanometres(float(x_axis.get("scale", float("nan"))), x_axis.get("units"))

    @classmethod
    def shape_and_pixel_size(cls, path: Path):
        signal = cls._image_signal(path)
        return tuple(signal["data"].shape), cls._pixel_size(signal)

    @classmethod
    def read(cls, path: Path):
        signal = cls._image_signal(path)
        return np.asarray(signal["data"]), cls._pixel_size(signal)

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        signal = cls._image_signal(path)
        return np.asarray(as_frame_stack(signal["data"], path)[index])
