"""Detections of one frame and of a stack, and their napari layer representations.

A frame's detections are boxes ``[y_min, x_min, y_max, x_max]`` (pixels, napari row/column order),
scores, and an instance image whose id ``i + 1`` is the mask of box ``i``. A stack is a list of
frames of one shape. Layers: a Labels array (Y, X) or (T, Y, X) in the smallest integer dtype that
fits, and Shapes rectangles with a features table holding ``score``, ``label`` and ``frame``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from napari_detection_qc.quality.p_true import detection_p_true


def smallest_label_dtype(max_id: int) -> np.dtype:
    """The smallest unsigned dtype holding ids up to ``max_id`` (Labels memory on big stacks)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def as_boxes(boxes) -> np.ndarray:
    """Validate and return boxes as a float64 (N, 4) array."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) [y_min, x_min, y_max, x_max], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("boxes contain NaN or infinite coordinates")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise ValueError("boxes must satisfy y_min <= y_max and x_min <= x_max")
    return arr


def as_scores(scores, n: int | None = None) -> np.ndarray:
    """Validate and return scores as a float64 (N,) array in [0, 1]; NaN is an error."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} scores for {n} boxes")
    if np.any(np.isnan(arr)):
        raise ValueError("scores contain NaN; every detection needs a confidence score")
    if np.any((arr < 0) | (arr > 1)):
        raise ValueError("scores must lie in [0, 1]")
    return arr


