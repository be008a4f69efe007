"""Work at any magnification: resample frames so objects fall in the size range the model was
trained on, and estimate that size from the frame itself when the user does not give it.

A model that knows its trained size carries ``input.object_size`` in its header:
``{"target_px": 22, "min_factor": 0.0625, "max_factor": 1.5}``. A frame whose typical object is
``d`` px across is resampled by ``clip(target_px / d, min_factor, max_factor)``.

The automatic estimate asks the model itself (as cellpose's size model does, without a second
model): a central view of the frame is detected at a ladder of factors; among the factors with
confident, comfortably sized detections (confirmed at a neighbouring factor), the one the model's
learned size chooser is surest of (``size_chooser.py``; without one, the one whose detections
weigh most) wins, and the median size of its detections, divided by the factor, is the frame's
typical diameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_detection_qc.detections.matching import box_iou_matrix
from napari_detection_qc.engines.boxmasks import BoxMasks
from napari_detection_qc.engines.cpu_parallel import map_on_cores
from napari_detection_qc.engines.size_chooser import SizeChooser

ESTIMATE_REVISION = 4
"""Bumped when the automatic size (``ladder_detections``, ``size_from_ladder``) changes what it
returns (benchmark caches key on it)."""
ESTIMATE_VIEW_PX = 384
"""Side of the (resampled) view detected at each factor of the ladder."""
CONFIDENT_SCORE = 0.5
COMFORTABLE_PX = (8.0, 72.0)
"""Detections this size (after resampling) are where the model is reliable."""
CONFIRMING_SCORE = 0.3
ESTIMATE_MIN_SCORE = 0.1
"""The estimate's detections go down to this score, whatever the detector's own threshold."""
MIN_VIEW_PX = 112
"""In a view of the frame smaller than this, a blotch or two of background fill it and look like
big objects: there, fewer than ``MIN_SMALL_VIEW_OBJECTS`` objects weigh only ``FEW_OBJECTS_WEIGHT``
of their density. Frames whose few objects span a third of the frame or more are still sized there
when the larger views see little. Measured (estimate within 1.6x of the true median diameter):
EMPS 63% -> 70% of images; 1,000 synthetic study frames unchanged at 96%, with one more frame off by
more than 3x (its only detection, a blotch). A fifth of the weight for fewer than three objects
reached 77% on EMPS but sized 15 of 643 study frames to a blotch instead of 7."""
MIN_SMALL_VIEW_OBJECTS = 8
FEW_OBJECTS_WEIGHT = 0.1
MIN_CONFIRMING_VIEW_PX = 24
"""Views down to this size are detected to confirm the neighbouring factor's objects."""

Window = tuple[int, int, int, int]
"""(y0, y1, x0, x1) pixel bounds."""
Rung = tuple[float, np.ndarray, np.ndarray, int]
"""One factor of the size estimate's ladder: (factor, native boxes, scores, native view area)."""
DetectBoxes = Callable[..., list[BoxMasks]]
"""``detect_boxes(images, cores=None)``: raw detections of each image; ``cores`` (one window per
image) lets it skip work on detections whose box centre lies outside the window."""


@dataclass(frozen=True)
class ScaleRule:
    """The object size a model was trained at, and how far a frame may be resampled."""

    target_px: float
    min_factor: float
    max_factor: float

    @classmethod
    def from_input_header(cls, input_header: dict) -> ScaleRule | None:
        spec = input_header.get("object_size")
        if spec is None:
            return None
        return cls(float(spec["target_px"]), float(spec["min_factor"]), float(spec["max_factor"]))

    def to_header(self) -> dict:
        return {"target_px": self.target_px, "min_factor": self.min_factor, "max_factor": self.max_factor}

    def factor_for(self, diameter_px: float | None) -> float:
        """Resampling factor for a typical object diameter (native pixels); 1 when unknown."""
        if diameter_px is None:
            return float(np.clip(1.0, self.min_factor, self.max_factor))
        if not np.isfinite(diameter_px) or diameter_px <= 0:
            raise ValueError(f"the object size must be a positive number of pixels, got {diameter_px}")
        return float(np.clip(self.target_px / diameter_px, self.min_factor, self.max_factor))


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resampling of a float32 frame by ``factor``."""
    if factor == 1.0:
        return image
    height, width = image.shape
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)[
        0, 0
    ].numpy()


def box_diameters(boxes: np.ndarray) -> np.ndarray:
    """Geometric mean of box height and width: the diameter of a round object."""
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def central_view(image: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The central ``side`` x ``side`` part of a frame (all of it where smaller) and its origin."""
    height, width = image.shape
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return image[top : top + side, left : left + side], (top, left)


