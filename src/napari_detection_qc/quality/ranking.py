"""Which frame to label next: frames ordered by how much correcting them is expected to help.

A frame is worth labelling when the detector probably fails on it (low predicted F1: its
correction teaches the detector the most, and its true F1 teaches the forest where it is weak),
when the forest does not know (a wide interval), and when it lies outside the forest's experience
(out of domain). Labelling five frames that all look alike teaches little more than one, so the
order is greedy: each next frame's value is discounted by how close it lies to the frames already
chosen, in the frames' standardised features (or the detector's embeddings where stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from napari_detection_qc.quality.features import PAPER_FEATURES

RANK_COLUMNS = ("source", "frame", "reason")
WIDTH_WEIGHT = 0.5
"""Value of a frame's F1 interval width, against 1 for its predicted failure (1 - F1)."""
OUT_OF_DOMAIN_BONUS = 0.5
"""Added for a frame outside the forest's experience."""
FAILING_F1 = 0.5
SPREAD_RADIUS = 0.25
"""A frame closer than this share of the median distance between frames to one already chosen
has its value discounted in proportion. On EMPS's 366 images (40 failing; ``reported_numbers_study.py``,
chosen on those images, not held out) a quarter put 9 failing images among the first 20, the whole
median 3 (it discounts nearly every frame); ordering by predicted F1 alone puts 16 there, all
alike: the spread trades some failures for variety, which is what a refit learns from."""


@dataclass(frozen=True)
class RankedFrame:
    """One frame of the label-next list: where it is, its value and why it was chosen."""

    source: str
    frame: int
    value: float
    reason: str


def frame_values(quality: pd.DataFrame) -> np.ndarray:
    """Each frame's value of labelling before spreading (see the module's docstring)."""
    f1 = quality["f1"].to_numpy(dtype=np.float64)
    width = (quality["f1_high"] - quality["f1_low"]).to_numpy(dtype=np.float64)
    outside = ~quality["in_domain"].to_numpy(dtype=bool)
    return np.nan_to_num(1.0 - f1) + WIDTH_WEIGHT * np.nan_to_num(width) + OUT_OF_DOMAIN_BONUS * outside


def _standardised(variety: np.ndarray | None, n: int) -> np.ndarray:
    if variety is None or not len(variety):
        return np.zeros((n, 1))
    x = np.nan_to_num(np.asarray(variety, dtype=np.float64).reshape(n, -1))
    spread = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def _reason(row, spread_out: bool) -> str:
    parts = [f"predicted F1 {row.f1:.2f} ({row.f1_low:.2f}-{row.f1_high:.2f})"]
    if row.f1 < FAILING_F1:
        parts.append("detector probably fails")
    if row.f1_high - row.f1_low >= 0.4:
        parts.append("forest unsure")
    if not row.in_domain:
        parts.append("out of domain")
    if spread_out:
        parts.append("unlike frames above")
    return "; ".join(parts)


def rank_frames(
    quality: pd.DataFrame, variety: np.ndarray | None = None, limit: int | None = None
) -> list[RankedFrame]:
    """Frames of a quality table (``source`` optional, ``frame``, ``f1``, ``f1_low``, ``f1_high``,
    ``in_domain``) best first. ``variety``: one row per frame (features or embeddings) to spread the
    choice over; without it, the order is by value alone. ``limit``: how many to order (default all)."""
    n = len(quality)
    if not n:
        return []
    quality = quality.reset_index(drop=True)
    value = frame_values(quality)
    x = _standardised(variety, n)
    distances = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)) if n <= 4000 else None
    typical = (
        SPREAD_RADIUS * float(np.median(distances[np.triu_indices(n, 1)]))
        if distances is not None and n > 1
        else 0.0
    )
    nearest = np.full(n, np.inf)  # distance to the closest frame already chosen
    chosen: list[RankedFrame] = []
    remaining = np.ones(n, dtype=bool)
    for _ in range(n if limit is None else min(limit, n)):
        closeness = np.ones(n) if typical <= 0 else np.minimum(nearest / typical, 1.0)
        adjusted = np.where(remaining, value * closeness + 1e-9 * value, -np.inf)
        i = int(np.argmax(adjusted))
        remaining[i] = False
        row = quality.iloc[i]
        spread_out = bool(chosen) and closeness[i] >= 1.0 and typical > 0
        source = str(row["source"]) if "source" in quality.columns else ""
        chosen.append(RankedFrame(source, int(row["frame"]), float(value[i]), _reason(row, spread_out)))
        if distances is not None and typical > 0:
            nearest = np.minimum(nearest, distances[i])
    return chosen


def rank_by_features(
    quality: pd.DataFrame, features: pd.DataFrame, exclude=(), limit: int | None = None
) -> list[RankedFrame]:
    """``rank_frames`` spread over the frames' paper features (one row per quality row, same order),
    leaving out the frames in ``exclude`` (e.g. those already labelled): what ``rank`` and the
    Training step's "Label next" list both use."""
    keep = ~quality["frame"].isin(list(exclude)).to_numpy()
    variety = features.loc[:, list(PAPER_FEATURES)].to_numpy(dtype=np.float64)[keep]
    return rank_frames(quality.loc[keep], variety, limit)


def ranked_table(ranked: list[RankedFrame]) -> pd.DataFrame:
    """The label-next list as ``rank`` writes it (columns ``RANK_COLUMNS``, best first)."""
    return pd.DataFrame([(r.source, r.frame, r.reason) for r in ranked], columns=list(RANK_COLUMNS))
