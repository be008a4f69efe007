"""The napari reader: micrographs with their pixel size, and ``detect --out`` stores reopened as the
Detection step leaves them. No napari import: the reader returns napari layer-data tuples.

A micrograph becomes an image layer with ``scale`` and ``units`` (nm) on its two spatial axes and
a record in its metadata (source, pixel size in nm, where it came from, or why it is unknown), where
the Detection step and the physical read-outs find it (``pixel_sizes.pixel_size_from_layer``). A
stack is a dask array read frame by frame (``files.open_micrograph``).

A store (one input's folder under ``detect --out``, or the output folder with one per input) opens
as its image (when the source file is still there), ``<name> masks`` and ``<name> boxes``, both
carrying the detector record the Detection step writes (detector, pixel size, frames done, each
frame's signals and object size), so the Quality and Training steps take them as a fresh detection.
Everything is read and checked before any layer is returned: a damaged store opens nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pixel_sizes import METADATA_KEY
from .files import SUPPORTED_SUFFIXES, ZARR_SUFFIXES, open_micrograph

BOX_STYLE = {"face_color": "transparent", "edge_width": 1.5, "edge_colormap": "plasma",
             "edge_contrast_limits": (0.0, 1.0)}


def _is_store(path: Path) -> bool:
    """A store folder, or a ``detect`` output folder holding store folders."""
    return path.is_dir() and ((path / "meta.json").is_file() or any(path.glob("*/meta.json")))


def _readable(path: Path) -> bool:
    if path.suffix.lower() in ZARR_SUFFIXES:
        return path.is_dir()
    if path.is_dir():
        return _is_store(path)
    return path.suffix.lower() in SUPPORTED_SUFFIXES


def get_reader(path):
    """npe2 reader hook: :func:`read_micrographs` for supported micrographs, zarr folders and
    ``detect`` stores (or a list of them), otherwise None so napari asks another reader."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_readable(Path(p)) for p in paths):
        return None
    return read_micrographs


def read_micrographs(path) -> list[tuple]:
    """Layer-data tuples for each path: one image layer per micrograph; image, masks and boxes per
    store. A file that cannot be read is an :class:`InputError` naming it."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[tuple] = []
    for p in map(Path, paths):
        layers.extend(store_layers(p) if p.is_dir() and p.suffix.lower() not in ZARR_SUFFIXES else [micrograph_layer(p)])
    return layers


def image_record(source: Path, pixel_size) -> dict:
    """The record an image layer carries: where it came from and its pixel size with the reason
    it is unknown (``pixel_size_note``, one line for the dock)."""
    return {
        "source": str(source),
        "pixel_size_nm": pixel_size.nm,
        "pixel_size_source": pixel_size.source,
        "pixel_size_note": pixel_size.note,
    }


def spatial_scale(is_2d: bool, pixel_size_nm: float | None) -> dict:
    """``scale``/``units`` kwargs for a layer on a (Y, X) or (T, Y, X) grid; nothing when unknown."""
    if pixel_size_nm is None:
        return {}
    frame_axes = () if is_2d else (1.0,)
    return {
        "scale": (*frame_axes, pixel_size_nm, pixel_size_nm),
        "units": (*("pixel" for _ in frame_axes), "nm", "nm"),
    }


def micrograph_layer(path: Path) -> tuple:
    opened = open_micrograph(path)
    kwargs = {
        "name": path.stem,
        "rgb": opened.rgb,
        "metadata": {METADATA_KEY: image_record(path, opened.pixel_size)},
        **spatial_scale(opened.is_2d, opened.pixel_size.nm),
    }
    return opened.data, kwargs, "image"


def store_layers(path: Path) -> list[tuple]:
    """Image (if its source file still exists and matches), masks and boxes of every store at
    ``path``, all checked before any is returned."""
    from ..store.format import find_stores

    layers: list[tuple] = []
    for store in find_stores(path):
        layers.extend(_one_store_layers(store))
    return layers


def _one_store_layers(store) -> list[tuple]:
    import pandas as pd

    from ..detections import frame_shapes_data
    from ..layer_pair import OBJECT_SIZES_KEY, ORIGIN_DETECTOR, SIGNALS_KEY, new_pair_id
    from ..signals import EMBEDDING
    from ..store.format import store_detections

    meta = store.read_meta()
    _, detections = store_detections(store)  # validates the table and masks against the meta
    n_frames, is_2d = meta["n_frames"], bool(meta.get("is_2d"))
    stored_signals = store.read_signals(n_frames) or [{} for _ in range(n_frames)]
    object_sizes = store.object_sizes()
    source = Path(meta["source"])
    name = source.stem
    pixel_size_nm = meta.get("pixel_size_nm")
    pixel_size_nm = float(pixel_size_nm) if isinstance(pixel_size_nm, (int, float)) and pixel_size_nm > 0 else None
    layers = []
    if source.exists():
        opened = open_micrograph(source)
        if opened.n_frames == n_frames and tuple(opened.frame_shape) == tuple(meta["image_shape"]):
            record = image_record(source, opened.pixel_size) | {"pixel_size_nm": pixel_size_nm}
            layers.append((opened.data, {"name": name, "rgb": opened.rgb, "metadata": {METADATA_KEY: record},
                                         **spatial_scale(is_2d, pixel_size_nm)}, "image"))
    masks = np.load(store.masks_path, mmap_mode="c", allow_pickle=False)  # editable, read as touched
    parts = [frame_shapes_data(frame, t, is_2d) for t, frame in enumerate(detections.frames)]
    vertices = [v for part_vertices, _ in parts for v in part_vertices]
    features = pd.concat([f for _, f in parts], ignore_index=True)
    features["origin"] = ORIGIN_DETECTOR
    signals = {
        str(t): {k: np.asarray(v).tolist() if k == EMBEDDING else float(v) for k, v in frame.items()}
        for t, frame in enumerate(stored_signals) if frame
    }
    record = {
        "pair_id": new_pair_id(),
        "detector": meta["detector"],
        "image_layer": name,
        "pixel_size_nm": pixel_size_nm,
        "frames_done": list(range(n_frames)),
        SIGNALS_KEY: signals,
        OBJECT_SIZES_KEY: {str(t): size for t, size in sorted(object_sizes.items())},
        "source": str(source),
        "store": str(store.root),
    }
    scale = spatial_scale(is_2d, pixel_size_nm)
    layers.append((masks[0] if is_2d else masks, {"name": f"{name} masks", "metadata": {METADATA_KEY: dict(record)},
                                                   **scale}, "labels"))
    layers.append((vertices, {"name": f"{name} boxes", "shape_type": "rectangle", "ndim": 2 if is_2d else 3,
                              "features": features, "edge_color": "score" if len(vertices) else "yellow",
                              "metadata": {METADATA_KEY: dict(record)}, **BOX_STYLE, **scale}, "shapes"))
    return layers
