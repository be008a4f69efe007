"""Per-frame predicted quality of a stack's detections, and true quality against ground truth.

These are the numbers the quality and training widgets show; scripts get the same numbers by
calling these functions on the same layers' data.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from napari_detection_qc.detections.matching import PAPER_IOU_THRESHOLD, boxes_from_labels, match_frame
from napari_detection_qc.detections.records import StackDetections
from napari_detection_qc.quality.features import stack_features
from napari_detection_qc.quality.forest import DERIVED_FEATURES, QualityForest
from napari_detection_qc.quality.p_true import detection_p_true, weighted_mean_diameter
from napari_detection_qc.quality.signals import stack_signals

QUALITY_COLUMNS = (
    "frame",
    "count",
    "f1",
    "f1_low",
    "f1_high",
    "precision",
    "precision_low",
    "precision_high",
    "recall",
    "recall_low",
    "recall_high",
    "in_domain",
)
TRUE_COLUMNS = ("frame", "n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1")


def quality_table(features: pd.DataFrame, forest: QualityForest, embeddings=None) -> pd.DataFrame:
    """Predicted F1/precision/recall with intervals and the domain flag, one row per frame of a
    feature table (index = frame; with the detector's TTA signals as columns when stored) and the
    frames' backbone embeddings (``stack_signals``); the viewer and the CLI both go through here."""
    predicted = forest.predict(features, embeddings)
    table = predicted.assign(
        frame=np.arange(len(features)), count=features["count"].to_numpy().astype(np.int64)
    )
    return table.loc[:, list(QUALITY_COLUMNS)].reset_index(drop=True)


def predicted_quality(
    stack: StackDetections, forest: QualityForest, signals: list[dict] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(quality table with one row per frame, the frames' 18 features, stored signals and the
    values the forest derives from them, e.g. novelty: what explanations need).
    ``signals``: per-frame signal dicts when the frames do not carry them (e.g. read back from
    layer metadata with ``signals_from_records``)."""
    if signals is not None and len(signals) != len(stack):
        raise ValueError(f"got signals of {len(signals)} frames for a stack of {len(stack)}")
    signal_table, embeddings = stack_signals(signals if signals is not None else stack)
    features = stack_features(stack).join(signal_table)
    table = quality_table(features, forest, embeddings)
    derived = [name for name in forest.features if name in DERIVED_FEATURES]
    if derived:
        features = features.join(forest.model_inputs(features, embeddings).loc[:, derived])
    return table, features


def ground_truth_frames(ground_truth: np.ndarray, n_frames: int) -> np.ndarray:
    """A (T, Y, X) view of a ground-truth Labels array given as (Y, X) or (T, Y, X)."""
    ground_truth = np.asarray(ground_truth)
    if ground_truth.ndim == 2:
        ground_truth = ground_truth[None]
    if ground_truth.ndim != 3 or len(ground_truth) != n_frames:
        raise ValueError(
            f"ground truth of shape {ground_truth.shape} does not match detections of {n_frames} frame(s)"
        )
    if not np.issubdtype(ground_truth.dtype, np.integer):
        raise ValueError(f"ground truth must be an integer Labels layer, got {ground_truth.dtype}")
    return ground_truth


def check_iou_threshold(iou_threshold: float) -> float:
    """A match threshold in (0, 1]: at 0 every pair of boxes, even disjoint ones, would match."""
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"the IoU threshold must lie in (0, 1], got {iou_threshold}")
    return float(iou_threshold)


def boxes_true_quality(
    boxes_per_frame: Sequence[np.ndarray],
    image_shape: Sequence[int],
    ground_truth: np.ndarray,
    frames: Iterable[int] | None = None,
    iou_threshold: float = PAPER_IOU_THRESHOLD,
) -> pd.DataFrame:
    """The paper's TP/FP/FN, precision, recall and F1 of the chosen frames (default: all), from
    each frame's predicted boxes; the one implementation behind the viewer and the CLI."""
    iou_threshold = check_iou_threshold(iou_threshold)
    truth = ground_truth_frames(ground_truth, len(boxes_per_frame))
    if truth.shape[1:] != tuple(image_shape):
        raise ValueError(f"ground truth frames are {truth.shape[1:]} but detections are {tuple(image_shape)}")
    frames = range(len(boxes_per_frame)) if frames is None else sorted(int(t) for t in frames)
    rows = []
    for t in frames:
        true_boxes, _ = boxes_from_labels(truth[t])
        predicted = boxes_per_frame[t]
        result = match_frame(predicted, true_boxes, iou_threshold)
        rows.append({"frame": t, "n_true": len(true_boxes), "n_pred": len(predicted), **result._asdict()})
    return pd.DataFrame(rows, columns=list(TRUE_COLUMNS))


def true_quality(
    stack: StackDetections,
    ground_truth: np.ndarray,
    frames: Iterable[int] | None = None,
    iou_threshold: float = PAPER_IOU_THRESHOLD,
) -> pd.DataFrame:
    """The paper's TP/FP/FN, precision, recall and F1 of the chosen frames (default: all)."""
    return boxes_true_quality(
        [frame.boxes for frame in stack.frames], stack.image_shape, ground_truth, frames, iou_threshold
    )


def physical_readouts(stack: StackDetections, pixel_size_nm: float) -> pd.DataFrame:
    """Per frame, where the pixel size is known: cavity count, number density per µm² of frame,
    mean equivalent-circle diameter (nm) of the masks, and that mean weighted by each detection's
    probability of being real (``p_true``; doubtful detections, often texture of another size,
    count less)."""
    if not pixel_size_nm or pixel_size_nm <= 0:
        raise ValueError("a positive pixel size (nm) is needed for physical read-outs")
    height, width = stack.image_shape
    frame_area_um2 = height * width * (pixel_size_nm / 1000.0) ** 2
    rows = []
    for t, frame in enumerate(stack.frames):
        areas = np.bincount(frame.labels.ravel(), minlength=frame.count + 1)[1 : frame.count + 1]
        present = areas > 0
        diameters = 2.0 * np.sqrt(areas[present] / np.pi) * pixel_size_nm
        weighted = weighted_mean_diameter(diameters, detection_p_true(frame.scores)[present])
        rows.append(
            {
                "frame": t,
                "count": frame.count,
                "density_per_um2": frame.count / frame_area_um2,
                "mean_diameter_nm": float(diameters.mean()) if diameters.size else 0.0,
                "p_true_mean_diameter_nm": weighted if diameters.size else 0.0,
            }
        )
    return pd.DataFrame(rows)
