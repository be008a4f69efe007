"""Reading micrographs and stacks from disk, for the napari reader and batch runs alike: TIFF (with
ImageJ, FEI/Thermo, Zeiss SEM, TVIPS and OME pixel sizes), PNG/JPEG, NPY, zarr/OME-Zarr, and through
rosettasciio Gatan DM3/DM4, MRC, Velox/NCEM EMD, TIA SER/EMI and TVIPS.

A file is one input: a 2-D image is one frame, a stack is ``(T, Y, X)`` (RGB(A) frames keep a
trailing channel axis; the detectors convert them). A TIFF whose samples are stored as separate
planes is read as a stack of those planes: such a file is byte for byte what tifffile writes by
default for a 3- or 4-frame grayscale stack, and reading it as frames loses nothing either way.
Frames larger than ``MAX_FRAME_PIXELS`` are refused from the header, before any pixel is read.
:func:`open_micrograph` opens a file without reading its pixels: a stack comes back as a dask array
whose chunks are frames, so a stack larger than memory opens in seconds and whoever needs a frame
computes only that one. Batch workers read single frames (:func:`read_frame`) straight from the
file, so a long series is never shipped whole between processes. The pixel size is a
:class:`PixelSize` in nanometres when the file records a physical one, else the reason it is not
known. Every failure to read is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from napari_detection_qc.io.calibration import (
    NOT_RECORDED,
    PixelSize,
    axes_recorded,
    nanometres,
    resolve,
    tiff_recorded,
)

TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DM_SUFFIXES = (".dm3", ".dm4")
MRC_SUFFIXES = (".mrc", ".mrcs", ".rec", ".st", ".ali")
ROSETTASCIIO_PLUGINS = {
    **dict.fromkeys(DM_SUFFIXES, "digitalmicrograph"),
    **dict.fromkeys(MRC_SUFFIXES, "mrc"),
    ".emd": "emd",  # Thermo Fisher Velox and NCEM EMD
    ".ser": "tia",  # FEI/Thermo TIA series (the .emi beside it holds the calibration)
    ".emi": "tia",
    ".tvips": "tvips",
}
ROSETTASCIIO_SOURCES = {
    "digitalmicrograph": "DigitalMicrograph metadata",
    "mrc": "MRC header",
    "emd": "EMD metadata",
    "tia": "TIA metadata",
    "tvips": "TVIPS header",
}
ZARR_SUFFIXES = (".zarr",)
FOLDER_SKIPPED_SUFFIXES = (".emi",)
"""Not listed from a folder: a TIA ``.emi`` describes the ``.ser`` files beside it, which are listed."""
SUPPORTED_SUFFIXES = (
    TIFF_SUFFIXES + PLAIN_IMAGE_SUFFIXES + (".npy",) + tuple(ROSETTASCIIO_PLUGINS) + ZARR_SUFFIXES
)
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
    pixel_size_note: str = ""
    """Why the pixel size is unknown (one line), empty when it is known."""


def base_name(name: str) -> str:
    """The file name in a name that tables and annotation files may write with a folder from
    either system (``images/a.png``, ``C:\\data\\a.png``)."""
    return PureWindowsPath(PurePosixPath(name).name).name


def list_inputs(path) -> list[Path]:
    """The image files a path stands for: the file itself, or a folder's supported files, sorted."""
    path = Path(path)
    if path.is_dir() and path.suffix.lower() in ZARR_SUFFIXES:  # a zarr folder is one input
        return [path]
    if path.is_dir():  # broken symbolic links are listed, so that reading them reports them
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() in SUPPORTED_SUFFIXES
            and p.suffix.lower() not in FOLDER_SKIPPED_SUFFIXES
            and (
                p.is_file()
                or (p.is_symlink() and not p.exists())
                or (p.is_dir() and p.suffix.lower() in ZARR_SUFFIXES)
            )
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


