import time

import numpy as np
import pytest

from napari_detection_qc.detections.matching import box_iou_matrix, boxes_from_labels, match_frame


def test_iou_matrix_values():
    a = [[0, 0, 10, 10]]
    b = [[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]]
    iou = box_iou_matrix(a, b)
    assert iou.shape == (1, 3)
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_perfect_and_partial():
    truth = [[0, 0, 10, 10], [20, 20, 30, 30]]
    r = match_frame(truth, truth)
    assert (r.tp, r.fp, r.fn, r.precision, r.recall, r.f1) == (2, 0, 0, 1.0, 1.0, 1.0)
    r = match_frame([[0, 0, 10, 10], [50, 50, 60, 60], [70, 70, 80, 80]], truth)
    assert (r.tp, r.fp, r.fn) == (1, 2, 1)
    assert r.precision == pytest.approx(1 / 3) and r.recall == pytest.approx(0.5)
    assert r.f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))


def test_greedy_duplicate_competes():
    # GT0 comes first and takes P0, its highest-IoU prediction (0.5 > 0.45), although P0 is GT1's
    # perfect match; GT1 is left with P1 (IoU 0) -> FN. An optimal assignment would find 2 TP;
    # the paper's greedy matching finds 1.
    truth = [[0, 0, 10, 20], [0, 0, 10, 10]]
    pred = [[0, 0, 10, 10], [0, 11, 10, 20]]
    assert box_iou_matrix(truth, pred) == pytest.approx(np.array([[0.5, 0.45], [1.0, 0.0]]))
    r = match_frame(pred, truth)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    # in the other order GT1 takes P0 and GT0 then takes P1
    r = match_frame(pred, truth[::-1])
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)


def test_a_duplicate_detection_is_a_false_positive():
    truth = [[0, 0, 10, 10]]
    pred = [[0, 0, 10, 10], [0, 0, 10, 9]]
    r = match_frame(pred, truth)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)


def test_threshold_is_inclusive():
    truth = [[0, 0, 10, 10]]
    pred = [[0, 9, 10, 10]]  # IoU = 10/100 = 0.1 exactly
    assert match_frame(pred, truth, 0.1).tp == 1
    assert match_frame(pred, truth, 0.1000001).tp == 0


def test_empty_cases():
    none = np.zeros((0, 4))
    assert tuple(match_frame(none, none)) == (0, 0, 0, 1.0, 1.0, 1.0)
    r = match_frame(none, [[0, 0, 5, 5]])
    assert (r.tp, r.fp, r.fn, r.precision, r.recall, r.f1) == (0, 0, 1, 0.0, 0.0, 0.0)
    r = match_frame([[0, 0, 5, 5]], none)
    assert (r.tp, r.fp, r.fn, r.precision, r.recall, r.f1) == (0, 1, 0, 0.0, 0.0, 0.0)


def test_no_overlap_gives_zero_f1_not_an_error():
    r = match_frame([[0, 0, 5, 5]], [[50, 50, 60, 60]])
    assert r.f1 == 0.0 and r.precision == 0.0 and r.recall == 0.0


def test_thousand_by_thousand_is_fast():
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 1000, size=(1000, 2))
    truth = np.hstack([corner, corner + rng.uniform(5, 30, size=(1000, 2))])
    pred = truth + rng.normal(0, 2, size=truth.shape)
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2])
    start = time.perf_counter()
    r = match_frame(pred, truth)
    assert time.perf_counter() - start < 5  # generous; benchmarks/ measures the real figure
    assert r.tp > 900


def test_boxes_from_labels():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:5, 3:9] = 1
    labels[10:12, 10:11] = 4
    boxes, ids = boxes_from_labels(labels)
    assert ids.tolist() == [1, 4]
    assert boxes.tolist() == [[2, 3, 5, 9], [10, 10, 12, 11]]
    boxes, ids = boxes_from_labels(np.zeros((5, 5), np.uint8))
    assert boxes.shape == (0, 4) and ids.size == 0
    with pytest.raises(ValueError):
        boxes_from_labels(np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(ValueError):
        boxes_from_labels(np.zeros((5, 5), np.float32))
