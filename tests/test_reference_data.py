"""The authors' training table: loader repairs, the mapping of its columns to our feature names,
and the bundled forest fit on it."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import ConvexHull

from napari_detection_qc.quality.features import (
    CANDIDATE_FEATURES,
    PAPER_FEATURES,
    frame_features,
    heywood_circularity,
)
from napari_detection_qc.quality.forest import QualityForest
from napari_detection_qc.reference_data import (
    GROUPED_SPLITS,
    RANDOM_SPLITS,
    SCORE_BIN_COLUMNS,
    TABLE_TO_FEATURE,
    canonical_label,
    load_reference_table,
)

DATA = Path(__file__).parents[2] / "shared" / "reference-data"
CORRECTED = DATA / "li2025_rf_training_table.csv"
ORIGINAL = DATA / "li2025_rf_training_table_original.csv"
needs_shared = pytest.mark.skipif(
    not CORRECTED.exists() or not ORIGINAL.exists(),
    reason="the authors' table (../shared/reference-data) is not here",
)

CORRECTED_COLUMNS = [
    "names",
    "f1",
    "precision",
    "recall",
    "area_ratio",
    "image_confidence",
    "avg obj conf",
    "avg obj size",
    "stdev obj conf",
    "stdev obj size",
    "avg pred shape",
    "stdev pred shape",
    "range pred shape",
    "counts",
    "swell",
    "swell_frac",
    *SCORE_BIN_COLUMNS,
    "label",
]


# -- a frame whose table row is computed by hand --------------------------------------------------
IMAGE_SHAPE = (100, 200)
# (y0, x0, side, score): square boxes and square masks, so both circularity conventions agree
DETECTIONS = [(0, 0, 10, 0.95), (20, 30, 20, 0.91), (50, 100, 6, 0.35), (70, 150, 10, 0.15), (40, 60, 4, 0.3)]


def hand_computed_row(label="A:  over_over") -> dict:
    """What the authors' table holds for DETECTIONS, from its README's definitions."""
    sides = np.array([d[2] for d in DETECTIONS], float)
    scores = np.array([d[3] for d in DETECTIONS])
    sizes = sides**2 / (IMAGE_SHAPE[0] * IMAGE_SHAPE[1])
    row = {
        "names": "frame.png",
        "f1": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "area_ratio": sizes.sum(),
        "image_confidence": (sizes * scores).sum() / sizes.sum(),
        "avg obj conf": scores.mean(),
        "avg obj size": sizes.mean(),
        "stdev obj conf": np.sqrt(np.mean((scores - scores.mean()) ** 2)),
        "stdev obj size": np.sqrt(np.mean((sizes - sizes.mean()) ** 2)),
        "avg pred shape": 2 / np.sqrt(np.pi),
        "stdev pred shape": 0.0,
        "range pred shape": 0.0,
        "counts": len(scores),
        "swell": 0.0,
        "swell_frac": 0.0,
        "label": label,
    }
    # bins [0.1,0.2) ... [0.9,1.0]; 0.3 belongs to [0.3, 0.4)
    for column, tenth in zip(SCORE_BIN_COLUMNS, range(1, 10)):
        row[column] = int(
            np.sum(
                (scores >= tenth / 10 - 1e-12) & (scores < (tenth + 1) / 10 - 1e-12)
                | ((tenth == 9) & (scores >= 0.9))
            )
        )
    return row


def frame_of_detections():
    boxes, labels = [], np.zeros(IMAGE_SHAPE, np.uint16)
    for i, (y, x, side, _) in enumerate(DETECTIONS, start=1):
        boxes.append([y, x, y + side, x + side])
        labels[y : y + side, x : x + side] = i
    return np.array(boxes, float), np.array([d[3] for d in DETECTIONS]), labels


def write_table(path, rows, columns=CORRECTED_COLUMNS, bom=False):
    pd.DataFrame(rows)[columns].to_csv(path, index=False, encoding="utf-8-sig" if bom else "utf-8")
    return path


def test_every_mapped_column_agrees_with_frame_features(tmp_path):
    boxes, scores, labels = frame_of_detections()
    ours = frame_features(boxes, scores, labels)
    features, _, _ = load_reference_table(write_table(tmp_path / "t.csv", [hand_computed_row()]))
    assert set(TABLE_TO_FEATURE.values()) == set(CANDIDATE_FEATURES)
    assert list(features.columns) == list(CANDIDATE_FEATURES)
    for column, name in TABLE_TO_FEATURE.items():
        assert ours[name] == pytest.approx(features.loc[0, name], rel=1e-12, abs=1e-12), (column, name)
    assert features.loc[0, "frac_score_0.3"] == pytest.approx(0.4)  # 0.35 and the edge score 0.3
    assert features.loc[0, "frac_score_0.9"] == pytest.approx(0.4)


def authors_heywood(mask):
    """The authors' circularity: convex hull of mask pixel centres, circle of the hull's area."""
    hull = ConvexHull(np.argwhere(mask).astype(float))
    return hull.area / (2 * np.sqrt(np.pi * hull.volume))


def test_circularity_follows_the_authors_convention():
    square = np.zeros((30, 30), bool)
    square[5:17, 5:17] = True
    assert heywood_circularity(square) == pytest.approx(authors_heywood(square))
    yy, xx = np.mgrid[-12:13, -12:13]
    disc = yy**2 + xx**2 <= 64
    assert heywood_circularity(disc) == pytest.approx(authors_heywood(disc), rel=1e-12)
    assert heywood_circularity(disc) == pytest.approx(1.010, abs=0.002)


def test_label_spelling_is_canonical():
    assert canonical_label("A:  over_over") == canonical_label("A: over_over") == "A:over_over"
    assert canonical_label("A&B_C") == "A&B_C"


def test_nan_f1_becomes_zero_and_is_flagged(tmp_path):
    empty = {**hand_computed_row(), "f1": np.nan, "precision": 0.0, "recall": 0.0}
    _, targets, info = load_reference_table(write_table(tmp_path / "t.csv", [hand_computed_row(), empty]))
    assert targets["f1"].tolist() == [0.5, 0.0]
    assert info["f1_was_nan"].tolist() == [False, True] and info.attrs["n_f1_was_nan"] == 1


def test_original_format_rotation_is_repaired(tmp_path):
    good = hand_computed_row("A: under_under")
    good.update(f1=2 * 0.8 * 0.6 / 1.4, precision=0.8, recall=0.6)
    rotated = {**good, "label": "A_A", "precision": good["area_ratio"], "recall": 0.8, "area_ratio": 0.6}
    original_columns = [c for c in CORRECTED_COLUMNS if "shape" not in c and "swell" not in c]
    path = write_table(tmp_path / "t_original.csv", [good, rotated], original_columns, bom=True)
    features, targets, info = load_reference_table(path)
    assert info.attrs["version"] == "original" and info["rotation_fixed"].tolist() == [False, True]
    assert targets.loc[1, ["precision", "recall"]].tolist() == pytest.approx([0.8, 0.6])
    assert features.loc[1, "area_ratio"] == pytest.approx(good["area_ratio"])
    assert features["mean_circularity"].isna().all()  # the original has no shape columns
    assert info["label"].tolist() == ["A:under_under", "A_A"]


def test_unknown_label_and_foreign_table_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Table 1"):
        load_reference_table(write_table(tmp_path / "a.csv", [hand_computed_row("Z_Z")]))
    pd.DataFrame({"names": ["x"], "f1": [1.0]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(ValueError, match="lacks columns"):
        load_reference_table(tmp_path / "b.csv")


# -- the real table ------------------------------------------------------------------------------
@needs_shared
def test_corrected_table():
    features, targets, info = load_reference_table(CORRECTED)
    assert len(features) == len(targets) == len(info) == 832 and info.attrs["version"] == "corrected"
    assert info.attrs["n_f1_was_nan"] == 30 and targets.notna().all().all()
    assert (targets.loc[info["f1_was_nan"], ["f1", "precision", "recall"]] == 0).all().all()
    assert set(info["label"]) == set(GROUPED_SPLITS + RANDOM_SPLITS)
    assert info["split_type"].value_counts().to_dict() == {"grouped": 561, "random": 271}
    assert (info["label"] == "A:over_over").sum() == 11 and info["rotation_fixed"].sum() == 0
    assert features.notna().all().all()
    bins = features[[f"frac_score_0.{i}" for i in range(1, 10)]].sum(axis=1)
    assert np.allclose(bins, 1.0)
    assert np.allclose(features["area_ratio"], features["mean_size"] * features["count"], rtol=1e-3)
    f1 = targets["f1"]
    p, r = targets["precision"], targets["recall"]
    assert np.allclose(f1, np.where(p + r > 0, 2 * p * r / (p + r).where(p + r > 0, 1), 0), atol=1e-6)


@needs_shared
def test_original_table_equals_corrected_after_repair():
    corrected = load_reference_table(CORRECTED)
    original = load_reference_table(ORIGINAL)
    assert len(original.info) == 833 and original.info.attrs["version"] == "original"
    assert original.info["rotation_fixed"].sum() == 29
    assert set(original.info.loc[original.info["rotation_fixed"], "label"]) == {"A_A"}
    assert set(original.info["label"]) == set(corrected.info["label"])

    def sorted_rows(table):
        frame = pd.concat(
            [table.info[["names", "label"]], table.targets, table.features[list(PAPER_FEATURES)]], axis=1
        )
        return frame.sort_values(list(frame.columns)).reset_index(drop=True)

    repaired = original._replace(
        **{
            k: v[~original.info["duplicate"] | (original.info["label"] != "A_A")]
            for k, v in original._asdict().items()
        }
    )
    left, right = sorted_rows(repaired), sorted_rows(corrected)
    assert left[["names", "label"]].equals(right[["names", "label"]])
    assert np.allclose(
        left.drop(columns=["names", "label"]), right.drop(columns=["names", "label"]), atol=1e-6
    )


# -- the bundled forest --------------------------------------------------------------------------
def test_li2025_forest_loads_offline_with_its_provenance():
    forest = QualityForest.load("li2025")
    assert forest.detector["name"] == "li2025-cavity-maskrcnn-r50fpn"
    assert forest.detector["engine"] == "detectron2" and forest.detector["score_threshold"] == 0.1
    assert forest.metadata["doi"] == "10.1039/D4DD00351A"
    assert "Li" in forest.metadata["citation"] and "Digital Discovery" in forest.metadata["citation"]
    assert forest.metadata["data_doi"] == "10.6084/m9.figshare.27281400"
    assert forest.n_training == 832
    boxes, scores, labels = frame_of_detections()
    row = pd.DataFrame([frame_features(boxes, scores, labels)])
    predicted = forest.predict(row)
    assert 0.0 <= predicted.loc[0, "f1_low"] <= predicted.loc[0, "f1"] <= predicted.loc[0, "f1_high"] <= 1.0
