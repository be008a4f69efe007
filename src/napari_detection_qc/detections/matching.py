"""True detection quality of a frame against ground truth, with the seed paper's greedy matching.

For each ground-truth box in turn, the not-yet-used predicted box with the highest IoU is taken;
if that IoU is at least the threshold (0.1 in the paper) it is a true positive and that prediction
is used up. FP = predictions - TP, FN = ground truth - TP, F1 = 2TP / (2TP + FP + FN).
Empty cases: no ground truth and no predictions -> P = R = F1 = 1; one side empty -> 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from napari_detection_qc.detections.records import as_boxes
from napari_detection_qc.paper import PAPER_IOU_THRESHOLD  # noqa: F401  (re-exported: the matching threshold)


class MatchResult(NamedTuple):
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


def box_iou_matrix(boxes_a, boxes_b) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4) -> (N, M), vectorized."""
    a = as_boxes(boxes_a)
    b = as_boxes(boxes_b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def greedy_matches(iou: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The paper's matching over a (ground truth, prediction) IoU matrix: which predictions are
    true positives."""
    n_true, n_pred = iou.shape
    matched = np.zeros(n_pred, dtype=bool)
    if n_true == 0 or n_pred == 0:
        return matched
    for row in iou:
        candidates = np.where(matched, -1.0, row)
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            matched[best] = True
    return matched


def scores_from_counts(tp: int, n_pred: int, n_true: int) -> MatchResult:
    """Precision, recall and F1 from counts, with the documented empty cases."""
    fp, fn = n_pred - tp, n_true - tp
    if n_pred == 0 and n_true == 0:
        return MatchResult(0, 0, 0, 1.0, 1.0, 1.0)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return MatchResult(int(tp), int(fp), int(fn), float(precision), float(recall), float(f1))


def match_frame(pred_boxes, true_boxes, iou_threshold: float = PAPER_IOU_THRESHOLD) -> MatchResult:
    """TP, FP, FN, precision, recall and F1 of one frame's predictions against ground truth."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
    pred = as_boxes(pred_boxes)
    true = as_boxes(true_boxes)
    tp = int(greedy_matches(box_iou_matrix(true, pred), iou_threshold).sum())
    return scores_from_counts(tp, len(pred), len(true))


def boxes_from_labels(labels_frame) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[y_min, x_min, y_max, x_max]`` (max exclusive, pixel edges) of every id present in a
    (Y, X) ground-truth Labels frame, and those ids (ascending)."""
    labels_frame = np.asarray(labels_frame)
    if labels_frame.ndim != 2:
        raise ValueError(f"a ground-truth frame must be (Y, X), got {labels_frame.ndim} dims")
    if not np.issubdtype(labels_frame.dtype, np.integer):
        raise ValueError(f"ground truth must be an integer Labels image, got {labels_frame.dtype}")
    if labels_frame.size and labels_frame.min() < 0:
        raise ValueError("ground-truth ids must be >= 0")
    max_id = int(labels_frame.max()) if labels_frame.size else 0
    if max_id == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    slices = ndimage.find_objects(labels_frame.astype(np.int64, copy=False), max_label=max_id)
    ids = np.array([i + 1 for i, s in enumerate(slices) if s is not None], dtype=np.int64)
    boxes = np.array(
        [[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices if s is not None],
        dtype=np.float64,
    )
    return boxes, ids