def ladder_detections(
    image: np.ndarray, detect_boxes: DetectBoxes, rule: ScaleRule, workers: int = 1
) -> list[Rung]:
    """(factor, native boxes, scores, native view area) from 2 x max_factor down to min_factor;
    the views are detected ``workers`` at a time (``cpu_parallel.py``)."""
    views = []
    factor = 2 * rule.max_factor
    while factor >= rule.min_factor * 0.999:
        view, origin = central_view(image, int(np.ceil(ESTIMATE_VIEW_PX / factor)))
        if min(view.shape) * factor < MIN_CONFIRMING_VIEW_PX and factor < 1:
            break  # the whole frame is already smaller than a useful view
        views.append((factor, view, origin))
        factor /= 2

    def detect(entry):
        factor, view, (top, left) = entry
        scaled = resample(view, factor)
        found = detect_boxes([scaled])[0]
        native = found.boxes * np.array(
            [view.shape[0] / scaled.shape[0], view.shape[1] / scaled.shape[1]] * 2
        )
        return factor, native + np.array([top, left, top, left]), found.scores, view.size

    return map_on_cores(detect, views, workers)


def _found_again(boxes: np.ndarray, other: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
    """Which ``boxes`` overlap some box of ``other`` with IoU >= ``min_iou`` (native coordinates)."""
    return (box_iou_matrix(boxes, other) >= min_iou).any(axis=1)


@dataclass(frozen=True)
class RungEvidence:
    """What one factor of the ladder says about a frame's object size."""

    weight: float
    """Score x diameter of its confirmed detections per native area (the hand-set rule's weight)."""
    few: bool
    """Fewer than ``MIN_SMALL_VIEW_OBJECTS`` confirmed objects in a view under ``MIN_VIEW_PX``."""
    diameter: float
    """Its estimate: the median native diameter of its confirmed detections."""
    features: np.ndarray
    """What a learned chooser (``size_chooser.py``) sees: log2 factor, log view side, log(1 + count),
    log weight, mean score, log median resampled diameter, share of kept detections confirmed, log
    coverage, few, and log weight relative to the ladder's largest."""


def rung_evidence(ladder: list[Rung], rule: ScaleRule) -> list[RungEvidence]:
    """The evidence of each factor (up to ``rule.max_factor``) with confirmed detections.

    A real object is seen at neighbouring factors of the ladder (the model's comfortable size
    band spans three octaves), while texture that happens to look like a small cavity at one
    magnification is not; so only confident, comfortably sized detections that the next factor
    up or down also finds count. The rung above ``rule.max_factor`` only confirms its neighbour.
    """
    found = []
    for index, (factor, boxes, scores, area) in enumerate(ladder):
        if factor > rule.max_factor:
            continue
        view_px = np.sqrt(area) * factor
        diameters = box_diameters(boxes) * factor
        largest = min(COMFORTABLE_PX[1], view_px)
        keep = (scores >= CONFIDENT_SCORE) & (diameters >= COMFORTABLE_PX[0]) & (diameters <= largest)
        neighbours = [
            ladder[i][1][ladder[i][2] >= CONFIRMING_SCORE]
            for i in (index - 1, index + 1)
            if 0 <= i < len(ladder)
        ]
        if not neighbours:
            continue
        confirmed = keep & np.logical_or.reduce([_found_again(boxes, other) for other in neighbours])
        count = int(confirmed.sum())
        if not count:
            continue
        native = box_diameters(boxes[confirmed])
        weight = float((scores[confirmed] * native).sum()) / area
        median = float(np.median(diameters[confirmed]))
        few = bool(view_px < MIN_VIEW_PX and count < MIN_SMALL_VIEW_OBJECTS)
        features = [
            np.log2(factor),
            np.log(view_px),
            np.log1p(count),
            np.log(weight),
            float(scores[confirmed].mean()),
            np.log(median),
            count / int(keep.sum()),
            np.log(float((native**2).sum()) / area),
            float(few),
        ]
        found.append((weight, few, median / factor, features))
    if not found:
        return []
    strongest = np.log(max(weight for weight, *_ in found))
    return [
        RungEvidence(weight, few, diameter, np.array([*features, np.log(weight) - strongest]))
        for weight, few, diameter, features in found
    ]


def size_from_ladder(
    ladder: list[Rung],
    rule: ScaleRule,
    few_objects_weight: float = FEW_OBJECTS_WEIGHT,
    chooser: SizeChooser | None = None,
) -> float | None:
    """The typical object diameter (native px) a frame's ``ladder_detections`` point to, or None
    when the model confirms nothing at any factor.

    With a ``chooser`` (a model's learned one, ``size_chooser.py``) the rung it is surest of wins.
    Without, the rung with the largest weight wins (weighting by diameter balances many small
    spurious detections against a few big ones; measured on held-out synthetic frames against
    counting, area and square-root weights, it was the most often within 1.6x of the truth), few
    objects in a small view weighing ``few_objects_weight`` of theirs (``MIN_VIEW_PX``;
    ``benchmarks/bench_size_rules.py`` scores these weights and the chooser).
    """
    rungs = rung_evidence(ladder, rule)
    if not rungs:
        return None
    if chooser is not None:
        best = int(np.argmax(chooser.scores(np.array([rung.features for rung in rungs]))))
    else:
        best = int(np.argmax([rung.weight * (few_objects_weight if rung.few else 1.0) for rung in rungs]))
    return rungs[best].diameter
