"""A model's raw instance output (boxes, scores, low-resolution mask probabilities) and how it
becomes a label image at any resolution.

Keeping masks as per-box probabilities until the very end lets tiles be merged and detections be
mapped back to the original pixel grid exactly, without resampling a label image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_detection_qc.detections.records import FrameDetections, smallest_label_dtype


@dataclass
class BoxMasks:
    """``boxes`` (N, 4) as (y0, x0, y1, x1) pixels, ``scores`` (N,), ``mask_probs`` (N, M, M) float
    tensor over each box."""

    boxes: np.ndarray
    scores: np.ndarray
    mask_probs: torch.Tensor

    @classmethod
    def empty(cls, mask_size: int = 28) -> BoxMasks:
        return cls(np.zeros((0, 4)), np.zeros(0), torch.zeros((0, mask_size, mask_size)))

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, keep) -> BoxMasks:
        keep = np.asarray(keep)
        index = torch.from_numpy(np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64))
        return BoxMasks(self.boxes[keep].reshape(-1, 4), self.scores[keep], self.mask_probs[index])

    def shifted(self, dy: float, dx: float) -> BoxMasks:
        return BoxMasks(self.boxes + np.array([dy, dx, dy, dx]), self.scores, self.mask_probs)

    def scaled(self, factor_y: float, factor_x: float) -> BoxMasks:
        return BoxMasks(
            self.boxes * np.array([factor_y, factor_x, factor_y, factor_x]), self.scores, self.mask_probs
        )

    @staticmethod
    def concatenate(parts: list[BoxMasks]) -> BoxMasks:
        if not parts:
            return BoxMasks.empty()
        return BoxMasks(
            np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
            np.concatenate([p.scores for p in parts]),
            torch.cat([p.mask_probs for p in parts]),
        )

    def top(self, count: int) -> BoxMasks:
        """The ``count`` highest-scoring detections, best first."""
        return self.select(np.argsort(-self.scores, kind="stable")[:count])

    def to_detections(self, shape: tuple[int, int]) -> FrameDetections:
        """Clip boxes to the image and paint the masks into an instance label image of ``shape``."""
        boxes = self.boxes.astype(np.float64).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, shape[0])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, shape[1])
        scores = self.scores.astype(np.float64).clip(0, 1)
        labels = paste_masks_as_labels(boxes, scores, self.mask_probs, shape)
        return FrameDetections(boxes, scores, labels)


def paste_masks_as_labels(
    boxes: np.ndarray, scores: np.ndarray, mask_probs: torch.Tensor, shape
) -> np.ndarray:
    """Paint each box's mask (sampled at pixel centres, detectron2's paste) into an instance image.

    Only pixels whose square overlaps the box are painted, so every mask lies inside its box;
    lower scores are painted first so the most confident detection wins where masks overlap.
    Boxes of like size are sampled together (one call per size group, not per box: 0.31 s -> 0.02 s
    for the 1,285 detections of a 2048 px frame, the same labels).
    """
    height, width = shape
    labels = np.zeros(shape, dtype=smallest_label_dtype(len(boxes)))
    y0, x0, y1, x1 = (np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:, i] for i in range(4))
    r0, c0 = np.maximum(np.floor(y0), 0).astype(np.int64), np.maximum(np.floor(x0), 0).astype(np.int64)
    r1, c1 = np.minimum(np.ceil(y1), height).astype(np.int64), np.minimum(np.ceil(x1), width).astype(np.int64)
    rows, cols = r1 - r0, c1 - c0
    masks = {}
    for group in _like_sized(rows, cols):
        ys = _sample_points(r0[group], int(rows[group].max()), y0[group], y1[group])
        xs = _sample_points(c0[group], int(cols[group].max()), x0[group], x1[group])
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
        probabilities = mask_probs[torch.from_numpy(group)][:, None].float()
        sampled = F.grid_sample(probabilities, grid, align_corners=False)[:, 0]
        masks.update(zip(group.tolist(), (sampled >= 0.5).numpy()))
    for index in np.argsort(scores, kind="stable"):
        if index in masks:
            window = labels[r0[index] : r1[index], c0[index] : c1[index]]
            window[masks[index][: rows[index], : cols[index]]] = index + 1
    return labels


PASTE_SIZE_STEP = 16
"""Boxes whose pixel windows round up to the same multiple of this are sampled together."""
PASTE_BATCH_PIXELS = 4_000_000
"""Most window pixels sampled at once (bounds memory on frames with many big detections)."""


def _like_sized(rows: np.ndarray, cols: np.ndarray) -> list[np.ndarray]:
    """Indices of the non-empty windows, grouped by size and split to at most ``PASTE_BATCH_PIXELS``."""
    valid = np.flatnonzero((rows > 0) & (cols > 0))
    if not len(valid):
        return []
    sizes = np.ceil(np.stack([rows[valid], cols[valid]], axis=1) / PASTE_SIZE_STEP)
    _, size_group = np.unique(sizes, axis=0, return_inverse=True)
    groups = []
    for index in range(size_group.max() + 1):
        group = valid[size_group.ravel() == index]
        per_batch = max(1, PASTE_BATCH_PIXELS // int(rows[group].max() * cols[group].max()))
        groups += [group[i : i + per_batch] for i in range(0, len(group), per_batch)]
    return groups


def _sample_points(start: np.ndarray, count: int, low: np.ndarray, high: np.ndarray) -> torch.Tensor:
    """(N, count) grid_sample coordinates of pixel centres ``start + 0.5 ...`` along boxes ``low..high``."""
    centres = (
        torch.arange(count, dtype=torch.float32)[None, :]
        + torch.from_numpy(start.astype(np.float32))[:, None]
        + 0.5
    )
    span = torch.from_numpy(np.maximum(high - low, 1e-6).astype(np.float32))[:, None]
    return (centres - torch.from_numpy(low.astype(np.float32))[:, None]) / span * 2 - 1
