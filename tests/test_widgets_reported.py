"""The reported numbers in the viewer, through the plugin dock as napari adds it: estimated counts
and the stack summary in the Quality step, p_true on the boxes, and the Training step's "Label next"
list whose click goes to the frame."""

import numpy as np
import pytest

from napari_detection_qc.detections.records import StackDetections
from napari_detection_qc.io.layer_pair import pair_record, stored_signals
from napari_detection_qc.quality.counts import COUNT_COLUMNS, with_count_estimates
from napari_detection_qc.quality.p_true import detection_p_true
from napari_detection_qc.quality.ranking import rank_by_features
from napari_detection_qc.quality.scoring import predicted_quality
from napari_detection_qc.synthetic import make_stack

PLUGIN = "napari-detection-qc"
ALL_STEPS = "Detection QC (all steps)"
WORKER_TIMEOUT_MS = 180_000


def settled(quality) -> bool:
    """The Quality step shows numbers and has no prediction running or waiting to run."""
    return quality.table is not None and quality.worker is None and not quality._timer.isActive()


@pytest.fixture(scope="module")
def stack():
    images, _ = make_stack(13, 4, shape=(192, 192), domain=["clean", "low_dose", "dense", "overfocus"])
    return images


def test_counts_p_true_and_label_next_through_the_dock(make_napari_viewer, qtbot, stack):
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="tem")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, ALL_STEPS)
    detection, quality, training = dock.detection, dock.quality, dock.training
    detection.run_button.native.click()
    qtbot.waitUntil(lambda: detection.worker is None, timeout=WORKER_TIMEOUT_MS)
    qtbot.waitUntil(lambda: settled(quality), timeout=WORKER_TIMEOUT_MS)
    qtbot.wait(500)
    qtbot.waitUntil(lambda: settled(quality), timeout=WORKER_TIMEOUT_MS)

    masks, boxes = viewer.layers["tem masks"], viewer.layers["tem boxes"]
    # p_true is a feature of every box, the one function the store writes too
    features = boxes.features
    for t in range(len(stack)):
        rows = features["frame"].to_numpy() == t
        np.testing.assert_allclose(
            features.loc[rows, "p_true"], detection_p_true(features.loc[rows, "score"])
        )

    # the Quality step's estimates are the core API's on the same layers, shown in the table
    table = quality.table
    stack_detections = StackDetections.from_layer_data(masks.data, boxes.data, boxes.features)
    signals = stored_signals(pair_record(boxes.metadata), len(stack))  # the embeddings detection stored
    expected, _ = predicted_quality(stack_detections, quality.forest, signals)
    expected = with_count_estimates(expected, stack_detections.image_shape, None)
    np.testing.assert_allclose(table[list(COUNT_COLUMNS[:3])], expected[list(COUNT_COLUMNS[:3])])
    assert (table["count_low"] <= table["count_estimate"]).all() and (
        table["count_estimate"] <= table["count_high"]
    ).all()
    headers = [
        quality.table_view.horizontalHeaderItem(c).text() for c in range(quality.table_view.columnCount())
    ]
    assert {"count_estimate", "count_low", "count_high"} <= set(headers)
    assert quality.summary.value.startswith("mean estimated count")
    assert quality.plot.count_axes.get_visible()

    # with a pixel size, densities and the stack's mean density with its interval
    detection.pixel_size.value = 0.5
    qtbot.waitUntil(
        lambda: quality.table is not None and "density_estimate_per_um2" in quality.table.columns,
        timeout=WORKER_TIMEOUT_MS,
    )
    qtbot.waitUntil(
        lambda: settled(quality) and quality.summary.value.startswith("mean density"),
        timeout=WORKER_TIMEOUT_MS,
    )
    density = quality.table["density_estimate_per_um2"]
    assert f"{density.mean():.3g} per µm²" in quality.summary.value
    assert "p_true_mean_diameter_nm" in quality.table.columns

    # Label next: press the button, the list fills best first, a click goes to the frame
    training.rank_button.native.click()
    qtbot.waitUntil(lambda: training.next_list.count() == len(stack), timeout=WORKER_TIMEOUT_MS)
    want = rank_by_features(*predicted_quality(stack_detections, quality.forest, signals))
    assert [r.frame for r in training.ranked] == [r.frame for r in want]
    last = training.next_list.item(training.next_list.count() - 1)
    training.next_list.itemClicked.emit(last)
    assert viewer.dims.current_step[0] == want[-1].frame
    assert training.rank_button.enabled
