"""napari reader for Gatan DM3/DM4 and TIFF micrographs that keeps their pixel size: the image layer
gets ``scale`` and ``units`` (nm) on its two spatial axes, and the pixel size in nm in its metadata,
where the detection widget and the physical read-outs find it (``pixel_sizes.pixel_size_from_layer``).
The pixels and the pixel size come from ``io`` (the batch mode's readers). No napari import: the
reader returns napari layer-data tuples.
"""

from __future__ import annotations

from pathlib import Path

from .io import DM_SUFFIXES, TIFF_SUFFIXES, read_frames, stack_layout
from .pixel_sizes import METADATA_KEY

READER_SUFFIXES = DM_SUFFIXES + TIFF_SUFFIXES


def get_reader(path):
    """npe2 reader hook: :func:`read_micrographs` for a .dm3/.dm4/.tif/.tiff path (or a list of
    them), otherwise None so napari asks another reader."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or any(Path(p).suffix.lower() not in READER_SUFFIXES for p in paths):
        return None
    return read_micrographs


def read_micrographs(path) -> list[tuple]:
    """One image layer per file: (data, kwargs, "image"). A missing rosettasciio for DM files is
    an error that says what to install."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [micrograph_layer(Path(p)) for p in paths]


def micrograph_layer(path: Path) -> tuple:
    array, pixel_size_nm = read_frames(path)
    _, _, is_2d = stack_layout(array.shape, path)
    rgb = array.ndim == (3 if is_2d else 4)
    kwargs = {
        "name": path.stem,
        "rgb": rgb,
        "metadata": {METADATA_KEY: {"source": str(path), "pixel_size_nm": pixel_size_nm}},
    }
    if pixel_size_nm is not None:
        frame_axes = () if is_2d else (1.0,)
        kwargs["scale"] = (*frame_axes, pixel_size_nm, pixel_size_nm)
        kwargs["units"] = (*("pixel" for _ in frame_axes), "nm", "nm")
    return array, kwargs, "image"
