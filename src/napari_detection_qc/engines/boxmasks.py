"""A model's raw instance output (boxes, scores, low-resolution mask probabilities) and how it
becomes a label image at any resolution.

Keeping masks as per-box probabilities until the very end lets tiles be merged and detections be
mapped back to the original pixel grid exactly, without resampling a label image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..detections import FrameDetections, smallest_label_dtype


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
    """
    height, width = shape
    labels = np.zeros(shape, dtype=smallest_label_dtype(len(boxes)))
    for index in np.argsort(scores, kind="stable"):
        y0, x0, y1, x1 = boxes[index]
        r0, c0 = max(int(math.floor(y0)), 0), max(int(math.floor(x0)), 0)
        r1, c1 = min(int(math.ceil(y1)), height), min(int(math.ceil(x1)), width)
        if r1 <= r0 or c1 <= c0:
            continue
        ys = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y0) / max(y1 - y0, 1e-6) * 2 - 1
        xs = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x0) / max(x1 - x0, 1e-6) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        sampled = F.grid_sample(mask_probs[index][None, None].float(), grid, align_corners=False)[0, 0]
        window = labels[r0:r1, c0:c1]
        window[(sampled >= 0.5).numpy()] = index + 1
    return labels
