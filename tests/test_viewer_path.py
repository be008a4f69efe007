"""The plugin as napari runs it: docks added through ``add_plugin_dock_widget`` (napari then hands
the widgets proxies of the viewer), files opened with ``viewer.open``, buttons pressed. A normal
run shows no error, the Quality step never shows numbers for a pair still being detected, the
event loop keeps turning, and closing the viewer in the middle of the work raises nothing."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tifffile
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import QTimer

from napari_detection_qc.synthetic import make_stack

PLUGIN = "napari-detection-qc"
ALL_STEPS = "Detection QC (all steps)"
WORKER_TIMEOUT_MS = 180_000
MAX_EVENT_LOOP_GAP_S = (
    2.0  # under the 3-7 s that loading the forest or torch on the UI thread takes, with room
)
# for a busy 2-core machine; bench_viewer_path.py reports the real figure


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    images, _ = make_stack(11, 4, shape=(256, 256), domain=["clean", "low_dose", "clean", "overfocus"])
    path = tmp_path_factory.mktemp("viewer") / "stack.tif"
    tifffile.imwrite(path, np.clip(images, 0, 255).astype(np.uint8), photometric="minisblack")
    return path


class LoopWatch:
    """A 20 ms timer that records the longest interval between its ticks: how long the UI thread
    was blocked."""

    def __init__(self):
        self.longest = 0.0
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(20)
        self._timer.timeout.connect(self._tick)

    def _tick(self):
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now

    def start(self):
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self):
        self._timer.stop()


@pytest.fixture
def errors():
    """Error notifications shown while the test runs."""
    seen = []

    def record(notification):
        if notification.severity >= NotificationSeverity.ERROR:
            seen.append(notification.message)

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def test_detect_then_quality_through_napari_without_false_errors(
    make_napari_viewer, qtbot, stack_file, errors
):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(stack_file))
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, ALL_STEPS)
    detection, quality = dock.detection, dock.quality
    assert detection.image.value is image or detection.image.value.name == image.name

    # napari's own first Labels and Shapes layers in a process cost about a second of UI time (their
    # Qt controls, vispy glyphs) whoever adds them: paid here, so the watch below measures the plugin
    for layer in (viewer.add_labels(np.zeros((8, 8), np.uint8)), viewer.add_shapes()):
        viewer.layers.remove(layer)
    qtbot.wait(3000)  # the user looks at the settings; the dock warms up in the background meanwhile
    shown_while_busy = []
    original_show = quality._show

    def watched_show(result, *args):
        shown_while_busy.append(quality.session.is_busy(quality.masks.value, quality.boxes.value))
        original_show(result, *args)

    quality._show = watched_show
    watch = LoopWatch()
    watch.start()
    detection.run_button.native.click()
    assert not detection.progress_bar.isHidden() and not detection.run_button.enabled
    qtbot.waitUntil(lambda: detection.worker is None, timeout=WORKER_TIMEOUT_MS)
    qtbot.waitUntil(lambda: quality.table is not None and quality.worker is None, timeout=WORKER_TIMEOUT_MS)
    watch.stop()

    assert errors == []
    assert not any(shown_while_busy), "the Quality step showed numbers for layers still being detected"
    assert len(quality.table) == 4 and quality.table["f1"].between(0, 1).all()
    assert not quality.status.value.startswith("✖")
    assert watch.longest < MAX_EVENT_LOOP_GAP_S, f"UI blocked for {watch.longest:.2f} s"
    # the steps of separate docks share one session, though napari gives each its own proxy
    _, lone_quality = viewer.window.add_plugin_dock_widget(PLUGIN, "Quality")
    assert lone_quality.session is quality.session


def test_cancel_state_stays_until_the_run_stops(make_napari_viewer, qtbot, stack_file):
    viewer = make_napari_viewer()
    viewer.open(str(stack_file))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detection")
    widget.run_button.native.click()
    widget.cancel_button.native.click()
    assert not widget.cancel_button.enabled
    widget._show_progress()  # the once-a-second tick
    assert widget.progress_text.value.startswith("cancelling")
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert widget.status.value.startswith("⚠ cancelled")


def test_scope_shows_for_stacks_only_and_devices_are_listed(make_napari_viewer, qtbot, stack_file):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Detection")
    # the devices torch sees fill in once torch is imported in the background; the build is named
    qtbot.waitUntil(lambda: widget.device.tooltip.startswith("torch "), timeout=WORKER_TIMEOUT_MS)
    labels = [widget.device.native.itemText(i) for i in range(widget.device.native.count())]
    assert labels[0].startswith("auto: ") and "cpu" in labels and widget.device.value == "auto"
    viewer.add_image(np.zeros((64, 64), np.uint8), name="single")
    widget.image.value = viewer.layers["single"]
    assert widget.scope.native.isHidden()
    [stack] = viewer.open(str(stack_file))
    widget.image.value = stack
    assert not widget.scope.native.isHidden()


CLOSE_DURING_WORK = textwrap.dedent("""
    import sys, numpy as np, napari
    from qtpy.QtCore import QTimer
    from napari_detection_qc.synthetic import make_stack

    images, labels = make_stack(3, 3, shape=(192, 192), domain="clean")
    viewer = napari.Viewer(show=True)
    image = viewer.add_image(images.astype(np.float32), name="tem")
    _, dock = viewer.window.add_plugin_dock_widget("napari-detection-qc", "Detection QC (all steps)")
    truth = viewer.add_labels(labels, name="tem ground truth")
    training = dock.training
    training.ground_truth.value = truth
    training.mark_reviewed(0, quiet=True)
    training.mark_reviewed(1, quiet=True)
    section = training.finetune
    section.image.value = image
    section.minutes.value = 5.0
    step = sys.argv[1]
    if step == "finetune":
        section.run_button.native.click()
        started, working = section.worker, lambda: section.status.value.startswith("step")
    else:
        dock.detection.run_button.native.click()
        started, working = dock.detection.worker, lambda: dock.detection.progress.done >= 1
    assert started is not None
    poll = QTimer()
    poll.timeout.connect(lambda: working() and viewer.close())  # in the middle of the work
    poll.start(50)
    QTimer.singleShot(60_000, viewer.close)
    napari.run()
    print("closed cleanly")
