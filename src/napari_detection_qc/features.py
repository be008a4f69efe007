"""The seed paper's per-frame features of a detector's own output (Li et al. 2025, section 2.3).

Eighteen candidates: the fraction of detections in each of 9 score bins [0.1, 0.2) ... [0.9, 1.0],
area ratio, mean/std score, mean/std fractional box size, mean/std Heywood circularity, count and
the box-area-weighted mean score. A frame with no detections gets 0 everywhere, never NaN.
Standard deviations are population std (ddof 0).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .detections import FrameDetections, as_boxes, as_scores

SCORE_BIN_NAMES = tuple(f"frac_score_0.{i}" for i in range(1, 10))

CANDIDATE_FEATURES = SCORE_BIN_NAMES + (
    "area_ratio",
    "mean_score",
    "std_score",
    "mean_size",
    "std_size",
    "mean_circularity",
    "std_circularity",
    "count",
    "image_confidence",
)

FEATURE_LABELS: dict[str, str] = {
    **{name: f"share of detections scoring {i / 10:.1f}-{(i + 1) / 10:.1f}" for i, name in enumerate(SCORE_BIN_NAMES[:-1], 1)},
    "frac_score_0.9": "share of detections scoring 0.9 or more",
    "area_ratio": "image area covered by boxes",
    "mean_score": "mean detection score",
    "std_score": "spread of detection scores",
    "mean_size": "mean box size (share of image)",
    "std_size": "spread of box sizes",
    "mean_circularity": "mean roundness of masks",
    "std_circularity": "spread of mask roundness",
    "count": "number of detections",
    "image_confidence": "area-weighted mean score",
}
"""What each feature means, in words a microscopist reads without the paper at hand (plots,
explanations, tables); ``feature_label`` falls back to the raw name."""


def feature_label(name: str) -> str:
    return FEATURE_LABELS.get(name, name)


PAPER_FEATURES = (
    "frac_score_0.9",
    "count",
    "area_ratio",
    "image_confidence",
    "mean_score",
    "mean_size",
    "std_score",
    "std_size",
)


def score_bin_index(scores: np.ndarray) -> np.ndarray:
    """Bin 0..8 for [0.1,0.2) ... [0.9,1.0]; -1 below 0.1. Edges are exact decimals: rounding
    ``10 * score`` to 9 places first keeps 0.3 in [0.3, 0.4) despite binary floating point."""
    tenths = np.floor(np.round(np.asarray(scores, dtype=np.float64) * 10.0, 9)).astype(np.int64)
    return np.where(tenths >= 1, np.minimum(tenths, 9) - 1, -1)


def clipped_box_areas(boxes: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Box areas in pixels after clipping to the image (a box partly outside counts its inside)."""
    height, width = image_shape
    y0 = np.clip(boxes[:, 0], 0, height)
    x0 = np.clip(boxes[:, 1], 0, width)
    y1 = np.clip(boxes[:, 2], 0, height)
    x1 = np.clip(boxes[:, 3], 0, width)
    return (y1 - y0) * (x1 - x0)


def heywood_circularity(mask: np.ndarray) -> float:
    """Perimeter of the mask's convex hull / circumference of the circle of the hull's area.

    As the authors computed it for their table (hull of the mask's pixel centres): a filled
    square gives exactly 2/sqrt(pi), a digital disc slightly above 1. Masks whose hull has no
    area (a single pixel, a line) give NaN and are left out of the mean and std.
    """
    points = np.argwhere(mask).astype(np.float64)
    if len(points) < 3:
        return float("nan")
    try:
        hull = ConvexHull(points)
    except QhullError:  # all pixel centres on one line
        return float("nan")
    if hull.volume <= 0:
        return float("nan")
    # in 2-D scipy's "area" is the hull's perimeter and "volume" its area
    return float(hull.area / (2.0 * np.sqrt(np.pi * hull.volume)))


def mask_circularities(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Heywood circularity of each id's mask (NaN where the id has no pixels)."""
    out = np.full(len(ids), np.nan)
    if len(ids) == 0 or labels.size == 0:
        return out
    max_id = int(labels.max())
    if max_id == 0:
        return out
    slices = ndimage.find_objects(labels.astype(np.int64, copy=False), max_label=max_id)
    for i, label_id in enumerate(ids):
        if 1 <= label_id <= max_id and slices[label_id - 1] is not None:
            out[i] = heywood_circularity(labels[slices[label_id - 1]] == label_id)
    return out


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 0.0
    return float(values.mean()), float(values.std())


def frame_features(
    boxes,
    scores,
    labels,
    image_shape: Sequence[int] | None = None,
    label_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """The 18 candidate features of one frame.

    ``labels`` is the (Y, X) instance image (used only for circularity; ``None`` leaves
    circularity at 0). Mask ``label_ids[i]`` belongs to box ``i`` (default ``i + 1``).
    ``image_shape`` defaults to ``labels.shape``. Detections scoring under 0.1 fall in no bin.
    """
    boxes = as_boxes(boxes)
    scores = as_scores(scores, len(boxes))
    if image_shape is None:
        if labels is None:
            raise ValueError("image_shape is needed when no labels image is given")
        image_shape = np.shape(labels)
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 2 or min(image_shape) <= 0:
        raise ValueError(f"image_shape must be a positive (Y, X), got {image_shape}")
    if labels is not None and np.shape(labels) != image_shape:
        raise ValueError(f"labels shape {np.shape(labels)} differs from image shape {image_shape}")

    count = len(scores)
    features = dict.fromkeys(CANDIDATE_FEATURES, 0.0)
    if count == 0:
        return features

    bins = score_bin_index(scores)
    bin_counts = np.bincount(bins[bins >= 0], minlength=9)
    for name, n in zip(SCORE_BIN_NAMES, bin_counts):
        features[name] = float(n / count)

    image_area = float(image_shape[0] * image_shape[1])
    areas = clipped_box_areas(boxes, image_shape)
    sizes = areas / image_area
    features["area_ratio"] = float(sizes.sum())
    features["mean_score"], features["std_score"] = float(scores.mean()), float(scores.std())
    features["mean_size"], features["std_size"] = float(sizes.mean()), float(sizes.std())
    total_area = areas.sum()
    features["image_confidence"] = float((areas * scores).sum() / total_area) if total_area > 0 else 0.0
    features["count"] = float(count)

    if labels is not None:
        ids = np.arange(1, count + 1) if label_ids is None else np.asarray(list(label_ids), np.int64)
        if len(ids) != count:
            raise ValueError(f"got {len(ids)} label ids for {count} boxes")
        circ = mask_circularities(np.asarray(labels), ids)
        features["mean_circularity"], features["std_circularity"] = _mean_std(circ)
    return features


def detections_features(detections: FrameDetections) -> dict[str, float]:
    """Features of a ``FrameDetections`` (mask id = box index + 1)."""
    return frame_features(detections.boxes, detections.scores, detections.labels)


def stack_features(stack) -> pd.DataFrame:
    """One row of the 18 features per frame (index ``frame``) of a ``StackDetections`` or of any
    sequence of ``FrameDetections``."""
    frames = getattr(stack, "frames", stack)
    rows = [detections_features(f) for f in frames]
    table = pd.DataFrame(rows, columns=list(CANDIDATE_FEATURES))
    table.index.name = "frame"
    return table
