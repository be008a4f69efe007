"""The three dock widgets driven through their real paths in a napari viewer (under Xvfb)."""

import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.detections import StackDetections
from napari_detection_qc.features import CANDIDATE_FEATURES
from napari_detection_qc.forest import QualityForest
from napari_detection_qc.scoring import predicted_quality, true_quality
from napari_detection_qc.synthetic import make_stack

WORKER_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def small_stack():
    images, labels = make_stack(7, 4, shape=(256, 256), domain=["clean", "low_dose", "clean", "tiny_cavities"])
    return images, labels


@pytest.fixture(scope="module")
def test_forest(tmp_path_factory):
    """A forest fitted on a known function of the features (enough to drive the widgets)."""
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.uniform(0, 1, size=(200, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    x["count"] = rng.integers(0, 40, 200)
    f1 = np.clip(0.2 + 0.7 * x["frac_score_0.9"], 0, 1)
    y = pd.DataFrame({"f1": f1, "precision": f1, "recall": f1})
    forest = QualityForest(n_estimators=30).fit(x, y)
    path = forest.save(tmp_path_factory.mktemp("forest") / "test.skops")
    return forest, path


def wait_for(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)


def detect(viewer, qtbot, images, name="tem"):
    from napari_detection_qc.widgets import DetectionWidget

    layer = viewer.add_image(images, name=name)
    widget = DetectionWidget(viewer)
    widget.image.value = layer
    widget.run()
    wait_for(qtbot, widget)
    return widget


def test_detection_widget_makes_consistent_layers(make_napari_viewer, qtbot, small_stack):
    viewer = make_napari_viewer()
    images, _ = small_stack
    widget = detect(viewer, qtbot, images)
    masks, boxes = viewer.layers["tem masks"], viewer.layers["tem boxes"]
    assert masks.data.shape == images.shape
    assert set(boxes.features.columns) >= {"score", "label", "frame"}
    assert len(boxes.data) > 0 and (boxes.features["score"] >= 0.1).all()
    for t in range(len(images)):
        rows = boxes.features[boxes.features["frame"] == t]
        assert sorted(rows["label"]) == list(range(1, len(rows) + 1))
        for index, row in rows.iterrows():
            mask = masks.data[t] == row["label"]
            vertices = boxes.data[index]
            y0, x0 = vertices[:, 1:].min(0)
            y1, x1 = vertices[:, 1:].max(0)
            ys, xs = np.nonzero(mask)
            if ys.size:
                assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1) + 1
                assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) + 1
    record = masks.metadata["detection_qc"]
    assert record["detector"]["weights_sha256"] and record["frames_done"] == [0, 1, 2, 3]
    n_layers = len(viewer.layers)
    widget.run()  # re-running replaces the content, it does not add layers
    wait_for(qtbot, widget)
    assert len(viewer.layers) == n_layers


def test_detection_on_current_frame_keeps_the_others(make_napari_viewer, qtbot, small_stack):
    viewer = make_napari_viewer()
    images, _ = small_stack
    widget = detect(viewer, qtbot, images)
    before = viewer.layers["tem boxes"].features.copy()
    viewer.dims.set_current_step(0, 2)
    widget.scope.value = "current frame"
    widget.threshold.value = 0.9
    widget.run()
    wait_for(qtbot, widget)
    after = viewer.layers["tem boxes"].features
    assert (after[after["frame"] == 2]["score"] >= 0.9).all()
    pd.testing.assert_frame_equal(
        after[after["frame"] != 2].reset_index(drop=True), before[before["frame"] != 2].reset_index(drop=True)
    )


def test_cancel_stops_mid_stack(make_napari_viewer, qtbot):
    from napari_detection_qc.widgets import DetectionWidget

    viewer = make_napari_viewer()
    images, _ = make_stack(3, 8, shape=(256, 256))
    layer = viewer.add_image(images, name="long")
    widget = DetectionWidget(viewer)
    widget.image.value = layer
    seen = []
    widget.run()
    widget.worker.yielded.connect(lambda item: seen.append(item[0]) or (len(seen) == 2 and widget.cancel()))
    wait_for(qtbot, widget)
    done = viewer.layers["long masks"].metadata["detection_qc"]["frames_done"]
    assert 1 <= len(done) < 8
    assert "cancelled" in widget.status.value
    assert widget.run_button.enabled


