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

import json
from pathlib import Path

import numpy as np

from napari_detection_qc.io.files import SUPPORTED_SUFFIXES, ZARR_SUFFIXES, InputError, open_micrograph
from napari_detection_qc.io.pixel_sizes import METADATA_KEY

BOX_STYLE = {
    "face_color": "transparent",
    "edge_width": 1.5,
    "edge_colormap": "plasma",
    "edge_contrast_limits": (0.0, 1.0),
}


def _is_store(path: Path) -> bool:
    """A store folder, or a ``detect`` output folder holding store folders."""
    return path.is_dir() and ((path / "meta.json").is_file() or any(path.glob("*/meta.json")))


def _is_coco_detections(path: Path) -> bool:
    """A COCO JSON file whose annotations carry scores (detections, as ``export-coco`` and the
    COCO writer make them; ground truth is loaded in the Training step instead)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    annotations = document.get("annotations") if isinstance(document, dict) else None
    return (
        isinstance(document.get("images"), list)
        and isinstance(annotations, list)
        and any(isinstance(a, dict) and "score" in a for a in annotations)
    )


def _readable(path: Path) -> bool:
    if path.suffix.lower() in ZARR_SUFFIXES:
        return path.is_dir()
    if path.is_dir():
        return _is_store(path)
    if (
        path.exists() and not path.is_file()
    ):  # a pipe or device: ours to refuse, never to read (it would block)
        return path.suffix.lower() in (*SUPPORTED_SUFFIXES, ".json")
    if path.suffix.lower() == ".json":
        return _is_coco_detections(path)
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
    from napari_detection_qc.validation import require_regular_file

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[tuple] = []
    for p in map(Path, paths):
        if not p.is_dir():
            require_regular_file(p, "file")
        if p.is_dir() and p.suffix.lower() not in ZARR_SUFFIXES:
            layers.extend(store_layers(p))
        elif p.suffix.lower() == ".json":
            layers.extend(coco_layers(p))
        else:
            layers.append(micrograph_layer(p))
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
    from napari_detection_qc.batch.store.format import find_stores

    layers: list[tuple] = []
    for store in find_stores(path):
        layers.extend(_one_store_layers(store))
    return layers


def _one_store_layers(store) -> list[tuple]:
    from napari_detection_qc.batch.store.format import store_detections
    from napari_detection_qc.io.layer_pair import OBJECT_SIZES_KEY, SIGNALS_KEY
    from napari_detection_qc.quality.signals import EMBEDDING

    meta = store.read_meta()
    _, detections = store_detections(store)  # validates the table and masks against the meta
    n_frames, is_2d = meta["n_frames"], bool(meta.get("is_2d"))
    stored_signals = store.read_signals(n_frames) or [{} for _ in range(n_frames)]
    object_sizes = store.object_sizes()
    source = Path(meta["source"])
    name = source.stem
    pixel_size_nm = meta.get("pixel_size_nm")
    pixel_size_nm = (
        float(pixel_size_nm) if isinstance(pixel_size_nm, (int, float)) and pixel_size_nm > 0 else None
    )
    layers = []
    if source.exists():
        opened = open_micrograph(source)
        if opened.n_frames == n_frames and tuple(opened.frame_shape) == tuple(meta["image_shape"]):
            record = image_record(source, opened.pixel_size) | {"pixel_size_nm": pixel_size_nm}
            layers.append(
                (
                    opened.data,
                    {
                        "name": name,
                        "rgb": opened.rgb,
                        "metadata": {METADATA_KEY: record},
                        **spatial_scale(is_2d, pixel_size_nm),
                    },
                    "image",
                )
            )
    masks = np.load(store.masks_path, mmap_mode="c", allow_pickle=False)  # editable, read as touched
    signals = {
        str(t): {k: np.asarray(v).tolist() if k == EMBEDDING else float(v) for k, v in frame.items()}
        for t, frame in enumerate(stored_signals)
        if frame
    }
    record = detection_record(meta["detector"], name, source, pixel_size_nm, n_frames) | {
        SIGNALS_KEY: signals,
        OBJECT_SIZES_KEY: {str(t): size for t, size in sorted(object_sizes.items())},
        "store": str(store.root),
    }
    return layers + pair_layers(masks[0] if is_2d else masks, detections.frames, is_2d, name, record)


def detection_record(detector: dict, name: str, source, pixel_size_nm: float | None, n_frames: int) -> dict:
    """The record the Detection step puts on a masks + boxes pair (``layer_pair``), for detections
    read back from a file: a new pair id, every frame done."""
    from napari_detection_qc.io.layer_pair import new_pair_id

    return {
        "pair_id": new_pair_id(),
        "detector": dict(detector or {}),
        "image_layer": name,
        "pixel_size_nm": pixel_size_nm,
        "frames_done": list(range(n_frames)),
        "source": str(source),
    }


def pair_layers(masks, frames, is_2d: bool, name: str, record: dict) -> list[tuple]:
    """``<name> masks`` (Labels) and ``<name> boxes`` (Shapes with score, label, frame, origin
    features, coloured by score) carrying ``record``, as the Detection step makes them."""
    import pandas as pd

    from napari_detection_qc.detections.records import empty_shapes_features, frame_shapes_data
    from napari_detection_qc.io.layer_pair import ORIGIN_DETECTOR

    parts = [frame_shapes_data(frame, t, is_2d) for t, frame in enumerate(frames)]
    vertices = [v for part_vertices, _ in parts for v in part_vertices]
    features = pd.concat([f for _, f in parts if len(f)] or [empty_shapes_features()], ignore_index=True)
    features["origin"] = ORIGIN_DETECTOR
    scale = spatial_scale(is_2d, record.get("pixel_size_nm"))
    return [
        (masks, {"name": f"{name} masks", "metadata": {METADATA_KEY: dict(record)}, **scale}, "labels"),
        (
            vertices,
            {
                "name": f"{name} boxes",
                "shape_type": "rectangle",
                "ndim": 2 if is_2d else 3,
                "features": features,
                "edge_color": "score" if len(vertices) else "yellow",
                "metadata": {METADATA_KEY: dict(record)},
                **BOX_STYLE,
                **scale,
            },
            "shapes",
        ),
    ]


def coco_layers(path: Path) -> list[tuple]:
    """Masks and boxes of every image file a COCO detections file names (a stack's frames are its
    images carrying ``"frame"``), with the detector record and pixel size it stores in ``info``,
    and the image itself when that file lies beside the JSON."""
    from napari_detection_qc.detections.coco import annotation_pixels
    from napari_detection_qc.detections.records import FrameDetections, smallest_label_dtype

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        info = document.get("info") or {}
        pixel_size_nm = info.get("pixel_size_nm")
        pixel_size_nm = (
            float(pixel_size_nm) if isinstance(pixel_size_nm, (int, float)) and pixel_size_nm > 0 else None
        )
        by_image: dict[int, list[dict]] = {}
        for annotation in document["annotations"]:
            by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
        by_file: dict[str, list[dict]] = {}
        for image in document["images"]:
            by_file.setdefault(str(image["file_name"]), []).append(image)
        layers: list[tuple] = []
        for file_name, images in by_file.items():
            images = sorted(images, key=lambda image: (int(image.get("frame", 0)), int(image["id"])))
            is_2d = len(images) == 1 and "frame" not in images[0]
            height, width = int(images[0]["height"]), int(images[0]["width"])
            if any((int(i["height"]), int(i["width"])) != (height, width) for i in images):
                raise ValueError(f"the frames of {file_name} differ in size")
            frames = []
            for image in images:
                found = sorted(by_image.get(int(image["id"]), []), key=lambda a: -float(a.get("score", 1.0)))
                flat = np.zeros(height * width, smallest_label_dtype(len(found)))
                for k, annotation in enumerate(found, start=1):
                    flat[annotation_pixels(annotation, height, width)] = k
                x, y, w, h = (np.array([a["bbox"][i] for a in found], float) for i in range(4))
                boxes = np.stack([y, x, y + h, x + w], axis=1) if found else np.zeros((0, 4))
                scores = np.array([float(a.get("score", 1.0)) for a in found])
                frames.append(FrameDetections(boxes, scores, flat.reshape(width, height).T.copy()))
            name = Path(file_name).stem
            beside = path.parent / Path(file_name).name
            if beside.is_file():
                opened = open_micrograph(beside)
                if opened.n_frames == len(frames) and tuple(opened.frame_shape) == (height, width):
                    record = image_record(beside, opened.pixel_size)
                    size = pixel_size_nm or opened.pixel_size.nm
                    layers.append(
                        (
                            opened.data,
                            {
                                "name": name,
                                "rgb": opened.rgb,
                                "metadata": {METADATA_KEY: record},
                                **spatial_scale(is_2d, size),
                            },
                            "image",
                        )
                    )
                    pixel_size_nm = size
            masks = np.stack(
                [frame.labels.astype(smallest_label_dtype(max(f.count for f in frames))) for frame in frames]
            )
            record = detection_record(info.get("detector") or {}, name, file_name, pixel_size_nm, len(frames))
            layers.extend(pair_layers(masks[0] if is_2d else masks, frames, is_2d, name, record))
        return layers
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InputError(f"{path}: not a COCO detections file this plugin can open ({exc})") from exc
