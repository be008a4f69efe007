"""The detector's signals in the viewer: the Detection step stores them per frame with
the layers, a re-run replaces only its frames' signals, and the Quality step feeds them to a forest
fitted with signals, or says which "quality signals" setting to detect with."""

import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.io.layer_pair import SIGNALS_KEY, stored_signals
from napari_detection_qc.quality.counts import with_count_estimates
from napari_detection_qc.quality.features import CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import NO_EMBEDDINGS_NOTE, NO_SIGNALS_NOTE, QualityForest
from napari_detection_qc.quality.scoring import predicted_quality
from napari_detection_qc.quality.signals import EMBEDDING, TTA_SIGNALS
from napari_detection_qc.widgets._common import detections_from_layers

WORKER_TIMEOUT_MS = 120_000
SIGNAL_FEATURES = ("mean_score", "count", "frac_score_0.9") + TTA_SIGNALS + ("score_hist_distance", "novelty")


def wait_for(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)


def run_detection(widget, qtbot, level, scope="whole stack"):
    widget.signals.value = level
    widget.scope.value = scope
    widget.run()
    wait_for(qtbot, widget)
    assert "detections in" in widget.status.value, widget.status.value


def quality_step(viewer, masks, boxes, forest_path):
    """A Quality step on these layers with a forest file, updated only when asked."""
    from napari_detection_qc.widgets import QualityWidget

    widget = QualityWidget(viewer)
    widget.auto_update.value = False
    widget.masks.value, widget.boxes.value = masks, boxes
    widget.forest_choice.value = "from file"
    widget.forest_file.value = forest_path
    return widget


def training_rows(n=40):
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.uniform(0, 1, (n, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    features[list(TTA_SIGNALS)] = rng.uniform(0, 1, (n, 3))
    f1 = np.clip(features["tta_iou"] + rng.normal(0, 0.05, n), 0, 1)
    return features, pd.DataFrame({"f1": f1, "precision": f1, "recall": f1})


def signal_forest(embeddings, path):
    """A format-2 forest using TTA agreement and novelty, fitted around the frames' own embeddings."""
    features, targets = training_rows()
    rng = np.random.default_rng(2)
    n = len(features)
    training = embeddings[rng.integers(0, len(embeddings), n)] * rng.normal(1, 0.05, (n, embeddings.shape[1]))
    forest = QualityForest(features=SIGNAL_FEATURES, n_estimators=20).fit(
        features, targets, embeddings=training
    )
    assert forest.required_signals == "all" and forest.signals_note is None
    return forest, forest.save(path)


@pytest.fixture
def detected(make_napari_viewer, qtbot, tiny_checkpoint, one_torch_thread):
    from napari_detection_qc.widgets import DetectionWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    images = rng.normal(128, 40, (3, 64, 64)).clip(0, 255).astype(np.uint8)
    images[2] = 90  # a blank frame: signals without an embedding
    viewer.add_image(images, name="tem")
    widget = DetectionWidget(viewer)
    assert widget.signals.value == "cheap" and "0.8x" in widget.signals.tooltip
    widget.engine.value = "torchvision checkpoint"
    widget.weights.value = tiny_checkpoint
    widget.device.value = "cpu"
    run_detection(widget, qtbot, "all")
    return viewer, widget


def test_signals_are_stored_per_frame_and_a_rerun_replaces_only_its_frames(detected, qtbot):
    viewer, widget = detected
    masks, boxes = viewer.layers["tem masks"], viewer.layers["tem boxes"]
    record = boxes.metadata["detection_qc"]
    assert record == masks.metadata["detection_qc"]
    signals = record[SIGNALS_KEY]
    assert list(signals) == ["0", "1", "2"]
    assert set(TTA_SIGNALS) <= set(signals["0"]) and len(signals["0"][EMBEDDING]) == 2 * 4 * 8
    assert EMBEDDING not in signals["2"] and signals["2"]["tta_iou"] == 1.0
    assert all(isinstance(v, float) for v in signals["1"][EMBEDDING])  # JSON-ready
    first = signals["0"]

    viewer.dims.set_current_step(0, 1)
    run_detection(widget, qtbot, "none", scope="current frame")
    signals = boxes.metadata["detection_qc"][SIGNALS_KEY]
    assert list(signals) == ["0", "2"] and signals["0"] == first  # frame 1's went with its old detections
    assert masks.metadata["detection_qc"][SIGNALS_KEY] == signals

    viewer.dims.set_current_step(0, 0)
    run_detection(widget, qtbot, "cheap", scope="current frame")
    signals = boxes.metadata["detection_qc"][SIGNALS_KEY]
    assert set(signals["0"]) == {EMBEDDING, "signal_seconds"}
    np.testing.assert_allclose(
        signals["0"][EMBEDDING], first[EMBEDDING], rtol=1e-5
    )  # same frame, same detector


def test_quality_uses_the_stored_signals_or_says_which_setting_to_detect_with(detected, qtbot, tmp_path):
    viewer, detection = detected
    masks, boxes = viewer.layers["tem masks"], viewer.layers["tem boxes"]
    signals = stored_signals(boxes.metadata["detection_qc"], 3)
    forest, path = signal_forest(
        np.stack([s[EMBEDDING] for s in signals[:2]]).astype(float), tmp_path / "s.skops"
    )
    widget = quality_step(viewer, masks, boxes, path)
    widget.compute()
    wait_for(qtbot, widget)
    stack = detections_from_layers(masks, boxes)
    expected, _ = predicted_quality(stack, forest, signals)
    pd.testing.assert_frame_equal(widget.table, with_count_estimates(expected, stack.image_shape, None))
    assert widget.forest_note.value == ""  # fitted with signals: no note
    assert widget.explanation.startswith("frame") and "novelty" in widget.features.columns

    # frame 1 redone without signals: the forest cannot predict it, and the step says what to do
    viewer.dims.set_current_step(0, 1)
    run_detection(detection, qtbot, "cheap", scope="current frame")
    widget.compute()
    wait_for(qtbot, widget)  # the forest is loaded and checked in the background
    assert widget.table is None
    assert "frame(s) 1 lack" in widget.status.value and "quality signals 'all'" in widget.status.value

    # a forest without signals keeps working on layers with signals, and its note shows
    plain = QualityForest(n_estimators=20).fit(*training_rows())
    widget.forest_file.value = plain.save(tmp_path / "plain.skops")
    widget.compute()
    wait_for(qtbot, widget)
    assert widget.table is not None and len(widget.table) == 3
    assert widget.forest_note.value == NO_SIGNALS_NOTE and widget.forest_note.toolTip() == NO_SIGNALS_NOTE


def test_a_novelty_forest_on_layers_without_embeddings_says_so(detected, qtbot, tmp_path):
    viewer, detection = detected
    masks, boxes = viewer.layers["tem masks"], viewer.layers["tem boxes"]
    embeddings = np.random.default_rng(3).normal(0, 1, (40, 2 * 4 * 8))
    domain_only = QualityForest(n_estimators=20).fit(*training_rows(), embeddings=embeddings)
    assert domain_only.uses_novelty and domain_only.required_signals == "none"
    widget = quality_step(viewer, masks, boxes, domain_only.save(tmp_path / "domain.skops"))
    run_detection(detection, qtbot, "none")  # every frame again, without signals
    widget.compute()
    wait_for(qtbot, widget)
    assert widget.table is not None and widget.forest_note.value == NO_EMBEDDINGS_NOTE