def test_detection_bad_input_gives_messages(make_napari_viewer):
    from napari_detection_qc.widgets import DetectionWidget

    viewer = make_napari_viewer()
    widget = DetectionWidget(viewer)
    widget.run()
    assert "no image layer" in widget.status.value
    layer = viewer.add_image(np.zeros((2, 2, 32, 32), np.float32), name="4d")
    widget.image.value = layer
    widget.run()
    assert "4-D" in widget.status.value and widget.worker is None
    widget.engine.value = "torchvision checkpoint"
    viewer.add_image(np.zeros((32, 32), np.float32), name="plain")
    widget.image.value = viewer.layers["plain"]
    widget.run()
    assert "weights file" in widget.status.value


def test_rgb_image_is_detected(make_napari_viewer, qtbot, small_stack):
    viewer = make_napari_viewer()
    gray = small_stack[0][0]
    rgb = np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    widget = detect(viewer, qtbot, rgb, name="rgb")
    assert viewer.layers["rgb masks"].data.shape == gray.shape
    assert "detections in 1 frame" in widget.status.value


def quality_widget(viewer, qtbot, forest_path, name="tem"):
    from napari_detection_qc.widgets import QualityWidget

    widget = QualityWidget(viewer)
    widget.auto_update.value = False
    widget.masks.value = viewer.layers[f"{name} masks"]
    widget.boxes.value = viewer.layers[f"{name} boxes"]
    widget.forest_choice.value = "from file"
    widget.forest_file.value = forest_path
    widget.compute()
    wait_for(qtbot, widget)
    return widget


def test_quality_widget_equals_core_api(make_napari_viewer, qtbot, small_stack, test_forest, tmp_path):
    viewer = make_napari_viewer()
    detect(viewer, qtbot, small_stack[0])
    forest, path = test_forest
    widget = quality_widget(viewer, qtbot, path)
    masks, boxes = viewer.layers["tem masks"], viewer.layers["tem boxes"]
    expected, _ = predicted_quality(StackDetections.from_layer_data(masks.data, boxes.data, boxes.features), forest)
    pd.testing.assert_frame_equal(widget.table, expected)
    assert widget.table_view.rowCount() == 4
    widget.go_to_frame(3)
    assert viewer.dims.current_step[0] == 3
    assert widget.explanation.startswith("frame 3")
    out = widget.export_csv(tmp_path / "quality.csv")
    assert len(pd.read_csv(out)) == 4
    assert "density_per_um2" not in widget.table.columns  # no pixel size was given

    # with a pixel size on the layers, physical read-outs join the table
    for layer in (masks, boxes):
        layer.metadata["detection_qc"]["pixel_size_nm"] = 0.4
    widget.compute()
    wait_for(qtbot, widget)
    assert (widget.table["density_per_um2"] > 0).any() and widget.table_view.columnCount() == 10

    # deleting a box changes the prediction input; with auto update the widget recomputes itself
    widget.auto_update.value = True
    count_before = int(widget.table.loc[0, "count"])
    first = int(np.flatnonzero(boxes.features["frame"].to_numpy() == 0)[0])
    boxes.selected_data = {first}
    boxes.remove_selected()
    qtbot.waitUntil(lambda: int(widget.table.loc[0, "count"]) == count_before - 1, timeout=WORKER_TIMEOUT_MS)


