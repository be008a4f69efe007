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

from napari_detection_qc.detections.records import as_boxes, as_scores

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
    **{
        name: f"share of detections scoring {i / 10:.1f}-{(i + 1) / 10:.1f}"
        for i, name in enumerate(SCORE_BIN_NAMES[:-1], 1)
    },
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


BOX_COLUMNS = ("y_min", "x_min", "y_max", "x_max")

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


def _per_frame_mean_std(
    frames: np.ndarray, values: np.ndarray, n_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mean and population std (two-pass, as numpy's), 0 for frames without values."""
    counts = np.bincount(frames, minlength=n_frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, np.bincount(frames, values, n_frames) / counts, 0.0)
        deviation = values - mean[frames]
        variance = np.where(counts > 0, np.bincount(frames, deviation * deviation, n_frames) / counts, 0.0)
    return mean, np.sqrt(variance)


def features_of_detections(
    frames: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    circularity: np.ndarray,
    n_frames: int,
    image_shape: Sequence[int],
) -> pd.DataFrame:
    """The 18 candidate features of every frame at once, the one implementation behind the viewer
    and the CLI. One entry per detection: its frame index, box, score and mask circularity (NaN
    where the mask has no hull; such masks are left out of the circularity mean and std).
    Vectorized with ``np.bincount``, so long series score at thousands of frames per second."""
    frames = np.asarray(frames, dtype=np.int64)
    if len(frames) and (frames.min() < 0 or frames.max() >= n_frames):
        raise ValueError(f"detections refer to frames outside 0..{n_frames - 1}")
    scores = np.asarray(scores, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    circularity = np.asarray(circularity, dtype=np.float64)
    image_area = float(image_shape[0] * image_shape[1])

    counts = np.bincount(frames, minlength=n_frames)
    out = pd.DataFrame(0.0, index=pd.RangeIndex(n_frames, name="frame"), columns=list(CANDIDATE_FEATURES))

    bins = score_bin_index(scores)
    binned = bins >= 0
    bin_counts = np.bincount(frames[binned] * 9 + bins[binned], minlength=9 * n_frames).reshape(n_frames, 9)
    out[list(SCORE_BIN_NAMES)] = bin_counts / np.maximum(counts, 1)[:, None]  # empty frames stay 0

    areas = clipped_box_areas(boxes, image_shape)
    sizes = areas / image_area
    out["area_ratio"] = np.bincount(frames, sizes, n_frames)
    out["mean_score"], out["std_score"] = _per_frame_mean_std(frames, scores, n_frames)
    out["mean_size"], out["std_size"] = _per_frame_mean_std(frames, sizes, n_frames)
    finite = np.isfinite(circularity)
    out["mean_circularity"], out["std_circularity"] = _per_frame_mean_std(
        frames[finite], circularity[finite], n_frames
    )
    out["count"] = counts.astype(np.float64)
    total_area = np.bincount(frames, areas, n_frames)
    weighted = np.bincount(frames, areas * scores, n_frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["image_confidence"] = np.where(total_area > 0, weighted / total_area, 0.0)
    return out


def table_features(detections: pd.DataFrame, n_frames: int, image_shape: Sequence[int]) -> pd.DataFrame:
    """Features of every frame from a detections table (columns ``frame``, ``y_min``, ``x_min``,
    ``y_max``, ``x_max``, ``score``, ``circularity``, as the batch store's detections.csv)."""
    return features_of_detections(
        detections["frame"].to_numpy(),
        detections[list(BOX_COLUMNS)].to_numpy(),
        detections["score"].to_numpy(),
        detections["circularity"].to_numpy(),
        n_frames,
        image_shape,
    )


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
    circularity = np.full(count, np.nan)
    if labels is not None:
        ids = np.arange(1, count + 1) if label_ids is None else np.asarray(list(label_ids), np.int64)
        if len(ids) != count:
            raise ValueError(f"got {len(ids)} label ids for {count} boxes")
        circularity = mask_circularities(np.asarray(labels), ids)
    table = features_of_detections(np.zeros(count, np.int64), boxes, scores, circularity, 1, image_shape)
    return {name: float(value) for name, value in table.iloc[0].items()}


def detections_features(detections) -> dict[str, float]:
    """Features of a ``FrameDetections`` (mask id = box index + 1)."""
    return frame_features(detections.boxes, detections.scores, detections.labels)


def stack_features(stack) -> pd.DataFrame:
    """One row of the 18 features per frame (index ``frame``) of a ``StackDetections`` or of any
    sequence of ``FrameDetections`` of one shape."""
    frames = list(getattr(stack, "frames", stack))
    if not frames:
        return pd.DataFrame(
            columns=list(CANDIDATE_FEATURES), index=pd.RangeIndex(0, name="frame"), dtype=float
        )
    return features_of_detections(
        np.repeat(np.arange(len(frames)), [f.count for f in frames]),
        np.concatenate([f.boxes for f in frames]),
        np.concatenate([f.scores for f in frames]),
        np.concatenate([mask_circularities(f.labels, np.arange(1, f.count + 1)) for f in frames]),
        len(frames),
        frames[0].labels.shape,
    )
