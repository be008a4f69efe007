"""Screenshots of the Detection QC dock in use on the bundled sample stack, for the README, in a
1920 x 1080 window (the screen the layout is designed for).

Runs the real loop: detect on the sample stack (Detection tab), predict quality (Quality tab,
plot and table in the results dock under the canvas), seed ground truth from the predictions,
correct three frames (here with the generator's exact masks, standing in for the user's
corrections), score them and refit the forest (Training tab, parity plot under the canvas).

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/make_widget_screenshots.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"


def wait(app, predicate, timeout=1800.0):
    start = time.perf_counter()
    while not predicate():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - start > timeout:
            raise TimeoutError
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_detection_qc.synthetic.sample_data import SAMPLE_FRAME_PRESETS, sample_ground_truth
    from napari_detection_qc.widgets import DetectionQCWidget

    get_settings().application.gui_notification_level = "none"  # no toasts over the screenshots
    viewer = napari.Viewer(title="napari-detection-qc")
    viewer.window._qt_window.resize(1920, 1080)
    app = QApplication.instance()
    (images, image_kwargs, _), (truth, _, _) = sample_ground_truth()
    viewer.add_image(images, **image_kwargs)
    dock = DetectionQCWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Detection QC", area="right")
    detection, quality, training = dock.detection, dock.quality, dock.training

    detection.pixel_size.value = 0.4
    detection.run()
    wait(app, lambda: detection.progress.done >= 8)  # mid-run: progress in the dock
    DOCS.mkdir(exist_ok=True)
    viewer.dims.set_current_step(0, 3)
    viewer.reset_view()
    wait(app, lambda: True)
    viewer.screenshot(str(DOCS / "widget_detection.png"), canvas_only=False)
    wait(app, lambda: detection.worker is None)

    poor_frame = SAMPLE_FRAME_PRESETS.index("hard_shift")
    dock.setCurrentIndex(1)
    wait(app, lambda: quality.worker is None and quality.table is not None)
    quality.go_to_frame(poor_frame)
    wait(app, lambda: True)
    viewer.screenshot(str(DOCS / "widget_quality.png"), canvas_only=False)

    dock.setCurrentIndex(2)
    ground_truth = training.seed_ground_truth()
    for frame in (poor_frame, 5, 6):  # the user's corrections
        ground_truth.data[frame] = truth[frame]
        training.mark_reviewed(frame)
    ground_truth.refresh()
    training.score_labeled_frames()
    training.refit()
    wait(app, lambda: training.worker is None)
    wait(app, lambda: quality.worker is None and quality.forest is training.session.forest)
    viewer.layers.selection.active = ground_truth
    viewer.dims.set_current_step(0, poor_frame)
    wait(app, lambda: True)
    viewer.screenshot(str(DOCS / "widget_training.png"), canvas_only=False)
    print("predicted F1 per frame:", np.round(quality.table["f1"].to_numpy(), 2))
    viewer.close()


if __name__ == "__main__":
    main()
