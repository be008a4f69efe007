"""Estimated true object counts and densities per frame, with 90% intervals, label-free.

A raw detection count is what a scientist would otherwise report, as if every detection were right
and nothing were missed. With the forest's predicted precision P and recall R of a frame, the
detections hold about ``n * P`` true objects, which are a share R of all the frame's objects:

    N = n * P / R

The interval carries two kinds of uncertainty, combined in log(N + 1) (counts are skewed and
multiplicative errors are the natural scale): the forest's, from its precision and recall
intervals (``n * P_low / R_high`` to ``n * P_high / R_low``), and the counting noise of a frame with
few objects (found objects are a binomial draw of the true ones at rate R, true positives among
the detections a binomial draw at rate P). Their combined width is then scaled by a factor fitted
on labelled frames (split-conformal, ``COUNT_INTERVAL_SCALE``), so that 90% of true counts fall
inside: the interval is calibrated, not assumed (``benchmarks/reported_numbers_study.py``).

Bad input has defined answers: a frame without detections is estimated from recall alone (0, up to
the most objects a detector of that recall would have missed entirely, 90% of the time); recall
near 0 is held at ``RECALL_FLOOR`` (the interval widens to what that allows, never divides by 0); a
quality table without precision/recall (a forest of an older file) gives no estimate and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COVERAGE = 0.9
Z_90 = 1.6448536269514722
"""The two-sided 90% normal quantile, for the counting noise."""
RECALL_FLOOR = 0.05
"""Predicted recall is never taken below this: below it a frame's detections say next to nothing
about how many objects it holds, and the interval shows that instead of dividing by ~0."""
COUNT_INTERVAL_SCALE = 0.358
"""Multiplies the combined log-width so that 90% of true counts fall inside; fitted by
``reported_numbers_study.py --print-calibration`` on out-of-fold predictions of the bundled detector
and forest recipe (480 frames: 366 EMPS images held out by paper, 114 synthetic frames by domain).
Below 1 because the raw width pairs the unfavourable ends of both intervals, which rarely happen
together."""

COUNT_COLUMNS = ("count_estimate", "count_low", "count_high", "count_note")
DENSITY_COLUMNS = ("density_estimate_per_um2", "density_low_per_um2", "density_high_per_um2")
OUT_OF_DOMAIN_NOTE = "out of domain: estimate not to be trusted"
NO_DETECTIONS_NOTE = "no detections: estimated from recall alone"
LOW_RECALL_NOTE = "recall near 0: wide interval"
NO_PRECISION_RECALL_NOTE = "forest without precision/recall models: counts only"


@dataclass(frozen=True)
class CountCalibration:
    """How count intervals are formed: the conformal scale on the combined log-width, the recall floor
    and the nominal coverage (the coverage the scale was fitted for)."""

    scale: float = COUNT_INTERVAL_SCALE
    recall_floor: float = RECALL_FLOOR
    coverage: float = COVERAGE


@dataclass(frozen=True)
class StackSummary:
    """A stack's mean estimate over its frames with a 90% interval: density per µm² where the pixel
    size is known, else the count per frame (``per``); over ``frames`` frames with an estimate, of
    which ``out_of_domain`` are flagged."""

    mean: float
    low: float
    high: float
    frames: int
    out_of_domain: int
    per: str

    def describe(self) -> str:
        """One line for a status bar or a report."""
        if not self.frames:
            return "no count estimate (see the frames' notes)"
        what = "mean density" if self.per == "µm²" else "mean estimated count"
        flagged = (
            f"; {self.out_of_domain} frame(s) out of domain: not to be trusted" if self.out_of_domain else ""
        )
        return (
            f"{what} {self.mean:.3g} per {self.per} (90% interval {self.low:.3g}-{self.high:.3g}) "
            f"over {self.frames} frame(s){flagged}"
        )


def _raw_widths(count, precision, precision_low, precision_high, recall, recall_low, recall_high, floor):
    """(point estimate, lower and upper log(N + 1) half-widths before calibration) per frame."""
    n = np.asarray(count, dtype=np.float64)
    p, p_low, p_high = (
        np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0) for v in (precision, precision_low, precision_high)
    )
    r, r_low, r_high = (
        np.clip(np.asarray(v, dtype=np.float64), floor, 1.0) for v in (recall, recall_low, recall_high)
    )
    p_low, p_high = np.minimum(p_low, p), np.maximum(p_high, p)
    r_low, r_high = np.minimum(r_low, r), np.maximum(r_high, r)
    point = n * p / r
    centre = np.log1p(point)
    # the forest's share: the estimate at the unfavourable and favourable ends of both intervals
    forest_low = centre - np.log1p(n * p_low / r_high)
    forest_high = np.log1p(n * p_high / r_low) - centre
    # counting noise: TP ~ Binomial(N, R) and TP ~ Binomial(n, P), through N = TP / R
    variance = point * (1.0 - r) / r + n * p * (1.0 - p) / r**2
    counting = Z_90 * np.sqrt(variance) / (1.0 + point)
    # no detections: N = 0 is the estimate; the most objects that a detector of recall r_low misses
    # all of with probability >= 10% bounds it from above
    empty_high = np.log1p(np.log(1.0 - COVERAGE) / np.log1p(-np.minimum(r_low, 1.0 - 1e-9)))
    high = np.where(n > 0, np.hypot(forest_high, counting), empty_high)
    low = np.where(n > 0, np.hypot(forest_low, counting), 0.0)
    return point, low, high


def count_nonconformity(
    true_count,
    count,
    precision,
    precision_low,
    precision_high,
    recall,
    recall_low,
    recall_high,
    recall_floor: float = RECALL_FLOOR,
) -> np.ndarray:
    """How many raw half-widths each true count lies from its estimate (on its side), the score whose
    90% quantile is ``COUNT_INTERVAL_SCALE``: the one definition the study calibrates with."""
    point, low, high = _raw_widths(
        count, precision, precision_low, precision_high, recall, recall_low, recall_high, recall_floor
    )
    offset = np.log1p(np.asarray(true_count, dtype=np.float64)) - np.log1p(point)
    width = np.where(offset >= 0, high, low)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.abs(offset) / width
    return np.where(offset == 0, 0.0, np.where(width > 0, score, np.inf))


def count_estimates(
    quality: pd.DataFrame, calibration: CountCalibration = CountCalibration()
) -> pd.DataFrame:
    """``count_estimate``, ``count_low``, ``count_high`` and ``count_note`` for each row of a quality
    table (``count``, ``precision``/``recall`` with ``_low``/``_high``, ``in_domain``), same index.
    Rows without the forest's precision/recall get NaN and a note saying why."""
    out = pd.DataFrame(index=quality.index, columns=list(COUNT_COLUMNS))
    needed = [f"{t}{s}" for t in ("precision", "recall") for s in ("", "_low", "_high")]
    if any(column not in quality.columns for column in needed):
        out[list(COUNT_COLUMNS[:3])] = np.nan
        out["count_note"] = NO_PRECISION_RECALL_NOTE
        return out.astype(dict.fromkeys(COUNT_COLUMNS[:3], np.float64))
    values = {column: quality[column].to_numpy(dtype=np.float64) for column in needed}
    count = quality["count"].to_numpy(dtype=np.float64)
    point, low, high = _raw_widths(count, *(values[c] for c in needed), calibration.recall_floor)
    centre = np.log1p(point)
    out["count_estimate"] = point
    out["count_low"] = np.maximum(np.expm1(centre - calibration.scale * low), 0.0)
    out["count_high"] = np.expm1(centre + calibration.scale * high)
    notes = np.full(len(quality), "", dtype=object)
    notes[values["recall"] < 2 * calibration.recall_floor] = LOW_RECALL_NOTE
    notes[count == 0] = NO_DETECTIONS_NOTE
    if "in_domain" in quality.columns:
        outside = ~quality["in_domain"].to_numpy(dtype=bool)
        notes[outside] = [f"{OUT_OF_DOMAIN_NOTE}; {n}" if n else OUT_OF_DOMAIN_NOTE for n in notes[outside]]
    out["count_note"] = notes
    return out.astype(dict.fromkeys(COUNT_COLUMNS[:3], np.float64))


