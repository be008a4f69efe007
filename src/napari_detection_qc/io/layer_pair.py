"""The masks (Labels) + boxes (Shapes) layer pair as plain data.

A re-run merges its frames into what the layers hold, one frame at a time, so nothing is lost
before its replacement exists (the detector's signals about each frame, stored in the pair's record,
follow the same rule); a mask painted by hand gets its box (score 1, origin "manual"), a
deleted box takes its mask with it; and two layers that do not belong together are named as such
instead of giving meaningless numbers. No napari imports: widgets pass layer data and metadata in
and apply what comes back.
"""

from __future__ import annotations

import uuid
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from napari_detection_qc.detections.records import FrameDetections, boxes_to_rectangles, frame_shapes_data
from napari_detection_qc.io.pixel_sizes import METADATA_KEY
from napari_detection_qc.quality.signals import signals_from_records

SIGNALS_KEY = "signals"
"""Record entry: the detector's signals per frame, ``{"<frame>": signals_to_records form}`` (JSON
keys are text); frames detected without signals have no entry."""
OBJECT_SIZES_KEY = "object_size_px"
"""Record entry: the object size (native px) each frame was detected at, ``{"<frame>": px or None}``."""
ORIGIN_DETECTOR = "detector"
ORIGIN_MANUAL = "manual"
MANUAL_SCORE = 1.0
"""A mask the user painted is an object they vouch for: it enters the features as a detection of
score 1 and is marked ``origin = "manual"`` in the boxes' features."""


def new_pair_id() -> str:
    """Stamped on both layers of one detection run, so a mismatched pair can be recognised."""
    return uuid.uuid4().hex


def pair_record(layer_metadata: Mapping | None) -> dict:
    """The detection record a layer carries (empty for layers we did not make)."""
    return dict((layer_metadata or {}).get(METADATA_KEY, {}))


def merge_signals(stored: Mapping | None, redone: Mapping[int, dict]) -> dict[str, dict]:
    """The record's signals after a run redid the frames in ``redone`` (frame -> JSON-ready
    signals, empty when the run computed none): those frames' signals are replaced (or dropped, as
    they described detections that are gone), every other frame keeps its own."""
    merged = {str(t): dict(signals) for t, signals in (stored or {}).items()}
    for t, signals in redone.items():
        merged.pop(str(t), None)
        if signals:
            merged[str(t)] = dict(signals)
    return dict(sorted(merged.items(), key=lambda item: int(item[0])))


def stored_signals(record: Mapping, n_frames: int) -> list[dict]:
    """Each of ``n_frames`` frames' signals from a pair record (``signals_from_records`` form), an
    empty dict for frames detected without them."""
    stored = record.get(SIGNALS_KEY) or {}
    return signals_from_records([stored.get(str(t), {}) for t in range(n_frames)])


def with_origin(features: pd.DataFrame) -> pd.DataFrame:
    """Features with an ``origin`` column (rows without one came from the detector)."""
    features = features.reset_index(drop=True).copy()
    if "origin" not in features.columns:
        features["origin"] = ORIGIN_DETECTOR
    features["origin"] = features["origin"].fillna(ORIGIN_DETECTOR).astype(object)
    return features


def merge_frames(
    vertices: Sequence[np.ndarray], features: pd.DataFrame, new: Mapping[int, FrameDetections], is_2d: bool
) -> tuple[list[np.ndarray], pd.DataFrame]:
    """The boxes after replacing the frames in ``new``: every other frame's rows (hand-made ones
    included) stay as they were."""
    features = with_origin(features)
    redone = features["frame"].isin(list(new)).to_numpy() if len(features) else np.zeros(0, bool)
    kept_vertices = [np.asarray(v) for v, drop in zip(vertices, redone) if not drop]
    parts_v, parts_f = [kept_vertices], [features.loc[~redone]]
    for t in sorted(new):
        frame_vertices, frame_features = frame_shapes_data(new[t], t, is_2d)
        frame_features["origin"] = ORIGIN_DETECTOR
        parts_v.append(list(frame_vertices))
        parts_f.append(frame_features)
    merged = pd.concat([f for f in parts_f if len(f)] or [features.iloc[:0]], ignore_index=True)
    return [v for part in parts_v for v in part], merged


