import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.detections.records import FrameDetections, StackDetections
from napari_detection_qc.quality.features import (
    CANDIDATE_FEATURES,
    PAPER_FEATURES,
    frame_features,
    heywood_circularity,
    score_bin_index,
    stack_features,
)


def square_labels(shape, squares):
    labels = np.zeros(shape, dtype=np.uint16)
    for i, (y, x, side) in enumerate(squares, start=1):
        labels[y : y + side, x : x + side] = i
    return labels


def test_names_and_paper_order():
    assert len(CANDIDATE_FEATURES) == 18
    assert PAPER_FEATURES == (
        "frac_score_0.9",
        "count",
        "area_ratio",
        "image_confidence",
        "mean_score",
        "mean_size",
        "std_score",
        "std_size",
    )
    assert set(PAPER_FEATURES) <= set(CANDIDATE_FEATURES)


def test_two_boxes_hand_computed():
    # 100x100 image; box A 10x10 (area 100) score 0.95, box B 20x10 (area 200) score 0.35
    boxes = [[0, 0, 10, 10], [50, 50, 70, 60]]
    scores = [0.95, 0.35]
    labels = square_labels((100, 100), [(0, 0, 10), (50, 50, 10)])
    f = frame_features(boxes, scores, labels)
    assert f["count"] == 2
    assert f["frac_score_0.9"] == 0.5 and f["frac_score_0.3"] == 0.5
    assert sum(f[f"frac_score_0.{i}"] for i in range(1, 10)) == pytest.approx(1.0)
    assert f["area_ratio"] == pytest.approx(300 / 10000)
    assert f["mean_score"] == pytest.approx(0.65)
    assert f["std_score"] == pytest.approx(0.30)  # population std
    assert f["mean_size"] == pytest.approx(0.015)
    assert f["std_size"] == pytest.approx(0.005)
    assert f["image_confidence"] == pytest.approx((100 * 0.95 + 200 * 0.35) / 300)
    assert f["mean_circularity"] == pytest.approx(2 / np.sqrt(np.pi))
    assert f["std_circularity"] == pytest.approx(0.0)


def test_bin_edges_are_exact_decimals():
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9, 1.0, 0.2999999, 0.05])
    assert score_bin_index(scores).tolist() == [0, 1, 2, 5, 6, 7, 8, 8, 1, -1]


def test_square_and_disc_circularity():
    square = np.zeros((40, 40), bool)
    square[5:25, 5:25] = True
    assert heywood_circularity(square) == pytest.approx(2 / np.sqrt(np.pi), rel=1e-9)
    yy, xx = np.mgrid[:101, :101]
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= 40**2
    assert 1.0 < heywood_circularity(disc) < 1.01
    assert np.isnan(heywood_circularity(np.zeros((5, 5), bool)))
    line = np.zeros((5, 5), bool)
    line[2, :] = True
    assert np.isnan(heywood_circularity(line))  # a hull without area has no circularity


def test_no_detections_gives_zeros_not_nan():
    f = frame_features(np.zeros((0, 4)), [], np.zeros((64, 64), np.uint8))
    assert set(f) == set(CANDIDATE_FEATURES)
    assert all(v == 0.0 for v in f.values())


def test_one_detection_has_zero_spread():
    f = frame_features([[10, 10, 20, 30]], [0.5], np.zeros((100, 100), np.uint8))
    assert f["count"] == 1 and f["std_score"] == 0 and f["std_size"] == 0
    assert f["image_confidence"] == pytest.approx(0.5)
    # the box has no mask: circularity is not defined and stays 0 rather than NaN
    assert f["mean_circularity"] == 0.0


def test_boxes_outside_the_image_are_clipped():
    f = frame_features([[-10, -10, 10, 10], [200, 200, 300, 300]], [0.5, 0.9], None, image_shape=(100, 100))
    assert f["area_ratio"] == pytest.approx(100 / 10000)
    assert f["image_confidence"] == pytest.approx(0.5)
    assert f["count"] == 2


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        frame_features([[0, 0, 1, 1]], [np.nan], None, image_shape=(10, 10))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        frame_features([[0, 0, 1, 1]], [1.5], None, image_shape=(10, 10))
    with pytest.raises(ValueError, match="scores"):
        frame_features([[0, 0, 1, 1]], [0.5, 0.4], None, image_shape=(10, 10))
    with pytest.raises(ValueError, match="shape"):
        frame_features([[0, 0, 1, 1]], [0.5], np.zeros((5, 5), np.uint8), image_shape=(10, 10))


def test_label_ids_map_masks_to_boxes():
    labels = square_labels((50, 50), [(0, 0, 10), (20, 20, 5)])
    # after deleting the first box, the remaining box still points at mask id 2
    f = frame_features([[20, 20, 25, 25]], [0.8], labels, label_ids=[2])
    assert f["mean_circularity"] == pytest.approx(2 / np.sqrt(np.pi))


def test_stack_features_one_row_per_frame():
    labels = square_labels((30, 30), [(2, 2, 6)])
    frames = [
        FrameDetections(np.array([[2, 2, 8, 8]]), np.array([0.9]), labels),
        FrameDetections.empty((30, 30)),
    ]
    table = stack_features(StackDetections.from_frames(frames))
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == list(CANDIDATE_FEATURES)
    assert table.loc[0, "count"] == 1 and table.loc[1, "count"] == 0
    assert not table.isna().any().any()
