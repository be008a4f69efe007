"""COCO JSON: RLE (both forms) and polygons read with hand-computed masks, image matching by file
name, and the round trip labels -> COCO -> labels that keeps the true F1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from skimage.segmentation import relabel_sequential

from napari_detection_qc.detections.coco import (
    CocoGroundTruth,
    decode_counts,
    detections_to_coco,
    encode_counts,
    mask_runs,
    rle_decode,
    rle_encode,
    write_coco,
)
from napari_detection_qc.detections.matching import boxes_from_labels
from napari_detection_qc.detections.records import FrameDetections, StackDetections
from napari_detection_qc.io import InputError
from napari_detection_qc.quality.scoring import true_quality
from napari_detection_qc.synthetic import make_stack

# column-major: column 0 is 0,1,0 and column 1 is 1,1,0 -> runs 1 bg, 1 fg, 1 bg, 2 fg, 1 bg
MASK = np.array([[0, 1], [1, 1], [0, 0]], dtype=bool)


def test_rle_counts_by_hand():
    assert mask_runs(MASK).tolist() == [1, 1, 1, 2, 1]
    # the first pixel in the foreground starts with an empty background run
    assert mask_runs(np.array([[1, 0], [1, 0]], bool)).tolist() == [0, 2, 2]
    # a run that ends at the bottom of one column and goes on at the top of the next is one run
    assert mask_runs(np.array([[0, 1], [0, 0], [1, 0]], bool)).tolist() == [2, 2, 2]
    assert mask_runs(np.zeros((2, 3), bool)).tolist() == [6]


def test_compressed_rle_strings_by_hand():
    # from the 4th count on the difference to the count two before is stored: 2-1 = 1, 1-1 = 0
    assert encode_counts([1, 1, 1, 2, 1]) == "11110"
    # 10 -> chr(58); 1 - 2 = -1 -> 31 with no continuation -> chr(79)
    assert encode_counts([5, 2, 10, 1]) == "52:O"
    # 100 = 4 + 3 * 32: low 5 bits with the continuation bit (4 | 32 -> 'T'), then 3
    assert encode_counts([100]) == "T3"
    for counts in ([1, 1, 1, 2, 1], [5, 2, 10, 1], [100], [0, 7, 123456, 3, 2, 99999, 1]):
        assert decode_counts(encode_counts(counts)) == counts
    with pytest.raises(ValueError, match="truncated"):
        decode_counts("T")


def test_rle_read_uncompressed_and_compressed():
    np.testing.assert_array_equal(rle_decode({"size": [3, 2], "counts": [1, 1, 1, 2, 1]}), MASK)
    np.testing.assert_array_equal(rle_decode({"size": [3, 2], "counts": "11110"}), MASK)
    np.testing.assert_array_equal(rle_decode(rle_encode(MASK)), MASK)
    with pytest.raises(ValueError, match="do not cover"):
        rle_decode({"size": [3, 2], "counts": [1, 1]})


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def coco_file(tmp_path, annotations, images=None, categories=None):
    images = images or [{"id": 7, "file_name": "images/frame.png", "height": 6, "width": 8}]
    categories = categories or [{"id": 1, "name": "cavity"}]
    return write_json(
        tmp_path / "gt.json", {"images": images, "annotations": annotations, "categories": categories}
    )


def test_polygon_rle_and_box_annotations_become_labels(tmp_path):
    square = [2, 1, 6, 1, 6, 4, 2, 4]  # x, y pairs: pixels whose centres are inside: rows 1-3, cols 2-5
    triangle = [0, 0, 4, 0, 0, 3]  # 3x + 4y < 12 at pixel centres (c + .5, r + .5)
    rle = {"size": [6, 8], "counts": [6 * 7 + 4, 2, 0]}  # column 7, rows 4 and 5
    path = coco_file(
        tmp_path,
        [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [square]},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": [triangle]},
            {"id": 3, "image_id": 7, "category_id": 1, "segmentation": rle, "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 1, "segmentation": [], "bbox": [6.0, 0.0, 2.0, 1.5]},
        ],
    )
    labels = CocoGroundTruth.load(path).stack_labels("frame.png", 1, (6, 8))[0]
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 2:6] = 1
    for r, c in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]:
        expected[r, c] = 2  # the triangle is smaller than the square: it is painted on top
    expected[4:6, 7] = 3
    expected[0:2, 6:8] = 4  # box-only: the pixels the box touches
    np.testing.assert_array_equal(labels, expected)


def test_images_matched_by_file_name_then_stem(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "height": 4, "width": 4},
        {"id": 2, "file_name": "C:\\data\\b.tif", "height": 4, "width": 4},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [2, 2, 2, 2]},
    ]
    truth = CocoGroundTruth.load(coco_file(tmp_path, annotations, images))
    assert truth.stack_labels("/x/a.tif", 1, (4, 4))[0][0, 0] == 1  # stem: a.png for a.tif
    assert truth.stack_labels("b.tif", 1, (4, 4))[0][3, 3] == 1
    with pytest.raises(InputError, match="no image named c.tif"):
        truth.stack_labels("c.tif", 1, (4, 4))
    with pytest.raises(InputError, match="5 x 4"):
        truth.stack_labels("a.png", 1, (5, 4))
    with pytest.raises(InputError, match="a stack needs one image per frame"):
        truth.stack_labels("a.png", 3, (4, 4))
    # a file about one input only: images taken in id order when no name matches
    assert truth.stack_labels("stack.tif", 2, (4, 4), sole_input=True).shape == (2, 4, 4)


def test_categories_and_bad_files(tmp_path):
    categories = [{"id": 1, "name": "cavity"}, {"id": 2, "name": "loop"}]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2]},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [4, 4, 2, 2]},
    ]
    path = coco_file(tmp_path, annotations, categories=categories)
    with pytest.raises(InputError, match="several categories"):
        CocoGroundTruth.load(path)
    labels = CocoGroundTruth.load(path, category="loop").stack_labels("frame.png", 1, (6, 8))[0]
    assert labels.max() == 1 and labels[4, 4] == 1 and labels[0, 0] == 0
    with pytest.raises(InputError, match="no category 'void'"):
        CocoGroundTruth.load(path, category="void")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json"):
        CocoGroundTruth.load(tmp_path / "broken.json")
    orphan = coco_file(tmp_path, [{"id": 9, "image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(InputError, match="unknown image 99"):
        CocoGroundTruth.load(orphan)


def detections_from_labels(labels: np.ndarray, scores_seed: int) -> FrameDetections:
    """Detections whose masks and boxes are the given instances (ids made 1..N)."""
    labels, _, _ = relabel_sequential(labels)
    boxes, _ = boxes_from_labels(labels)
    scores = np.random.default_rng(scores_seed).uniform(0.1, 1.0, len(boxes))
    return FrameDetections(boxes, scores, labels)


def test_round_trip_keeps_masks_and_true_f1(tmp_path):
    _, truth = make_stack(2, 3, (160, 128), "dense")
    truth_stack = StackDetections.from_frames([detections_from_labels(f, t) for t, f in enumerate(truth)])
    path = write_coco(tmp_path / "truth.json", detections_to_coco([("series.tif", truth_stack)]))
    data = json.loads(path.read_text())
    assert [image["frame"] for image in data["images"]] == [0, 1, 2]
    assert data["categories"][0]["name"] == "cavity" and len(data["annotations"]) == truth_stack.total_count
    first = data["annotations"][0]
    y0, x0, y1, x1 = truth_stack[0].boxes[0]
    assert first["bbox"] == [x0, y0, x1 - x0, y1 - y0] and first["area"] == (truth_stack[0].labels == 1).sum()

    read_back = CocoGroundTruth.load(path).stack_labels("series.tif", 3, (160, 128))
    np.testing.assert_array_equal(read_back, truth_stack.to_labels_data())

    # predictions: the truth with some objects dropped and one shifted, so F1 is not trivially 1
    predicted = []
    for frame in truth_stack.frames:
        keep = np.arange(frame.count) % 3 != 0
        boxes = frame.boxes[keep] + np.array([2.0, 0.0, 2.0, 0.0])
        predicted.append(FrameDetections(boxes, frame.scores[keep], np.zeros_like(frame.labels)))
    predicted = StackDetections.from_frames(predicted)
    expected = true_quality(predicted, truth)
    assert (expected["f1"] < 1).all() and (expected["f1"] > 0).all()
    pd.testing.assert_frame_equal(true_quality(predicted, read_back), expected)

    single = detections_to_coco([("one.png", StackDetections.from_frames([truth_stack[1]], is_2d=True))])
    assert "frame" not in single["images"][0]
    np.testing.assert_array_equal(
        CocoGroundTruth.load(write_coco(tmp_path / "one.json", single)).stack_labels(
            "one.png", 1, (160, 128)
        )[0],
        truth_stack[1].labels,
    )
