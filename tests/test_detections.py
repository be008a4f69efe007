import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.detections.records import FrameDetections, StackDetections, smallest_label_dtype


def frame_with_two(shape=(40, 40)):
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 3:8] = 1
    labels[20:30, 20:25] = 2
    return FrameDetections(np.array([[2, 3, 6, 8], [20, 20, 30, 25]]), np.array([0.9, 0.4]), labels)


def test_validation():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        FrameDetections(np.zeros((2, 3)), np.zeros(2), np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        FrameDetections(np.zeros((1, 4)), [np.nan], np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="only 0 boxes"):
        FrameDetections(np.zeros((0, 4)), [], np.ones((5, 5), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        FrameDetections(np.zeros((0, 4)), [], np.zeros((5, 5), np.float32))


def test_smallest_dtype():
    assert smallest_label_dtype(255) == np.uint8
    assert smallest_label_dtype(256) == np.uint16
    assert smallest_label_dtype(70000) == np.uint32


def test_above_renumbers_masks():
    kept = frame_with_two().above(0.5)
    assert kept.count == 1 and kept.scores.tolist() == [0.9]
    assert set(np.unique(kept.labels)) == {0, 1}
    assert np.count_nonzero(kept.labels) == 20


def test_stack_round_trip_through_layer_data():
    stack = StackDetections.from_frames([frame_with_two(), FrameDetections.empty((40, 40)), frame_with_two()])
    labels = stack.to_labels_data()
    assert labels.shape == (3, 40, 40) and labels.dtype == np.uint8
    shapes, features = stack.to_shapes_data()
    assert len(shapes) == 4 and shapes[0].shape == (4, 3)
    assert features["frame"].tolist() == [0, 0, 2, 2]
    assert features["label"].tolist() == [1, 2, 1, 2]
    back = StackDetections.from_layer_data(labels, shapes, features)
    for a, b in zip(back.frames, stack.frames):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_2d_layers_and_a_deleted_box():
    stack = StackDetections.from_frames([frame_with_two()], is_2d=True)
    labels = stack.to_labels_data()
    assert labels.shape == (40, 40)
    shapes, features = stack.to_shapes_data()
    assert shapes[0].shape == (4, 2)
    # the user deletes the first box: its mask is dropped, the second becomes id 1
    back = StackDetections.from_layer_data(labels, shapes[1:], features.iloc[1:].reset_index(drop=True))
    frame = back[0]
    assert frame.count == 1 and frame.scores.tolist() == [0.4]
    assert np.count_nonzero(frame.labels == 1) == 50 and frame.labels.max() == 1


def test_layer_data_errors():
    labels = np.zeros((2, 10, 10), np.uint8)
    rect = [np.array([[0, 0, 0], [0, 0, 5], [0, 5, 5], [0, 5, 0]], float)]
    with pytest.raises(ValueError, match="score"):
        StackDetections.from_layer_data(labels, rect, pd.DataFrame({"label": [1]}))
    with pytest.raises(ValueError, match="frames outside"):
        StackDetections.from_layer_data(labels, rect, pd.DataFrame({"score": [0.5], "frame": [5]}))
    with pytest.raises(ValueError, match="dims"):
        StackDetections.from_layer_data(
            np.zeros((2, 2, 10, 10), np.uint8), rect, pd.DataFrame({"score": [0.5]})
        )
    with pytest.raises(ValueError, match="one shape"):
        StackDetections.from_frames([FrameDetections.empty((5, 5)), FrameDetections.empty((6, 6))])