""")


@pytest.mark.parametrize("step", ["finetune", "detect"])
def test_closing_the_viewer_mid_work_raises_nothing(tmp_path, step):
    script = tmp_path / "close.py"
    script.write_text(CLOSE_DURING_WORK)
    result = subprocess.run([sys.executable, str(script), step], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "closed cleanly" in result.stdout
    for symptom in ("Traceback", "RuntimeError", "has been deleted", "cannot schedule new futures"):
        assert symptom not in output, output[-3000:]


def test_deleting_the_masks_layer_mid_run_stops_with_one_line(make_napari_viewer, qtbot, stack_file, errors):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(stack_file))
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, ALL_STEPS)
    detection = dock.detection
    detection.run_button.native.click()
    viewer.layers.remove(f"{image.name} masks")
    qtbot.waitUntil(lambda: detection.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert "deleted while it ran" in detection.status.value
    assert len(errors) == 1 and "\n" not in errors[0]
    assert dock.quality.masks.value is None  # nothing points at the deleted layer


def test_ground_truth_editing_shows_over_outlined_predictions(make_napari_viewer, qtbot, stack_file):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(stack_file))
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, ALL_STEPS)
    dock.detection.run_button.native.click()
    qtbot.waitUntil(lambda: dock.detection.worker is None, timeout=WORKER_TIMEOUT_MS)
    training = dock.training
    masks = viewer.layers[f"{image.name} masks"]
    assert masks.contour == 0
    training.seed_button.native.click()
    assert f"{image.name} ground truth" in viewer.layers
    assert masks.contour > 0  # predictions outlined: an edit of the ground truth shows
    training.outline_predictions.value = False  # the user's choice, reversible
    assert masks.contour == 0
    assert [training.score_table.horizontalHeaderItem(c).text() for c in range(3)] == ["TP", "FP", "FN"]


def test_blank_frame_explained_and_coco_names_the_file_napari_read(make_napari_viewer, qtbot, tmp_path):
    import json

    from skimage.io import imsave

    path = tmp_path / "blank.png"
    imsave(path, np.full((128, 128), 120, np.uint8), check_contrast=False)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari")  # napari's own reader
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, ALL_STEPS)
    dock.detection.run_button.native.click()
    qtbot.waitUntil(lambda: dock.detection.worker is None, timeout=WORKER_TIMEOUT_MS)
    quality = dock.quality
    qtbot.waitUntil(lambda: quality.table is not None and quality.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert int(quality.table["count"].iloc[0]) == 0
    assert "no detections here" in quality.explanation and "pulled down by" not in quality.explanation
    written = quality.export_coco(tmp_path / "out.json")
    assert json.loads(written.read_text())["images"][0]["file_name"] == "blank.png"
