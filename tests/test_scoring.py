import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.detections.records import FrameDetections, StackDetections
from napari_detection_qc.labels.training_set import TrainingSet
from napari_detection_qc.quality.features import CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import QualityForest
from napari_detection_qc.quality.forest_choice import bundled_forest_for
from napari_detection_qc.quality.scoring import QUALITY_COLUMNS, predicted_quality, true_quality


def two_frame_stack():
    labels = np.zeros((40, 40), np.uint8)
    labels[2:6, 2:6] = 1
    labels[20:30, 20:30] = 2
    frame = FrameDetections(np.array([[2, 2, 6, 6], [20, 20, 30, 30]]), np.array([0.95, 0.3]), labels)
    return StackDetections.from_frames([frame, FrameDetections.empty((40, 40))])


def test_true_quality_per_frame():
    stack = two_frame_stack()
    truth = np.zeros((2, 40, 40), np.uint16)
    truth[0, 2:6, 2:6] = 1  # matches the first box; the second box is a false positive
    truth[1, 10:15, 10:15] = 3  # missed object on the empty frame
    table = true_quality(stack, truth)
    assert table[["tp", "fp", "fn"]].to_numpy().tolist() == [[1, 1, 0], [0, 0, 1]]
    assert table.loc[0, "f1"] == pytest.approx(2 / 3) and table.loc[1, "f1"] == 0.0
    assert true_quality(stack, truth, frames=[1])["frame"].tolist() == [1]
    with pytest.raises(ValueError, match="does not match"):
        true_quality(stack, truth[:1])
    with pytest.raises(ValueError, match="per frame|are"):
        true_quality(stack, np.zeros((2, 20, 20), np.uint8))


def test_predicted_quality_table():
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.uniform(0, 1, size=(60, 18)), columns=list(CANDIDATE_FEATURES))
    y = pd.DataFrame({"f1": x["mean_score"], "precision": x["mean_score"], "recall": x["mean_score"]})
    forest = QualityForest(n_estimators=10).fit(x, y)
    table, features = predicted_quality(two_frame_stack(), forest)
    assert list(table.columns) == list(QUALITY_COLUMNS)
    assert table["count"].tolist() == [2, 0] and len(features) == 2


def test_training_set_replaces_a_relabeled_frame(tmp_path):
    features = pd.DataFrame(np.ones((2, 18)), columns=list(CANDIDATE_FEATURES))
    targets = pd.DataFrame({"f1": [0.5, 0.6], "precision": [0.5, 0.6], "recall": [0.5, 0.6]})
    training = TrainingSet().add(features, targets, ["a#0", "a#1"])
    training.add(features.iloc[:1], targets.iloc[:1].assign(f1=0.9), ["a#1"])
    assert training.sources == ["a#0", "a#1"] and training.targets["f1"].tolist() == [0.5, 0.9]
    loaded = TrainingSet.load(training.save(tmp_path / "set.csv"))
    pd.testing.assert_frame_equal(loaded.features, training.features)
    assert loaded.sources == training.sources


def test_bundled_forest_choice():
    assert bundled_forest_for({"engine": "detectron2"}) == "li2025"
    assert bundled_forest_for({"engine": "torchvision", "detector": "detectron2:model_final.pth"}) == "li2025"
    assert bundled_forest_for({"engine": "torchvision"}) == "default"
    assert bundled_forest_for(None) == "default"


def test_physical_readouts():
    from napari_detection_qc.quality.scoring import physical_readouts

    stack = two_frame_stack()  # 40x40 px frames; masks of 16 and 100 px
    table = physical_readouts(stack, pixel_size_nm=0.5)  # frame = 20 nm x 20 nm = 4e-4 µm²
    assert table.loc[0, "density_per_um2"] == pytest.approx(2 / 4e-4)
    expected = np.mean([2 * np.sqrt(16 / np.pi) * 0.5, 2 * np.sqrt(100 / np.pi) * 0.5])
    assert table.loc[0, "mean_diameter_nm"] == pytest.approx(expected)
    assert table.loc[1, "count"] == 0 and table.loc[1, "mean_diameter_nm"] == 0.0
    with pytest.raises(ValueError, match="pixel size"):
        physical_readouts(stack, 0)