def test_quality_widget_bad_layers(make_napari_viewer, qtbot, test_forest):
    from napari_detection_qc.widgets import QualityWidget

    viewer = make_napari_viewer()
    widget = QualityWidget(viewer)
    widget.auto_update.value = False
    widget.compute()
    assert "pick a masks" in widget.status.value
    viewer.add_labels(np.zeros((3, 32, 32), np.uint8), name="m")
    viewer.add_shapes([np.array([[0, 1, 1], [0, 1, 5], [0, 5, 5], [0, 5, 1]])], shape_type="rectangle", name="s")
    widget.masks.value, widget.boxes.value = viewer.layers["m"], viewer.layers["s"]
    widget.forest_choice.value = "from file"
    widget.forest_file.value = test_forest[1]
    widget.compute()
    assert "no 'score' feature" in widget.status.value
    viewer.layers["s"].features = pd.DataFrame({"score": [0.5], "frame": [7]})
    widget.compute()
    assert "frames outside" in widget.status.value
    viewer.add_labels(np.zeros((2, 2, 32, 32), np.uint8), name="m4")
    widget.masks.value = viewer.layers["m4"]
    widget.compute()
    assert "4-D" in widget.status.value
    assert widget.worker is None


def test_training_loop_changes_the_forest(make_napari_viewer, qtbot, small_stack, test_forest):
    from napari_detection_qc.widgets import TrainingWidget

    viewer = make_napari_viewer()
    images, truth = small_stack
    detect(viewer, qtbot, images)
    forest, path = test_forest
    quality = quality_widget(viewer, qtbot, path)
    before = quality.table["f1"].to_numpy().copy()

    widget = TrainingWidget(viewer)
    widget.masks.value = viewer.layers["tem masks"]
    widget.boxes.value = viewer.layers["tem boxes"]
    gt_layer = widget.seed_ground_truth()
    assert gt_layer.name == "tem ground truth"
    np.testing.assert_array_equal(gt_layer.data, viewer.layers["tem masks"].data)
    assert widget.seed_ground_truth() is None and "exists already" in widget.status.value
    widget.score_labeled_frames()
    assert "no labeled frames" in widget.status.value

    # the user corrects frames 0 and 1 (here: replaces them with the true masks) and checks frame 3 empty
    gt_layer.data[0] = truth[0]
    gt_layer.data[1] = truth[1]
    widget.mark_reviewed(0)
    widget.mark_reviewed(1)
    widget.mark_empty(3)
    scores = widget.score_labeled_frames()
    stack = StackDetections.from_layer_data(
        viewer.layers["tem masks"].data, viewer.layers["tem boxes"].data, viewer.layers["tem boxes"].features
    )
    expected = true_quality(stack, gt_layer.data, [0, 1, 3])
    pd.testing.assert_frame_equal(scores[expected.columns], expected)
    assert expected.loc[2, "n_true"] == 0

    widget.refit()  # adds the 3 frames to the forest's 200 training frames
    wait_for(qtbot, widget)
    assert widget.session.forest is not None and widget.session.forest.n_training == 203
    assert "cross-validated F1" in widget.metrics.text()
    qtbot.waitUntil(lambda: quality.forest is widget.session.forest, timeout=WORKER_TIMEOUT_MS)
    assert not np.allclose(quality.table["f1"].to_numpy(), before)

    widget.mode.value = "replace it with my frames only"
    widget.refit()
    assert "at least 5" in widget.status.value


def test_training_files_round_trip(make_napari_viewer, tmp_path, test_forest):
    from napari_detection_qc.training_set import TrainingSet
    from napari_detection_qc.widgets import TrainingWidget

    viewer = make_napari_viewer()
    widget = TrainingWidget(viewer)
    widget.save_forest(tmp_path / "none.skops")
    assert "no forest" in widget.status.value
    widget.load_forest(test_forest[1])
    assert widget.session.forest.n_training == 200
    widget.save_forest(tmp_path / "again.skops")
    assert QualityForest.load(tmp_path / "again.skops").n_training == 200
    (tmp_path / "bad.skops").write_bytes(b"not a forest")
    widget.load_forest(tmp_path / "bad.skops")
    assert "not a readable forest" in widget.status.value
    widget.training_set = TrainingSet.from_forest(test_forest[0])
    widget.save_training_set(tmp_path / "set.csv")
    widget.load_training_set(tmp_path / "set.csv")
    assert len(widget.training_set) == 200
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    widget.load_training_set(tmp_path / "bad.csv")
    assert "not a training set" in widget.status.value
