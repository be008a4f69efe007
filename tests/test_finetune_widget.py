"""The training widget's "Fine-tune detector" section in a napari viewer (under Xvfb), on the tiny model."""

import numpy as np
import pytest

from napari_detection_qc.synthetic import make_stack

WORKER_TIMEOUT_MS = 180_000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def section(make_napari_viewer, tiny_checkpoint):
    from napari_detection_qc.widgets import TrainingWidget

    viewer = make_napari_viewer()
    images, truth = make_stack(3, 3, shape=(128, 128), domain="clean")
    viewer.add_image(images, name="tem")
    layer = viewer.add_labels(np.zeros_like(truth), name="tem ground truth")
    widget = TrainingWidget(viewer)
    widget.ground_truth.value = layer
    section = widget.finetune
    section.image.value = viewer.layers["tem"]
    section.base.value = tiny_checkpoint
    section.device.value = "cpu"
    section.minutes.value = 0.05
    section.frames_per_domain = 1
    return widget, section, layer, truth


def test_finetune_section_trains_shows_graphs_and_saves(section, qtbot, tmp_path):
    widget, section, layer, truth = section
    section.run()
    assert "no reviewed frames" in section.status.value and section.worker is None
    for t in range(3):
        layer.data[t] = truth[t]
        widget.mark_reviewed(t)
    section.run()
    assert section.worker is not None and not section.run_button.enabled
    qtbot.waitUntil(lambda: section.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert section.result is not None and section.forest is not None, section.status.value
    assert len(section._history) == len(section.result.history) > 0
    assert "true F1" in section.comparison.text() and section.save_button.enabled
    assert section.curves.figure.axes  # the graphs were drawn
    section.save(tmp_path / "tuned.pt")
    assert (tmp_path / "tuned.pt").is_file() and (tmp_path / "tuned.forest.skops").is_file()
    assert (tmp_path / "tuned.curves.png").is_file()


def test_saved_finetuned_model_detects_the_stack_again(section, qtbot, tmp_path):
    from napari_detection_qc.io.layer_pair import pair_record
    from napari_detection_qc.widgets import DetectionWidget

    widget, section, layer, truth = section
    detection = DetectionWidget(widget.viewer)
    detection.device.value = "cpu"
    for t in range(3):
        layer.data[t] = truth[t]
        widget.mark_reviewed(t)
    section.run()
    qtbot.waitUntil(lambda: section.worker is None, timeout=WORKER_TIMEOUT_MS)
    section.save(tmp_path / "tuned.pt")
    assert detection.weights.value == tmp_path / "tuned.pt" and detection.image.value.name == "tem"
    qtbot.waitUntil(lambda: detection.worker is None, timeout=WORKER_TIMEOUT_MS)
    record = pair_record(widget.viewer.layers["tem boxes"].metadata)
    assert record["detector"]["weights_path"] == str((tmp_path / "tuned.pt").resolve())
    assert record["frames_done"] == [0, 1, 2]


def test_finetune_section_cancel_keeps_nothing(section, qtbot):
    widget, section, layer, truth = section
    for t in range(2):
        layer.data[t] = truth[t]
        widget.mark_reviewed(t)
    section.minutes.value = 5.0
    section.run()
    section.cancel()
    qtbot.waitUntil(lambda: section.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert section.result is None and "cancelled" in section.status.value
    assert not section.save_button.enabled and section.run_button.enabled
