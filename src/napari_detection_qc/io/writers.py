"""Results out of napari and the CLI in files other programs open: instance masks as an ImageJ TIFF
label image with its calibration (Fiji shows nm and measures in them), and masks + boxes as COCO
JSON with scores and the detector record. The npe2 writers (``write_labels_tiff``,
``write_detections_coco``) take napari's layer-data tuples; no napari import.
Files are written under a temporary name and renamed into place (``atomic``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from napari_detection_qc.io.atomic import atomic_path
from napari_detection_qc.io.pixel_sizes import METADATA_KEY, pixel_size_from_layer

MASKS_TIFF = "masks.tif"
"""The TIFF label image ``detect`` writes beside ``masks.npy`` in each store."""
IMAGEJ_EXACT_FLOAT_IDS = 2**24
"""ImageJ has no 32-bit integer images: more ids than uint16 holds go to float32, exact up to here."""


def imagej_label_dtype(max_id: int) -> np.dtype:
    """The ImageJ pixel type that holds ids up to ``max_id`` exactly (8-, 16-bit, else float)."""
    if max_id <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if max_id <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if max_id <= IMAGEJ_EXACT_FLOAT_IDS:
        return np.dtype(np.float32)
    raise ValueError(f"{max_id} objects in one image: ImageJ cannot hold that many ids exactly")


def write_label_tiff(path, labels, pixel_size_nm: float | None = None) -> Path:
    """A (Y, X) or (T, Y, X) label image as an ImageJ TIFF (axes YX / TYX) with the pixel size as
    its calibration in nm. The stack is written frame by frame (a memory-mapped or dask array is
    never loaded whole)."""
    path = Path(path)
    if labels.ndim not in (2, 3):
        raise ValueError(f"label images are (Y, X) or (T, Y, X), got shape {labels.shape}")
    frames = labels[None] if labels.ndim == 2 else labels
    max_id = max((int(np.asarray(frame).max(initial=0)) for frame in frames), default=0)
    dtype = imagej_label_dtype(max_id)
    options: dict = {"imagej": True, "metadata": {"axes": "YX" if labels.ndim == 2 else "TYX"}}
    if pixel_size_nm:
        options["resolution"] = (1.0 / pixel_size_nm, 1.0 / pixel_size_nm)
        options["metadata"]["unit"] = "nm"
    import tifffile

    with atomic_path(path) as temporary:
        tifffile.imwrite(
            temporary,
            (np.asarray(frame).astype(dtype, copy=False) for frame in frames),
            shape=tuple(labels.shape),
            dtype=dtype,
            **options,
        )
    return path


def _layer(attributes: Mapping) -> SimpleNamespace:
    """The parts of a layer-data tuple's attributes that ``pixel_size_from_layer`` reads."""
    return SimpleNamespace(
        metadata=attributes.get("metadata") or {},
        scale=attributes.get("scale"),
        units=attributes.get("units"),
    )


def write_labels_tiff(path: str, data, attributes: dict) -> list[str]:
    """npe2 writer: a Labels layer as an ImageJ TIFF label image, calibrated when the layer's pixel
    size is known."""
    if isinstance(data, (list, tuple)):  # multiscale: the full-resolution level
        data = data[0]
    return [str(write_label_tiff(path, data, pixel_size_from_layer(_layer(attributes))))]


def detections_document(labels, vertices: Sequence, features, record: Mapping, name: str) -> dict:
    """A COCO document of one masks + boxes pair (``coco.detections_to_coco``), with the detector
    record and pixel size in its ``info`` so a reader knows what produced it."""
    from napari_detection_qc.detections.records import StackDetections
    from napari_detection_qc.io.layer_pair import pair_problem

    labels = np.asarray(labels)
    problem = pair_problem(
        "masks", labels.shape, {METADATA_KEY: dict(record)}, "boxes", vertices, {METADATA_KEY: dict(record)}
    )
    if problem:
        raise ValueError(problem)
    return stack_document(StackDetections.from_layer_data(labels, vertices, features), record, name)


def stack_document(stack, record: Mapping, name: str) -> dict:
    """The COCO document of detections already rebuilt from their layers, with the pair's
    detector record and pixel size in its ``info``."""
    from napari_detection_qc.detections.coco import detections_to_coco

    document = detections_to_coco([(name, stack)])
    document["info"]["detector"] = dict(record.get("detector") or {})
    document["info"]["pixel_size_nm"] = record.get("pixel_size_nm")
    return document


def write_detections_coco(path: str, layer_data: Iterable[tuple]) -> list[str]:
    """npe2 writer for a selected Labels + Shapes pair: COCO JSON with RLE masks, boxes, scores and
    the detector record. The image is named after the file the detections were made on where the
    record knows it, else after the image layer."""
    from napari_detection_qc.detections.coco import write_coco
    from napari_detection_qc.io.layer_pair import pair_record

    by_type: dict[str, list[tuple]] = {}
    for data, attributes, kind in layer_data:
        by_type.setdefault(kind, []).append((data, attributes))
    if len(by_type.get("labels", [])) != 1 or len(by_type.get("shapes", [])) != 1:
        raise ValueError("select one masks (Labels) layer and one boxes (Shapes) layer to save as COCO")
    (labels, label_attributes), (vertices, box_attributes) = by_type["labels"][0], by_type["shapes"][0]
    if isinstance(labels, (list, tuple)):
        labels = labels[0]
    record = pair_record(box_attributes.get("metadata")) or pair_record(label_attributes.get("metadata"))
    features = box_attributes.get("features")
    if features is None or "score" not in getattr(features, "columns", ()):
        raise ValueError(f"the Shapes layer '{box_attributes.get('name', '')}' has no 'score' feature")
    source = record.get("source")
    name = (
        Path(source).name
        if source
        else (record.get("image_layer") or str(label_attributes.get("name", "image")))
    )
    return [str(write_coco(path, detections_document(labels, vertices, features, record, name)))]