@dataclass(frozen=True)
class Micrograph:
    """An opened image or stack: its pixels (numpy for one frame, a dask array with one chunk per
    frame for a stack, nothing read yet) and its pixel size."""

    path: Path
    data: Any
    pixel_size: PixelSize
    n_frames: int
    frame_shape: tuple[int, int]
    is_2d: bool

    @property
    def rgb(self) -> bool:
        return self.data.ndim == (3 if self.is_2d else 4)


def open_micrograph(path) -> Micrograph:
    """A file opened lazily (see :class:`Micrograph`), its shape checked before any pixel is read."""
    path = Path(path)
    data, pixel_size = _read_with(path, lambda reader: reader.open(path), "this file")
    n_frames, frame_shape, is_2d = stack_layout(data.shape, path)
    return Micrograph(path, data, pixel_size, n_frames, tuple(frame_shape), is_2d)


def describe(path) -> InputInfo:
    """Frame count, frame shape and pixel size of a file, reading as few pixels as the format allows."""
    opened = open_micrograph(path)
    return InputInfo(
        opened.path,
        opened.n_frames,
        opened.frame_shape,
        opened.pixel_size.nm,
        opened.is_2d,
        opened.pixel_size.note,
    )


def read_frames(path) -> tuple[np.ndarray, float | None]:
    """The whole image or stack as an array ((Y, X), (T, Y, X), RGB allowed) and its pixel size in nm."""
    opened = open_micrograph(path)
    return _read_with(opened.path, lambda _: np.asarray(opened.data), "this file"), opened.pixel_size.nm


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
    if suffix in ZARR_SUFFIXES:
        return ZarrReader
    if suffix in ROSETTASCIIO_PLUGINS:
        return RosettaReader
    raise InputError(f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def frame_chunks(array, path: Path):
    """A dask array (as rosettasciio and zarr give) rechunked to one chunk per frame; a single
    image, or pixels a reader already holds in memory, stay as they are."""
    _, _, is_2d = stack_layout(array.shape, path)
    return array if is_2d or not hasattr(array, "rechunk") else array.rechunk((1, *array.shape[1:]))


def lazy_frames(shape: tuple[int, ...], dtype, read_one: Callable[[int], np.ndarray]):
    """A (T, ...) dask array whose frame ``t`` is ``read_one(t)``, read only when computed; the
    graph is one blockwise task, so building it costs the same for ten frames or ten thousand."""
    import dask.array as da

    def block(block_info=None):
        t = block_info[None]["chunk-location"][0]
        return np.asarray(read_one(t), dtype=dtype).reshape((1, *shape[1:]))

    chunks = ((1,) * shape[0], *((size,) for size in shape[1:]))
    return da.map_blocks(block, chunks=chunks, dtype=dtype, meta=np.empty((0,) * len(shape), dtype))


def _mapped_frame(path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...], index: int) -> np.ndarray:
    """Frame ``index`` of frames stored uncompressed back to back from ``offset``: mapped, copied
    and unmapped, so no file handle outlives the read (Windows locks files that are open)."""
    frame_shape = shape[1:]
    mapped = np.memmap(
        path,
        dtype=dtype,
        mode="r",
        offset=offset + index * math.prod(frame_shape) * dtype.itemsize,
        shape=frame_shape,
    )
    frame = np.array(mapped, dtype=dtype.newbyteorder("="))
    del mapped
    return frame


def _whole_file_frame(reader, path: Path, index: int) -> np.ndarray:
    data, _ = reader.open(path)
    return np.asarray(as_frame_stack(data, path)[index])