def frame_area_um2(image_shape, pixel_size_nm: float | None) -> float | None:
    """A frame's area in µm²; None without a positive pixel size (then counts only)."""
    if pixel_size_nm is None or not np.isfinite(pixel_size_nm) or pixel_size_nm <= 0:
        return None
    height, width = image_shape[-2:]
    return float(height * width * (pixel_size_nm / 1000.0) ** 2)


def density_estimates(counts: pd.DataFrame, area_um2: float | None) -> pd.DataFrame:
    """Estimated number density per µm² with its interval (the count estimate over the frame's area);
    NaN columns without an area (no pixel size)."""
    out = pd.DataFrame(index=counts.index)
    for name, column in zip(DENSITY_COLUMNS, COUNT_COLUMNS[:3], strict=True):
        out[name] = counts[column].to_numpy(dtype=np.float64) / area_um2 if area_um2 else np.nan
    return out


def stack_summary(table: pd.DataFrame) -> StackSummary:
    """The mean estimated density (or count, without a pixel size) over a stack's frames with a 90%
    interval. The interval is the mean of the frames' bounds: the frames of one stack share the
    forest's errors (one detector, one imaging), so their errors are taken as fully correlated,
    the conservative choice."""
    columns, per = (
        (DENSITY_COLUMNS, "µm²") if DENSITY_COLUMNS[0] in table.columns else (COUNT_COLUMNS[:3], "frame")
    )
    if any(column not in table.columns for column in columns):
        return StackSummary(np.nan, np.nan, np.nan, 0, 0, per)
    rows = table[np.isfinite(table[columns[0]].to_numpy(dtype=np.float64))]
    if rows.empty:
        return StackSummary(np.nan, np.nan, np.nan, 0, 0, per)
    outside = int((~rows["in_domain"].to_numpy(dtype=bool)).sum()) if "in_domain" in rows else 0
    mean, low, high = (float(rows[c].mean()) for c in columns)
    return StackSummary(mean, low, high, len(rows), outside, per)


def with_count_estimates(
    quality: pd.DataFrame,
    image_shape=None,
    pixel_size_nm: float | None = None,
    calibration: CountCalibration = CountCalibration(),
) -> pd.DataFrame:
    """A quality table with the count estimate columns appended, and the density columns where the
    pixel size is known: what ``score`` writes and the quality step shows."""
    counts = count_estimates(quality, calibration)
    area = frame_area_um2(image_shape, pixel_size_nm) if image_shape is not None else None
    parts = [quality, counts]
    if area is not None:
        parts.append(density_estimates(counts, area))
    return pd.concat(parts, axis=1)
