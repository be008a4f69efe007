"""Files in and out: micrographs with their pixel sizes (``files``, ``calibration``), the napari
reader (``napari_reader``) and writers (``writers``), and atomic writes (``atomic``)."""

from napari_detection_qc.io.calibration import PixelSize, nanometres
from napari_detection_qc.io.files import (
    DM_SUFFIXES,
    MAX_FRAME_PIXELS,
    PLAIN_IMAGE_SUFFIXES,
    ROSETTASCIIO_PLUGINS,
    SUPPORTED_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIXES,
    InputError,
    InputInfo,
    Micrograph,
    as_frame_stack,
    base_name,
    describe,
    list_inputs,
    open_micrograph,
    read_frame,
    read_frames,
    stack_layout,
)

__all__ = [
    "DM_SUFFIXES",
    "MAX_FRAME_PIXELS",
    "PLAIN_IMAGE_SUFFIXES",
    "ROSETTASCIIO_PLUGINS",
    "SUPPORTED_SUFFIXES",
    "TIFF_SUFFIXES",
    "ZARR_SUFFIXES",
    "InputError",
    "InputInfo",
    "Micrograph",
    "PixelSize",
    "as_frame_stack",
    "base_name",
    "describe",
    "list_inputs",
    "nanometres",
    "open_micrograph",
    "read_frame",
    "read_frames",
    "stack_layout",
]
