"""A second look at each detection: does its neighbourhood look like an object, or like background?

The compact default detector scores some background structures as high as real cavities (dark,
smooth blotches the size of the frame's objects; bright regions between bend contours). Those
are most of its false detections, and on a frame without any object one of them makes F1 0.
Retraining with such frames as negatives cost the over-focus cavities (dark interiors) more than
it gained (benchmarks/RESULTS.md). What tells them apart is the intensity profile around the box
(a step or a rim at the box edge against a smooth swell), the mask's shape and the frame context
(how many detections, how sure): ``detection_evidence`` measures that on each detection's
surroundings sampled to a fixed grid, and a small gradient-boosted classifier (``boosted_trees.py``,
in the detector header's ``verifier`` entry, fitted by ``benchmarks/bench_verifier.py --write``)
drops detections it finds unlikely to be true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from napari_detection_qc.engines.boosted_trees import BoostedTrees

CONTEXT = 2.2
"""The sampled window reaches this many box half-sides from the centre."""
GRID = 22
"""Samples across the window (the box spans the middle 10)."""
RINGS = (0.5, 0.8, 1.0, 1.25, 1.6, CONTEXT)
"""Square rings (in box half-sides) whose mean intensities form the profile."""
FRAME_SAMPLE = 512
"""Frame statistics (median, spread) come from at most this many rows and columns, evenly strided."""
EVIDENCE = (
    "score",
    "log_size",
    "log_aspect",
    "log_frame_share",
    "log_count",
    "frame_median_score",
    "score_rank",
    "log_relative_size",
    "mask_fill",
    "mask_certainty",
    "centre",
    "inner",
    "rim",
    "outside_rim",
    "halo",
    "surround_level",
    "inside_spread",
    "edge_gradient",
    "edge_vs_surround_gradient",
)


def detection_evidence(
    image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, mask_probs: torch.Tensor, target_px: float
) -> np.ndarray:
    """(N, len(EVIDENCE)) numbers about each detection of a 0..255 frame at the detector's scale:
    its score, size and shape, its mask, the mean intensity in square rings from its centre to
    2.2 box half-sides (minus the outermost, over the frame's robust spread), the gradient at its
    edge, and the frame's detections as a whole."""
    count = len(scores)
    if count == 0:
        return np.zeros((0, len(EVIDENCE)))
    height, width = image.shape
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    median, spread = frame_median_and_spread(image)
    side_y = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    side_x = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    crops = box_surroundings(image, boxes, CONTEXT, GRID).astype(np.float64)
    radius = _ring_radius()
    ring_means = np.stack(
        [
            crops[:, (radius >= low) & (radius < high)].mean(axis=1)
            for low, high in zip((0.0, *RINGS[:-1]), RINGS)
        ],
        axis=1,
    )
    surround = ring_means[:, -1]
    inside = radius < 1.0
    gradient = np.hypot(*np.gradient(crops, axis=(1, 2)))
    edge_band = (radius >= 0.8) & (radius < 1.25)
    edge_gradient = gradient[:, edge_band].mean(axis=1)
    surround_gradient = gradient[:, radius >= 1.25].mean(axis=1)
    size = np.sqrt(side_y * side_x)
    rank = np.empty(count)
    rank[np.argsort(-scores, kind="stable")] = np.arange(count) / max(count - 1, 1)
    masks = mask_probs.reshape(count, -1).float().numpy()
    return np.column_stack(
        [
            scores,
            np.log(size / target_px),
            np.log(side_y / side_x),
            np.log(size / np.sqrt(height * width)),
            np.full(count, np.log1p(count)),
            np.full(count, np.median(scores)),
            rank,
            np.log(size / np.median(size)),
            (masks >= 0.5).mean(axis=1),
            (np.abs(masks - 0.5) * 2).mean(axis=1),
            (ring_means[:, :-1] - surround[:, None]) / spread,
            (surround - median) / spread,
            crops[:, inside].std(axis=1) / (crops[:, ~inside].std(axis=1) + 1e-3),
            edge_gradient / spread,
            edge_gradient / (surround_gradient + 1e-3),
        ]
    )


def box_surroundings(image: np.ndarray, boxes: np.ndarray, context: float, grid: int) -> np.ndarray:
    """(N, grid, grid) float32 samples of a frame around each (y0, x0, y1, x1) box, reaching
    ``context`` box half-sides from its centre (a box side counts as at least 1 px)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    half_y = context * np.maximum(boxes[:, 2] - boxes[:, 0], 1.0) / 2
    half_x = context * np.maximum(boxes[:, 3] - boxes[:, 1], 1.0) / 2
    centre_y, centre_x = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    windows = np.stack(
        [np.zeros(len(boxes)), centre_x - half_x, centre_y - half_y, centre_x + half_x, centre_y + half_y],
        axis=1,
    )
    return roi_align(
        torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None],
        torch.from_numpy(windows).float(),
        (grid, grid),
        sampling_ratio=2,
        aligned=True,
    )[:, 0].numpy()


def frame_median_and_spread(image: np.ndarray) -> tuple[float, float]:
    """A frame's median and robust spread (1.4826 x the median absolute deviation, never 0), from
    at most ``FRAME_SAMPLE`` evenly strided rows and columns."""
    height, width = image.shape
    sample = image[:: max(1, height // FRAME_SAMPLE), :: max(1, width // FRAME_SAMPLE)]
    median = float(np.median(sample))
    return median, 1.4826 * float(np.median(np.abs(sample - median))) + 1e-3


def _ring_radius() -> np.ndarray:
    """Each grid sample's square radius in box half-sides (0 at the centre, ``CONTEXT`` at the rim)."""
    centres = (np.arange(GRID) + 0.5) / GRID * 2 * CONTEXT - CONTEXT
    return np.maximum(np.abs(centres)[:, None], np.abs(centres)[None, :])


TREE_DEPTH = 3
"""Depth of the verifier's 200 trees. Depth 5 was measured and not shipped: held out
(``bench_verifier.py``, candidates from 0.3, each at its chosen cut) it lifted frames without
cavities from F1 0.44 to 0.59 and the synthetic sources' mean from 0.879 to 0.892 (EMPS 0.771 ->
0.772, speckle_jpeg 0.824 -> 0.825), but the quality forest refit on its detections missed issue
16's targets (held-out synthetic failing frames caught 1.00 -> 0.79, random-CV F1 MAE 0.043 ->
0.052; ``signals_study.py``)."""

KEEP_BEST_ABOVE = 0.1
"""Where the verifier would drop every detection of a frame, the most probable one stays if its
probability is at least this: a frame that holds objects and gets no detection at all is the
failure users notice first. On frames the verifier never saw (``bench_verifier.py``), EMPS images
(real; every one holds particles) left without any detection, with candidates from score 0.3:
none without a verifier, 17 with one allowed to drop everything, 9 with this rule.
Measured when it was chosen (candidates from 0.65): 2, 14 and 10; the price was half
the gain on frames without cavities (F1 0.05 -> 0.46 instead of 0.70)."""


def kept_detections(probability: np.ndarray, min_probability: float, keep_best_above: float) -> np.ndarray:
    """Which of one frame's detections stay, from their probabilities (see ``KEEP_BEST_ABOVE``)."""
    kept = probability >= min_probability
    if len(probability) and not kept.any() and probability.max() >= keep_best_above:
        kept[int(np.argmax(probability))] = True
    return kept


@dataclass(frozen=True)
class DetectionVerifier(BoostedTrees):
    """Probability that a detection is true from its ``detection_evidence``; detections below
    ``min_probability`` are dropped, except a frame's most probable one when it would otherwise
    lose all and that one reaches ``keep_best_above``."""

    min_probability: float = 0.5
    keep_best_above: float = KEEP_BEST_ABOVE

    def keep(self, evidence: np.ndarray) -> np.ndarray:
        """Which of one frame's detections stay."""
        if not len(evidence):
            return np.zeros(0, dtype=bool)
        return kept_detections(self.probabilities(evidence), self.min_probability, self.keep_best_above)

    @classmethod
    def fit_evidence(
        cls,
        evidence: np.ndarray,
        true: np.ndarray,
        fitted_on: dict[str, Any],
        min_probability: float,
        weight: np.ndarray | None = None,
        seed: int = 0,
    ) -> DetectionVerifier:
        """Fit on detections' evidence and whether each was a true positive (``weight``: per detection)."""
        return cls.fit(
            evidence,
            true,
            dict(fitted_on, detections=len(true)),
            depth=TREE_DEPTH,
            trees=200,
            seed=seed,
            weight=weight,
            min_probability=min_probability,
        )

    def to_header(self) -> dict[str, Any]:
        return {
            **super().to_header(),
            "min_probability": self.min_probability,
            "keep_best_above": self.keep_best_above,
            "evidence": list(EVIDENCE),
        }

    @classmethod
    def from_model_header(cls, header: dict) -> DetectionVerifier | None:
        """The verifier in a model header's ``verifier`` entry; None when it has none."""
        spec = header.get("verifier")
        if spec is None:
            return None
        if list(spec.get("evidence", ())) != list(EVIDENCE):
            raise ValueError("the detection verifier was fitted on other evidence than this version measures")
        return cls.from_header(
            spec,
            min_probability=float(spec["min_probability"]),
            keep_best_above=float(spec["keep_best_above"]),
        )
