"""Widget timings on a 100-frame 512x512 stack with the bundled detector, in a real napari viewer.

Prints: the time from pressing Detect to the progress showing in the dock, detection seconds per
frame (streamed, with progress), the time from detections existing
to the quality widget showing its per-frame table and plot, the same after deleting one box
(the recompute a user triggers by editing), and the time to show 10,000 boxes in the Shapes layer.

Reproduce (needs a display; Xvfb is enough):

    xvfb-run -a python benchmarks/bench_widgets.py [--frames 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def wait(app, predicate, timeout=3600.0):
    start = time.perf_counter()
    while not predicate():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - start > timeout:
            raise TimeoutError("timed out")
    return time.perf_counter() - start


def paint_watch_class():
    from qtpy.QtCore import QEvent, QObject

    class PaintWatch(QObject):
        """Records when a widget is painted."""

        def __init__(self, times: list):
            super().__init__()
            self.times = times

        def eventFilter(self, _obj, event):  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.Paint:
                self.times.append(time.perf_counter())
            return False

    return PaintWatch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_detection_qc.quality.forest_choice import load_forest
    from napari_detection_qc.synthetic import PRESETS, make_stack
    from napari_detection_qc.widgets import DetectionWidget, QualityWidget
    from napari_detection_qc.widgets.quality import FOREST_DEFAULT

    PaintWatch = paint_watch_class()  # noqa: N806

    viewer = napari.Viewer()  # shown (under Xvfb): progress is measured by when it is painted
    app = QApplication.instance()
    presets = list(PRESETS)
    images, _ = make_stack(
        1, args.frames, (512, 512), [presets[t % len(presets)] for t in range(args.frames)]
    )
    layer = viewer.add_image(images, name="stack")

    detection = DetectionWidget(viewer)
    detection.image.value = layer
    viewer.window.add_dock_widget(detection, area="right")
    painted = []
    paint_watch = PaintWatch(painted)
    detection.progress_text.installEventFilter(paint_watch)
    for _ in range(50):  # let the window settle
        app.processEvents()
        time.sleep(0.01)
    frame_times = []
    painted.clear()
    start = time.perf_counter()
    detection.run()
    wait(app, lambda: painted)
    progress_shown = painted[0] - start
    detection.worker.yielded.connect(lambda item: frame_times.append(time.perf_counter()))
    wait(app, lambda: detection.worker is None)
    total = time.perf_counter() - start
    n_boxes = len(viewer.layers["stack boxes"].data)
    gaps = np.diff([start] + frame_times)
    print(
        f"detection: progress ({detection.progress.total} frames) in the dock {progress_shown * 1000:.0f} ms "
        f"after Detect; {args.frames} frames in {total:.1f} s ({total / args.frames:.2f} s/frame, "
        f"first frame shown after {frame_times[0] - start:.1f} s, max gap between frames {gaps.max():.2f} s), "
        f"{n_boxes} boxes"
    )

    quality = QualityWidget(viewer)
    quality.auto_update.value = False
    quality.masks.value = viewer.layers["stack masks"]
    quality.boxes.value = viewer.layers["stack boxes"]
    quality.forest_choice.value = FOREST_DEFAULT
    load_forest("default")  # loading the forest file once per process is not part of an update
    returned = []
    start = time.perf_counter()
    quality.compute()
    quality.worker.returned.connect(lambda _result: returned.append(time.perf_counter()))
    wait(app, lambda: quality.table is not None)
    app.processEvents()  # the plot's pending draw
    shown = time.perf_counter()
    print(
        f"quality widget: {args.frames}-frame table and plot shown {shown - start:.2f} s after compute "
        f"(features + forest in the worker {returned[0] - start:.2f} s, table and plot {shown - returned[0]:.2f} s)"
    )
    wait(app, lambda: quality.worker is None)

    boxes = viewer.layers["stack boxes"]
    quality.auto_update.value = True
    before = int(quality.table["count"].sum())
    start = time.perf_counter()
    boxes.selected_data = {0}
    boxes.remove_selected()
    wait(app, lambda: int(quality.table["count"].sum()) == before - 1)
    app.processEvents()
    print(
        f"quality widget: recomputed {time.perf_counter() - start:.2f} s after a box was deleted "
        f"(includes the {300} ms debounce)"
    )

    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 480, size=(10_000, 2))
    frames = rng.integers(0, args.frames, 10_000)
    rects = [
        np.array([[t, y, x], [t, y, x + 20], [t, y + 20, x + 20], [t, y + 20, x]], float)
        for t, (y, x) in zip(frames, corner)
    ]
    start = time.perf_counter()
    viewer.add_shapes(
        (rects, ["rectangle"] * len(rects)),
        name="10k",
        face_color="transparent",
        features={"score": rng.uniform(0.1, 1, 10_000)},
        edge_color="score",
    )
    app.processEvents()
    print(f"10,000 boxes: Shapes layer built and shown in {time.perf_counter() - start:.2f} s")
    viewer.close()


if __name__ == "__main__":
    main()
