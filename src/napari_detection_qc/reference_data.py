"""Loader for the seed paper's random-forest training table (Li et al., Digital Discovery 2025).

The authors published one row per (TEM image, Mask R-CNN data split): the true F1, precision and
recall of that split's detectron2 Mask R-CNN on the image, and features of its detections at
confidence >= 0.1. This module turns that table into our vocabulary: ``CANDIDATE_FEATURES`` columns,
an ``f1/precision/recall`` target table and an info table (image name, canonical split label,
grouped/random split type, per-row data-quality flags).

Two versions exist and both load to the same result:

- the corrected table (832 rows, with the shape columns), and
- the ``_original`` table (833 rows, no shape columns, UTF-8 BOM, one space after ``A:``), whose
  29 ``A_A`` rows hold (precision, recall, area_ratio) rotated as (area_ratio, precision, recall).
  Rotated rows are recognised by their own numbers (the stored F1 is the harmonic mean of the
  stored recall and area_ratio instead of precision and recall) and rotated back.

Checked against ``features.py`` on the corrected table: the bins sum to ``counts`` in every row;
``area_ratio == avg obj size * counts`` (to 5e-4 relative); ``image_confidence`` and
``avg obj conf`` lie inside the range of the occupied score bins; ``image_confidence`` is weighted
by the same box areas as ``avg obj size`` (for two-detection rows the Cauchy-Schwarz bound
``|image_conf - mean_conf| <= std_conf * std_size / mean_size`` holds with equality); standard
deviations are population (ddof 0: two-detection rows put both scores in their recorded bins
only with ddof 0) and are 0 for single detections. The shape columns use the authors' Heywood
circularity (hull of mask pixel centres, circle of the hull's area), the convention
``features.heywood_circularity`` follows too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from napari_detection_qc.quality.features import CANDIDATE_FEATURES, SCORE_BIN_NAMES

TARGET_COLUMNS = ("f1", "precision", "recall")

# Table column -> our feature. The per-bin counts become fractions of ``counts`` (as the paper's
# candidate features 1-9); every other column is copied as is.
SCORE_BIN_COLUMNS = {f"num_0.{i}": name for i, name in zip(range(1, 10), SCORE_BIN_NAMES)}
TABLE_TO_FEATURE = {
    **SCORE_BIN_COLUMNS,
    "area_ratio": "area_ratio",
    "avg obj conf": "mean_score",
    "stdev obj conf": "std_score",
    "avg obj size": "mean_size",
    "stdev obj size": "std_size",
    "avg pred shape": "mean_circularity",
    "stdev pred shape": "std_circularity",
    "counts": "count",
    "image_confidence": "image_confidence",
}
# Only in the corrected table; the original's features get NaN there.
SHAPE_COLUMNS = ("avg pred shape", "stdev pred shape")

# The paper's Table 1/2: detector trained and tested on different data ("grouped") or on a random
# split of the same data ("random"). Canonical labels carry no spaces.
GROUPED_SPLITS = ("A&B_C", "A:over_under", "A:under_over", "B_A", "A_B")
RANDOM_SPLITS = ("A&B_A&B", "A_A", "B_B", "A:under_under", "A:over_over")
SPLIT_TYPES = {**dict.fromkeys(GROUPED_SPLITS, "grouped"), **dict.fromkeys(RANDOM_SPLITS, "random")}

_ROTATED = ["precision", "recall", "area_ratio"]
_UNROTATED_FROM = ["recall", "area_ratio", "precision"]


class ReferenceTable(NamedTuple):
    """``features`` (CANDIDATE_FEATURES), ``targets`` (f1/precision/recall, no NaN) and ``info``
    (names, label, split_type, f1_was_nan, rotation_fixed, duplicate; ``info.attrs`` holds the
    version and the row counts of each repair)."""

    features: pd.DataFrame
    targets: pd.DataFrame
    info: pd.DataFrame


def canonical_label(label: str) -> str:
    """``"A:  over_over"`` and ``"A: over_over"`` -> ``"A:over_over"`` (all whitespace removed)."""
    return re.sub(r"\s+", "", str(label))


def _harmonic(a: pd.Series, b: pd.Series) -> pd.Series:
    total = a + b
    return (2 * a * b / total.where(total > 0)).fillna(0.0)


def rotated_rows(table: pd.DataFrame, tolerance: float = 1e-6) -> pd.Series:
    """Rows whose F1 matches the harmonic mean of (recall, area_ratio) but not of (precision,
    recall): the original table's rotation bug."""
    f1 = table["f1"].fillna(0.0)
    consistent = (_harmonic(table["precision"], table["recall"]) - f1).abs() <= tolerance
    rotated = (_harmonic(table["recall"], table["area_ratio"]) - f1).abs() <= tolerance
    return ~consistent & rotated


def load_reference_table(path) -> ReferenceTable:
    """Read either version of the authors' table; see the module docstring for the repairs.

    NaN F1 (TP = 0, 30 rows) becomes 0 and is flagged in ``info.f1_was_nan``.
    """
    path = Path(path)
    raw = pd.read_csv(path, encoding="utf-8-sig")
    required = ["names", "label", *TARGET_COLUMNS, *(c for c in TABLE_TO_FEATURE if c not in SHAPE_COLUMNS)]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise ValueError(f"{path} is not the authors' training table: it lacks columns {missing}")
    has_shape = all(c in raw.columns for c in SHAPE_COLUMNS)

    rotation = rotated_rows(raw)
    raw.loc[rotation, _ROTATED] = raw.loc[rotation, _UNROTATED_FROM].to_numpy()

    counts = raw["counts"].to_numpy(dtype=np.float64)
    features = pd.DataFrame(index=raw.index)
    for column, name in TABLE_TO_FEATURE.items():
        if column in SCORE_BIN_COLUMNS:
            values = raw[column].to_numpy(dtype=np.float64)
            features[name] = np.divide(values, counts, out=np.zeros_like(values), where=counts > 0)
        elif column in raw.columns:
            features[name] = raw[column].astype(np.float64)
        else:
            features[name] = np.nan
    features = features[list(CANDIDATE_FEATURES)]

    f1_was_nan = raw["f1"].isna()
    targets = raw[list(TARGET_COLUMNS)].astype(np.float64).fillna(0.0)

    labels = raw["label"].map(canonical_label)
    unknown = sorted(set(labels) - set(SPLIT_TYPES))
    if unknown:
        raise ValueError(f"{path} has split labels outside the paper's Table 1: {unknown}")
    duplicate = raw.assign(label=labels).duplicated()
    info = pd.DataFrame(
        {
            "names": raw["names"].astype(str),
            "label": labels,
            "split_type": labels.map(SPLIT_TYPES),
            "f1_was_nan": f1_was_nan,
            "rotation_fixed": rotation,
            "duplicate": duplicate,
        }
    )
    info.attrs = {
        "version": "corrected" if has_shape else "original",
        "path": str(path),
        "n_rows": len(raw),
        "n_f1_was_nan": int(f1_was_nan.sum()),
        "n_rotation_fixed": int(rotation.sum()),
        "n_duplicate": int(duplicate.sum()),
    }
    return ReferenceTable(features, targets, info)
