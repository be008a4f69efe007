"""The probability that each detection is a real object (``p_true``), calibrated on labelled frames.

A detector's score ranks detections but is not a probability: the bundled detector scores texture
0.95 on some frames and real objects 0.4 on others. ``p_true`` is a logistic calibration of the
score, its rank in the frame, and what the frame's detections say as a whole (how many, their
median, mean and lowest score, the share above 0.9: a frame where every detection is doubtful is
a frame whose detections are mostly wrong), fitted on detections whose truth is known (paper
matching, IoU >= 0.1). It needs nothing but the detections, so the store writes it with them and
the boxes layer carries it from the moment they appear. The bundled detector's second look (its
verifier) has already dropped the detections it found unlikely; ``p_true`` is calibrated on the
ones it kept. It is what mean diameters are weighted by, and what "show doubtful detections"
filters on. ``benchmarks/reported_numbers_study.py`` fits the shipped coefficients and measures
Brier score and reliability on images held out by source paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPSILON = 1e-4
INPUTS = (
    "logit_score",
    "logit_frame_median_score",
    "log_count",
    "frame_share_above_0.9",
    "logit_frame_mean_score",
    "score_rank",
    "logit_frame_min_score",
)
"""What the calibration sees of each detection: its score, its rank among the frame's detections
(0 = best), and the frame's detections as a whole."""


@dataclass(frozen=True)
class PTrueCalibration:
    """Logistic coefficients on ``INPUTS`` and an intercept; ``fitted_on`` says on what."""

    coefficients: tuple[float, ...]
    intercept: float
    fitted_on: str = ""

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """p_true of one frame's detections from their scores (empty in, empty out)."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if not len(scores):
            return np.zeros(0)
        z = self.intercept + detection_inputs(scores) @ np.asarray(self.coefficients)
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(
        cls, frames_scores: Sequence[np.ndarray], frames_true: Sequence[np.ndarray], fitted_on: str = ""
    ) -> PTrueCalibration:
        """Fit on labelled frames: each frame's detection scores and whether each was a true positive."""
        from sklearn.linear_model import LogisticRegression

        x = np.concatenate([detection_inputs(s) for s in frames_scores if len(s)])
        y = np.concatenate(
            [np.asarray(t, dtype=bool) for s, t in zip(frames_scores, frames_true, strict=True) if len(s)]
        )
        if len(np.unique(y)) < 2:
            raise ValueError("p_true needs labelled detections both true and false to fit on")
        model = LogisticRegression(C=10.0, max_iter=2000).fit(x, y)
        return cls(tuple(float(c) for c in model.coef_[0]), float(model.intercept_[0]), fitted_on)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPSILON, 1.0 - EPSILON)
    return np.log(p / (1.0 - p))


def detection_inputs(scores: np.ndarray) -> np.ndarray:
    """(N, len(INPUTS)) calibration inputs of one frame's detections (see ``INPUTS``)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(scores)
    if not n:
        return np.zeros((0, len(INPUTS)))
    rank = np.empty(n)
    rank[np.argsort(-scores, kind="stable")] = np.arange(n) / max(n - 1, 1)
    frame = [
        _logit(np.median(scores)),
        np.log1p(n),
        (scores >= 0.9).mean(),
        _logit(scores.mean()),
        None,
        _logit(scores.min()),
    ]
    return np.column_stack([_logit(scores), *(np.full(n, v) for v in frame[:4]), rank, np.full(n, frame[5])])


SHIPPED = PTrueCalibration(
    (0.63252, -0.37720, 0.26854, -0.99389, 1.04263, 1.50187, -0.66235),
    -2.22956,
    "11380 detections of 480 frames (bundled detector; 114 synthetic frames, 366 EMPS images)",
)
"""The calibration shipped for the bundled detector; fitted by ``reported_numbers_study.py
--print-calibration`` on its detections of synthetic frames and EMPS images."""


def detection_p_true(scores: np.ndarray, calibration: PTrueCalibration = SHIPPED) -> np.ndarray:
    """p_true of one frame's detections (the one function the store, the layers and the CLI use)."""
    return calibration.probabilities(scores)


def weighted_mean_diameter(diameters: np.ndarray, p_true: np.ndarray) -> float:
    """Mean diameter with each detection weighted by its probability of being real (NaN when no
    detection has weight): doubtful detections, often texture of another size, count less."""
    diameters = np.asarray(diameters, dtype=np.float64)
    weights = np.asarray(p_true, dtype=np.float64)
    total = weights.sum()
    return float((diameters * weights).sum() / total) if len(diameters) and total > 0 else float("nan")