@dataclass(frozen=True)
class FrameDetections:
    """One frame's detections: boxes (N, 4), scores (N,), instance image (Y, X) with id = index + 1,
    and the detector's label-free ``signals`` about the frame (see ``signals.py``; empty unless
    the detection call asked for them)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    signals: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        boxes = as_boxes(self.boxes)
        scores = as_scores(self.scores, len(boxes))
        labels = np.asarray(self.labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be a (Y, X) instance image, got {labels.ndim} dims")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be an integer image, got {labels.dtype}")
        if labels.size and labels.max() > len(boxes):
            raise ValueError(f"labels hold id {labels.max()} but there are only {len(boxes)} boxes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)

    @classmethod
    def empty(cls, image_shape: Sequence[int]) -> FrameDetections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(tuple(image_shape), dtype=np.uint16))

    @property
    def count(self) -> int:
        return len(self.scores)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.labels.shape)

    def above(self, min_score: float) -> FrameDetections:
        """Keep detections scoring at least ``min_score``; masks are renumbered to stay index + 1."""
        keep = np.flatnonzero(self.scores >= min_score)
        lut = np.zeros(self.count + 1, dtype=np.int64)
        lut[keep + 1] = np.arange(1, len(keep) + 1)
        labels = lut[self.labels].astype(smallest_label_dtype(len(keep)))
        return FrameDetections(self.boxes[keep], self.scores[keep], labels)


@dataclass(frozen=True)
class StackDetections:
    """Detections of every frame of a (T, Y, X) stack (or one (Y, X) image when ``is_2d``)."""

    frames: tuple[FrameDetections, ...]
    is_2d: bool = False

    def __post_init__(self):
        frames = tuple(self.frames)
        if not frames:
            raise ValueError("a stack needs at least one frame")
        shapes = {f.image_shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"all frames must have one shape, got {sorted(shapes)}")
        if self.is_2d and len(frames) != 1:
            raise ValueError("a 2-D image has exactly one frame")
        object.__setattr__(self, "frames", frames)

    @classmethod
    def from_frames(cls, frames: Iterable[FrameDetections], is_2d: bool = False) -> StackDetections:
        return cls(tuple(frames), is_2d)

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.frames[0].image_shape

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> FrameDetections:
        return self.frames[index]

    @property
    def total_count(self) -> int:
        return sum(f.count for f in self.frames)

    # -- napari layer data -------------------------------------------------------------------------
    def to_labels_data(self) -> np.ndarray:
        """Labels layer data: (Y, X) or (T, Y, X), smallest unsigned dtype holding the ids."""
        dtype = smallest_label_dtype(max((f.count for f in self.frames), default=0))
        stacked = np.stack([f.labels.astype(dtype, copy=False) for f in self.frames])
        return stacked[0] if self.is_2d else stacked

    def to_shapes_data(self) -> tuple[list[np.ndarray], pd.DataFrame]:
        """Shapes layer rectangles (vertex arrays) and their features table (score, label, frame)."""
        parts = [
            frame_shapes_data(frame, t, self.is_2d) for t, frame in enumerate(self.frames) if frame.count
        ]
        if not parts:
            return [], empty_shapes_features()
        return list(np.concatenate([v for v, _ in parts])), pd.concat(
            [f for _, f in parts], ignore_index=True
        )

    @classmethod
    def from_layer_data(
        cls, labels_data: np.ndarray, shapes_data: Sequence[np.ndarray], features: pd.DataFrame
    ) -> StackDetections:
        """Rebuild detections from a Labels array and Shapes rectangles with ``score`` (and
        optionally ``label`` and ``frame``) features. Missing ``label`` means id = order in frame."""
        labels_data = np.asarray(labels_data)
        if labels_data.ndim not in (2, 3):
            raise ValueError(f"labels layer must be (Y, X) or (T, Y, X), got {labels_data.ndim} dims")
        is_2d = labels_data.ndim == 2
        stack = labels_data[None] if is_2d else labels_data
        boxes, frames, scores, ids = shapes_to_table(shapes_data, features, is_2d)
        if np.any((frames < 0) | (frames >= len(stack))):
            raise ValueError(f"boxes refer to frames outside the labels layer's {len(stack)} frames")
        out = []
        for t in range(len(stack)):
            sel = np.flatnonzero(frames == t)
            out.append(frame_from_boxes_and_masks(boxes[sel], scores[sel], ids[sel], stack[t]))
        return cls(tuple(out), is_2d)


def frame_shapes_data(frame: FrameDetections, t: int, is_2d: bool) -> tuple[np.ndarray, pd.DataFrame]:
    """One frame's rectangles (N, 4, D) and feature rows (score, label = mask id, frame, p_true:
    the probability that the detection is a real object, ``p_true``)."""
    features = pd.DataFrame(
        {
            "score": frame.scores,
            "label": np.arange(1, frame.count + 1, dtype=np.int64),
            "frame": np.full(frame.count, t, dtype=np.int64),
            "p_true": detection_p_true(frame.scores),
        }
    )
    return boxes_to_rectangles(frame.boxes, None if is_2d else t), features


def empty_shapes_features() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "score": np.zeros(0),
            "label": np.zeros(0, np.int64),
            "frame": np.zeros(0, np.int64),
            "p_true": np.zeros(0),
        }
    )


def boxes_to_rectangles(boxes: np.ndarray, frame: int | None) -> np.ndarray:
    """(N, 4) boxes -> (N, 4, D) rectangle vertices for napari, D = 2 or 3 (leading frame axis)."""
    y0, x0, y1, x1 = (boxes[:, i] for i in range(4))
    corners = np.stack(
        [np.stack([y0, x0], 1), np.stack([y0, x1], 1), np.stack([y1, x1], 1), np.stack([y1, x0], 1)],
        axis=1,
    )
    if frame is None:
        return corners
    t = np.full(corners.shape[:2] + (1,), float(frame))
    return np.concatenate([t, corners], axis=2)


def shapes_to_table(shapes_data, features: pd.DataFrame | None, is_2d: bool):
    """Shapes vertices + features -> (boxes (N,4), frame (N,), score (N,), label id (N,))."""
    n = len(shapes_data)
    if features is None or "score" not in getattr(features, "columns", ()):
        raise ValueError("the Shapes layer has no 'score' feature; it must hold detection scores")
    if len(features) != n:
        raise ValueError(f"the Shapes layer has {n} shapes but {len(features)} feature rows")
    scores = as_scores(features["score"].to_numpy(), n)
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0, np.int64), scores, np.zeros(0, np.int64)
    verts = [np.asarray(v, dtype=np.float64) for v in shapes_data]
    dims = {v.shape[1] for v in verts}
    if len(dims) != 1:
        raise ValueError("shapes have mixed dimensionality")
    (d,) = dims
    if d < 2:
        raise ValueError("shapes must be at least 2-D")
    mins = np.array([v[:, -2:].min(0) for v in verts])
    maxs = np.array([v[:, -2:].max(0) for v in verts])
    boxes = np.concatenate([mins, maxs], axis=1)
    if "frame" in features.columns:
        frames = features["frame"].to_numpy().astype(np.int64)
    elif d >= 3:
        frames = np.array([int(round(v[0, -3])) for v in verts], dtype=np.int64)
    else:
        frames = np.zeros(n, dtype=np.int64)
    if is_2d:
        frames = np.zeros(n, dtype=np.int64)
    if "label" in features.columns:
        ids = features["label"].to_numpy().astype(np.int64)
    else:
        ids = np.zeros(n, dtype=np.int64)
        for t in np.unique(frames):
            sel = np.flatnonzero(frames == t)
            ids[sel] = np.arange(1, len(sel) + 1)
    return boxes, frames, scores, ids


def frame_from_boxes_and_masks(boxes, scores, mask_ids, labels_frame) -> FrameDetections:
    """Renumber a frame so that mask id ``mask_ids[i]`` becomes ``i + 1``; masks whose box was
    removed are dropped, boxes whose mask is missing keep an empty mask."""
    labels_frame = np.asarray(labels_frame)
    if not np.issubdtype(labels_frame.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels_frame.dtype}")
    max_id = int(labels_frame.max()) if labels_frame.size else 0
    lut = np.zeros(max(max_id, int(mask_ids.max(initial=0))) + 1, dtype=np.int64)
    valid = (mask_ids > 0) & (mask_ids <= max_id)
    lut[mask_ids[valid]] = np.flatnonzero(valid) + 1
    labels = lut[labels_frame].astype(smallest_label_dtype(len(boxes)))
    return FrameDetections(boxes, scores, labels)
