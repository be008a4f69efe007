"""Screenshots of the three widgets in use on the bundled sample stack, for the README.

Runs the real loop in a napari window: detect on the sample stack, predict quality, seed ground
truth from the predictions, correct two frames (here with the generator's exact masks, standing
in for the user's corrections), score them and refit the forest.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/make_widget_screenshots.py
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


def main() -> None:
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_detection_qc.sample_data import SAMPLE_FRAME_PRESETS, sample_ground_truth
    from napari_detection_qc.widgets import DetectionWidget, QualityWidget, TrainingWidget

    get_settings().application.gui_notification_level = "none"  # no toasts over the screenshots
    viewer = napari.Viewer(title="napari-detection-qc")
    viewer.window.resize(1600, 1000)
    app = QApplication.instance()
    (images, image_kwargs, _), (truth, _, _) = sample_ground_truth()
    image = viewer.add_image(images, **image_kwargs)

    detection = DetectionWidget(viewer)
    viewer.window.add_dock_widget(detection, name="Detection", area="right")
    detection.image.value = image
    viewer.reset_view()
    detection.run()
    wait(app, lambda: detection.worker is None)
    poor_frame = SAMPLE_FRAME_PRESETS.index("hard_shift")
    viewer.dims.set_current_step(0, 3)
    viewer.reset_view()
    wait(app, lambda: True)
    DOCS.mkdir(exist_ok=True)
    viewer.screenshot(str(DOCS / "widget_detection.png"), canvas_only=False)

    quality = QualityWidget(viewer)
    viewer.window.add_dock_widget(quality, name="Quality", area="right", tabify=True)
    quality.masks.value = viewer.layers[f"{image.name} masks"]
    quality.boxes.value = viewer.layers[f"{image.name} boxes"]
    quality.compute()
    wait(app, lambda: quality.worker is None and quality.table is not None)
    quality.go_to_frame(poor_frame)
    wait(app, lambda: True)
    viewer.screenshot(str(DOCS / "widget_quality.png"), canvas_only=False)

    training = TrainingWidget(viewer)
    viewer.window.add_dock_widget(training, name="Training", area="right", tabify=True)
    training.masks.value = viewer.layers[f"{image.name} masks"]
    training.boxes.value = viewer.layers[f"{image.name} boxes"]
    ground_truth = training.seed_ground_truth()
    for frame in (poor_frame, 5, 6):  # the user's corrections
        ground_truth.data[frame] = truth[frame]
        training.mark_reviewed(frame)
    ground_truth.refresh()
    training.score_labeled_frames()
    training.refit()
    wait(app, lambda: training.worker is None)
    wait(app, lambda: quality.worker is None)
    viewer.layers.selection.active = ground_truth
    viewer.dims.set_current_step(0, poor_frame)
    wait(app, lambda: True)
    viewer.screenshot(str(DOCS / "widget_training.png"), canvas_only=False)
    print("predicted F1 per frame:", np.round(quality.table["f1"].to_numpy(), 2))
    viewer.close()


if __name__ == "__main__":
    main()
