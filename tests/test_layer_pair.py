"""The masks + boxes pair without a viewer: frame-by-frame merging, hand-made masks and boxes,
layers that do not belong together, and the detector's signals stored per frame."""

import numpy as np
import pandas as pd

from napari_detection_qc.detections.records import FrameDetections, StackDetections
from napari_detection_qc.io.layer_pair import (
    MANUAL_SCORE,
    SIGNALS_KEY,
    frame_box_ids,
    manual_rows,
    merge_frames,
    merge_signals,
    orphan_masks,
    pair_problem,
    stored_signals,
    unboxed_masks,
)
from napari_detection_qc.quality.signals import EMBEDDING


def frame(n, shape=(20, 20)):
    labels = np.zeros(shape, np.uint8)
    boxes = []
    for i in range(n):
        labels[2 * i, 2 * i] = i + 1
        boxes.append([2 * i, 2 * i, 2 * i + 1, 2 * i + 1])
    return FrameDetections(np.array(boxes, float).reshape(-1, 4), np.linspace(0.2, 0.9, n), labels)


def test_merge_replaces_only_the_redone_frames_and_keeps_manual_rows():
    stack = StackDetections.from_frames([frame(2), frame(3), frame(1)])
    vertices, features = stack.to_shapes_data()
    features = features.assign(origin="detector")
    features.loc[features.index[-1], "origin"] = "manual"  # frame 2's box was drawn by hand
    merged_vertices, merged = merge_frames(vertices, features, {1: frame(5)}, is_2d=False)
    assert list(merged.groupby("frame").size()) == [2, 5, 1]
    assert merged.loc[merged["frame"] == 2, "origin"].tolist() == ["manual"]
    assert len(merged_vertices) == len(merged) == 8
    rebuilt = StackDetections.from_layer_data(
        np.stack([f.labels for f in stack.frames]), merged_vertices, merged
    )
    assert [f.count for f in rebuilt.frames] == [2, 5, 1]


def test_merge_into_empty_layer():
    vertices, features = merge_frames(
        [], pd.DataFrame({"score": [], "label": [], "frame": []}), {0: frame(2)}, True
    )
    assert len(vertices) == 2 and features["origin"].tolist() == ["detector", "detector"]
    assert vertices[0].shape == (4, 2)


def test_a_painted_mask_gets_its_box_and_a_deleted_box_its_mask_cleared():
    labels = frame(2).labels.copy()
    labels[10:13, 5:9] = 7  # painted by hand
    ids, boxes = unboxed_masks(labels, np.array([1, 2]))
    assert ids.tolist() == [7] and boxes.tolist() == [[10, 5, 13, 9]]
    vertices, features = manual_rows(ids, boxes, frame=3, is_2d=False)
    assert vertices[0][:, 0].tolist() == [3] * 4 and features["score"].tolist() == [MANUAL_SCORE]
    assert features["origin"].tolist() == ["manual"]
    assert orphan_masks(labels, np.array([1, 7])).tolist() == [2]
    assert frame_box_ids(features, 3).tolist() == [7] and frame_box_ids(features, 0).size == 0


def test_pair_problems_are_named():
    square = [np.array([[0, 1, 1], [0, 1, 5], [0, 5, 5], [0, 5, 1]], float)]
    run_a = {"detection_qc": {"pair_id": "a", "image_layer": "first"}}
    run_b = {"detection_qc": {"pair_id": "b", "image_layer": "second"}}
    assert pair_problem("m", (3, 32, 32), run_a, "b", square, run_a) is None
    assert "different detection runs" in pair_problem("m", (3, 32, 32), run_a, "b", square, run_b)
    assert "single image" in pair_problem("m", (32, 32), None, "b", square, None)
    assert "has 3 frames" in pair_problem("m", (3, 32, 32), None, "b", [square[0][:, 1:]], None)
    far = [square[0] + [0, 100, 100]]
    assert "another image" in pair_problem("m", (3, 32, 32), None, "b", far, None)
    assert pair_problem("m", (3, 32, 32), None, "b", [], None) is None


def test_a_rerun_replaces_only_its_frames_signals_and_the_record_stays_json():
    import json

    first = merge_signals(None, {0: {"tta_iou": 0.5, EMBEDDING: [1.0, 2.0]}, 1: {"tta_iou": 0.7}, 2: {}})
    assert list(first) == ["0", "1"]  # a frame detected without signals has no entry
    again = merge_signals(json.loads(json.dumps(first)), {1: {}, 2: {"tta_iou": 0.9}})
    assert again == {"0": first["0"], "2": {"tta_iou": 0.9}}  # frame 1's old signals went with its detections
    assert list(merge_signals(again, {10: {"tta_iou": 0.1}})) == [
        "0",
        "2",
        "10",
    ]  # frame order, not text order


def test_stored_signals_give_every_frame_a_dict():
    record = {
        SIGNALS_KEY: merge_signals(None, {0: {"tta_iou": 0.5, EMBEDDING: [1.0, 2.0]}, 2: {"tta_iou": 0.9}})
    }
    signals = stored_signals(record, 3)
    assert [set(s) for s in signals] == [{"tta_iou", EMBEDDING}, set(), {"tta_iou"}]
    assert signals[0][EMBEDDING].dtype == np.float32 and list(signals[0][EMBEDDING]) == [1.0, 2.0]
    assert stored_signals({}, 2) == [{}, {}]