class TiffReader:
    """tifffile; one page per frame is read on its own, uncompressed frames stored back to back are
    memory-mapped. Pixel size from every metadata tifffile parses (``calibration.tiff_recorded``)."""

    @staticmethod
    def _series_shape(series) -> tuple[int, ...]:
        """The series' shape with all frame axes (e.g. time, channel, and samples stored as
        separate planes) merged into one, napari-style; only contiguous samples (YXS) stay RGB."""
        shape = tuple(series.shape)
        leading = len(shape) - (3 if series.axes.endswith("S") else 2)
        if leading > 1:
            shape = (math.prod(shape[:leading]),) + shape[leading:]
        return shape

    @classmethod
    def open(cls, path: Path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = cls._series_shape(series)
            n_frames, _, is_2d = stack_layout(shape, path)  # refuse huge frames before allocating them
            pixel_size = resolve(tiff_recorded(tif))
            if is_2d:
                return series.asarray().reshape(shape), pixel_size
            dtype, mappable = series.dtype, series.dataoffset is not None
            offset, stored = series.dataoffset, np.dtype(series.dtype).newbyteorder(tif.byteorder)
        if mappable:  # uncompressed frames back to back (ImageJ hyperstacks, tifffile stacks): map one
            return lazy_frames(
                shape, dtype, lambda t: _mapped_frame(path, offset, stored, shape, t)
            ), pixel_size
        return lazy_frames(shape, dtype, lambda t: cls.frame(path, t)), pixel_size

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = cls._series_shape(series)
            n_frames, _, _ = stack_layout(shape, path)
            if not 0 <= index < n_frames:
                raise InputError(f"{path}: no frame {index} (the file has {n_frames})")
            if n_frames > 1 and len(series.pages) == n_frames:  # one page per frame: read that page
                return tif.asarray(key=index, series=0)
            mappable = series.dataoffset is not None
        if mappable:
            return np.array(as_frame_stack(tifffile.memmap(path, mode="r").reshape(shape), path)[index])
        with tifffile.TiffFile(path) as tif:
            return np.asarray(as_frame_stack(tif.series[0].asarray().reshape(shape), path)[index])


class PlainImageReader:
    """PNG/JPEG through Pillow (not imageio, whose plugin search writes ~/.imageio on a bad file):
    always one frame, grayscale or RGB(A), no pixel size. The shape is checked from the header."""

    # Pillow modes -> the mode the pixels are read in (palette and two-band images to RGB(A) / gray)
    MODES = {
        "1": "L",
        "P": "RGBA",
        "PA": "RGBA",
        "LA": "L",
        "La": "L",
        "CMYK": "RGB",
        "YCbCr": "RGB",
        "HSV": "RGB",
        "LAB": "RGB",
        "RGBa": "RGBA",
        "RGBX": "RGB",
    }
    CHANNELS = {"RGB": 3, "RGBA": 4}

    @classmethod
    def _mode(cls, image) -> str:
        if image.mode == "P" and "transparency" not in image.info:
            return "RGB"
        return cls.MODES.get(image.mode, image.mode)

    @classmethod
    def open(cls, path: Path):
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
            mode = cls._mode(image)
            channels = cls.CHANNELS.get(mode)
            stack_layout((height, width) if channels is None else (height, width, channels), path)
            return np.asarray(image if mode == image.mode else image.convert(mode)), NOT_RECORDED

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        return _whole_file_frame(cls, path, index)


class NpyReader:
    """NumPy ``.npy`` without pickles; a stack is memory-mapped, so frames are read as needed."""

    @classmethod
    def open(cls, path: Path):
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise InputError(f"{path}: pixels must be integers or floats, got {array.dtype}")
        _, _, is_2d = stack_layout(array.shape, path)
        if is_2d:
            return np.array(array), NOT_RECORDED
        return lazy_frames(array.shape, array.dtype, lambda t: cls.frame(path, t)), NOT_RECORDED

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return np.array(as_frame_stack(array, path)[index])


class ZarrReader:
    """A zarr array, or an OME-Zarr image (its first, full-resolution dataset, pixel size from its
    ``scale`` transform and axis units); leading axes of length 1 (OME's t, c, z) are dropped."""

    @staticmethod
    def _array_and_recorded(path: Path):
        try:
            import zarr
        except ImportError as exc:
            raise InputError(f"{path}: reading zarr needs the zarr package: pip install zarr") from exc
        node = zarr.open(str(path), mode="r")
        if hasattr(node, "shape"):
            return node, []
        attributes = dict(node.attrs)
        multiscales = (attributes.get("ome") or attributes).get("multiscales")
        if not multiscales:
            arrays = [array for _, array in node.arrays()]
            if len(arrays) != 1:
                raise InputError(
                    f"{path}: a zarr group without OME multiscales metadata; open one of its arrays"
                )
            return arrays[0], []
        image = multiscales[0]
        dataset = image["datasets"][0]
        array = node[dataset["path"]]
        scales = [
            t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"
        ]
        axes = image.get("axes") or []
        recorded = []
        if scales and len(axes) == len(scales[0]) and isinstance(axes[-1], dict):
            from napari_detection_qc.io.calibration import Recorded

            unit = axes[-1].get("unit")
            if unit or scales[0][-1] != 1:
                recorded = [Recorded("OME-Zarr metadata", float(scales[0][-1]), float(scales[0][-2]), unit)]
        return array, recorded

    @classmethod
    def open(cls, path: Path):
        import dask.array as da

        array, recorded = cls._array_and_recorded(path)
        data = da.from_zarr(array)
        while data.ndim > 3 and data.shape[0] == 1 and data.shape[-1] not in (3, 4):
            data = data[0]
        stack_layout(data.shape, path)
        return frame_chunks(data, path), resolve(recorded)

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        data, _ = cls.open(path)
        return np.asarray(as_frame_stack(data, path)[index])


class RosettaReader:
    """Microscope formats through rosettasciio, lazily (dask) so frames load one by one: Gatan
    DM3/DM4, MRC, Velox/NCEM EMD, TIA SER/EMI, TVIPS. The first signal with two image axes is the
    image (an EMD file may also hold spectra); its pixel size comes from its y and x axes."""

    @staticmethod
    def _image_signal(path: Path) -> tuple[dict, str]:
        plugin = ROSETTASCIIO_PLUGINS[path.suffix.lower()]
        try:
            module = __import__(f"rsciio.{plugin}", fromlist=["file_reader"])
        except ImportError as exc:
            raise InputError(
                f"{path}: reading this format needs rosettasciio: pip install rosettasciio"
            ) from exc
        options = {"select_type": "images"} if plugin == "emd" else {}
        signals = [s for s in module.file_reader(str(path), lazy=True, **options) if np.ndim(s["data"]) >= 2]
        images = [s for s in signals if _is_image(s)]
        if not images:
            raise InputError(f"{path}: the file holds no image")
        return images[0], ROSETTASCIIO_SOURCES[plugin]

    @classmethod
    def open(cls, path: Path):
        signal, source = cls._image_signal(path)
        data = signal["data"]
        stack_layout(data.shape, path)
        return frame_chunks(data, path), resolve(axes_recorded(signal.get("axes") or [], source))

    @classmethod
    def frame(cls, path: Path, index: int) -> np.ndarray:
        data, _ = cls.open(path)
        return np.asarray(as_frame_stack(data, path)[index])


def _is_image(signal: dict) -> bool:
    """Whether a rosettasciio signal is an image or a stack of images: two signal axes by its
    ``navigate`` flags, or (readers that flag a stack axis as a signal axis, as the NCEM EMD reader)
    a last axis in a length, reciprocal-length (diffraction) or no unit; spectra (eV) are not."""
    axes = sorted(signal.get("axes") or [], key=lambda axis: axis.get("index_in_array", 0))
    flags = [axis.get("navigate") for axis in axes]
    if axes and None not in flags and sum(1 for flag in flags if not flag) == 2:
        return True
    unit = axes[-1].get("units") if axes else None
    return not unit or nanometres(1.0, unit) is not None or "/" in str(unit)