def frame_box_ids(features: pd.DataFrame, frame: int) -> np.ndarray:
    """Mask ids that have a box in ``frame``."""
    if not len(features):
        return np.zeros(0, np.int64)
    rows = features["frame"].to_numpy() == frame
    return features["label"].to_numpy()[rows].astype(np.int64)


def unboxed_masks(labels_frame: np.ndarray, box_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, boxes) of masks in the frame with no box: the bounding box of each such mask, as
    ``[y_min, x_min, y_max, x_max]`` with exclusive maxima like the detector's boxes."""
    labels_frame = np.asarray(labels_frame)
    present = np.unique(labels_frame)
    ids = np.setdiff1d(present[present > 0], box_ids).astype(np.int64)
    if not ids.size:
        return ids, np.zeros((0, 4))
    slices = ndimage.find_objects(labels_frame, max_label=int(ids.max()))
    boxes = np.array(
        [[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in (slices[i - 1] for i in ids)], float
    )
    return ids, boxes


def manual_rows(
    ids: np.ndarray, boxes: np.ndarray, frame: int, is_2d: bool
) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Shapes rows for hand-painted masks: their boxes, score 1, p_true 1 (a person drew them),
    origin ``manual``."""
    features = pd.DataFrame(
        {
            "score": np.full(len(ids), MANUAL_SCORE),
            "p_true": np.ones(len(ids)),
            "label": np.asarray(ids, np.int64),
            "frame": np.full(len(ids), frame, np.int64),
            "origin": ORIGIN_MANUAL,
        }
    )
    return list(
        boxes_to_rectangles(np.asarray(boxes, float).reshape(-1, 4), None if is_2d else frame)
    ), features


def orphan_masks(labels_frame: np.ndarray, box_ids: np.ndarray) -> np.ndarray:
    """Mask ids in the frame whose box is gone (the user deleted it)."""
    present = np.unique(np.asarray(labels_frame))
    return np.setdiff1d(present[present > 0], box_ids).astype(np.int64)


def pair_problem(
    masks_name: str,
    labels_shape: Sequence[int],
    masks_metadata: Mapping | None,
    boxes_name: str,
    vertices: Sequence[np.ndarray],
    boxes_metadata: Mapping | None,
) -> str | None:
    """Why a Labels and a Shapes layer are not one detection's masks and boxes, or None."""
    masks_record, boxes_record = pair_record(masks_metadata), pair_record(boxes_metadata)
    masks_id, boxes_id = masks_record.get("pair_id"), boxes_record.get("pair_id")
    if masks_id and boxes_id and masks_id != boxes_id:
        return (
            f"'{masks_name}' and '{boxes_name}' come from different detection runs "
            f"(on '{masks_record.get('image_layer', '?')}' and '{boxes_record.get('image_layer', '?')}'): "
            "pick the masks and boxes of one run"
        )
    if len(labels_shape) not in (2, 3) or not len(vertices):
        return None
    n_frames = 1 if len(labels_shape) == 2 else labels_shape[0]
    box_dims = {np.shape(v)[-1] for v in vertices}
    if len(labels_shape) == 2 and box_dims != {2}:
        return f"'{boxes_name}' holds boxes on a stack but '{masks_name}' is a single image"
    if len(labels_shape) == 3 and n_frames > 1 and box_dims == {2}:
        return f"'{boxes_name}' is a single image's boxes but '{masks_name}' has {n_frames} frames"
    corners = np.concatenate([np.asarray(v)[:, -2:] for v in vertices])
    height, width = labels_shape[-2:]
    reach_y, reach_x = corners.max(0)
    if reach_y > height + 1 or reach_x > width + 1 or corners.min() < -1:
        return (
            f"boxes in '{boxes_name}' reach ({reach_y:.0f}, {reach_x:.0f}), outside the "
            f"{height} x {width} frames of '{masks_name}': they belong to another image"
        )
    return None


def count_unboxed(labels_data: np.ndarray, features: pd.DataFrame) -> int:
    """How many masks in a (Y, X) or (T, Y, X) Labels array have no box (quality ignores them)."""
    stack = labels_data[None] if labels_data.ndim == 2 else labels_data
    if "label" not in features.columns:
        return 0
    frames = features["frame"].to_numpy() if "frame" in features.columns and labels_data.ndim == 3 else None
    total = 0
    for t in range(len(stack)):
        ids = features["label"].to_numpy() if frames is None else features["label"].to_numpy()[frames == t]
        total += len(orphan_masks(stack[t], ids.astype(np.int64)))
    return total
