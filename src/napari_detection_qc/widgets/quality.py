"""Quality widget: predicted F1 / precision / recall per frame from a masks + boxes layer pair,
as a clickable plot and a table, with the features that pushed the selected frame down (SHAP).
Recomputes in the background, debounced, whenever the layers change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, PushButton
from napari.layers import Labels, Shapes
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QTableWidget, QTableWidgetItem

from ..coco import detections_to_coco, write_coco
from ..explain import ExplanationUnavailable, frame_contributions, strongest_negative
from ..forest import QualityForest, bundled_forest_for
from ..pixel_sizes import pixel_size_from_layer
from ..scoring import physical_readouts, predicted_quality
from ._common import (
    DOCK_MAX_WIDTH,
    METADATA_KEY,
    LayerPicker,
    StatusLabel,
    container,
    detections_from_layers,
    forest_session,
    layer_detector,
    wrapping_label,
)
from .plots import QualityPlot

FOREST_CHOICES = ("auto (matches the detector)", "bundled default", "li2025 (authors' detectron2 model)",
                  "trained in this viewer", "from file")
TABLE_COLUMNS = ("frame", "count", "f1", "f1_low", "f1_high", "precision", "recall", "in_domain")
PHYSICAL_COLUMNS = ("density_per_um2", "mean_diameter_nm")
DEBOUNCE_MS = 300


class QualityWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.native.setMaximumWidth(DOCK_MAX_WIDTH)
        self.viewer = napari_viewer
        self.session = forest_session(napari_viewer)
        self.masks = LayerPicker(napari_viewer, Labels, "masks")
        self.boxes = LayerPicker(napari_viewer, Shapes, "boxes")
        self.forest_choice = ComboBox(label="forest", choices=FOREST_CHOICES, value=FOREST_CHOICES[0])
        self.forest_file = FileEdit(label="forest file", mode="r", filter="*.skops", visible=False)
        self.threshold = FloatSpinBox(label="flag F1 below", value=0.5, min=0.0, max=1.0, step=0.05)
        self.auto_update = CheckBox(text="update when the layers change", value=True)
        self.compute_button = PushButton(text="Predict quality")
        self.export_button = PushButton(text="Export CSV…")
        self.export_coco_button = PushButton(text="Export COCO…")
        self.status = StatusLabel(value="")
        self.explanation = wrapping_label()
        self.plot = QualityPlot()
        self.table_view = QTableWidget(0, len(TABLE_COLUMNS))
        self.table_view.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table_view.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table_view.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table_view.setMinimumHeight(160)
        self.extend([self.masks, self.boxes, self.forest_choice, self.forest_file, self.threshold,
                     self.auto_update, container(self.compute_button, self.export_button, self.export_coco_button), self.status])
        self.native.layout().addWidget(self.plot)
        self.native.layout().addWidget(self.table_view)
        self.extend([self.explanation])

        self.table: pd.DataFrame | None = None
        self.features: pd.DataFrame | None = None
        self.forest: QualityForest | None = None
        self._forest_cache: dict[str, QualityForest] = {}
        self.worker = None
        self._pending = False
        self._watched: list = []
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.compute)

        self.compute_button.changed.connect(self.compute)
        self.export_button.changed.connect(self._ask_export)
        self.export_coco_button.changed.connect(self._ask_export_coco)
        self.forest_choice.changed.connect(self._on_forest_choice)
        self.forest_file.changed.connect(self.request)
        self.threshold.changed.connect(self._redraw)
        self.masks.changed.connect(self._watch_layers)
        self.boxes.changed.connect(self._watch_layers)
        self.plot.frame_clicked.connect(self.go_to_frame)
        self.table_view.cellClicked.connect(lambda row, _col: self.go_to_frame(int(self.table.iloc[row]["frame"])))
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.session.changed.connect(self._on_session_forest)
        self._watch_layers()

    # -- inputs ------------------------------------------------------------------------------------
    def _on_forest_choice(self, value: str) -> None:
        self.forest_file.visible = value == "from file"
        self.request()

    def _on_session_forest(self, _forest) -> None:
        if self.forest_choice.value == "trained in this viewer":
            self.request()
        self.forest_choice.value = "trained in this viewer"

    def _watch_layers(self, _value=None) -> None:
        """Recompute (debounced) when the chosen layers are edited."""
        for emitter in self._watched:
            emitter.disconnect(self.schedule)
        self._watched = []
        masks, boxes = self.masks.value, self.boxes.value
        if masks is not None:
            self._watched += [masks.events.paint, masks.events.data]
        if boxes is not None:
            self._watched += [boxes.events.data, boxes.events.features]
        for emitter in self._watched:
            emitter.connect(self.schedule)
        self.schedule()

    def schedule(self, _event=None) -> None:
        """A layer changed: recompute soon, if the user wants updates on layer changes."""
        if self.auto_update.value:
            self.request()

    def request(self, _value=None) -> None:
        """Recompute soon (debounced) when both layers are chosen."""
        if self.masks.value is not None and self.boxes.value is not None:
            self._timer.start()

    def resolve_forest(self) -> QualityForest:
        choice = self.forest_choice.value
        if choice == "trained in this viewer":
            if self.session.forest is None:
                raise ValueError("no forest has been trained in this viewer yet (use the training widget)")
            return self.session.forest
        if choice == "from file":
            path = self.forest_file.value
            if not path or not Path(path).is_file():
                raise ValueError("choose a forest file (.skops)")
            key = str(Path(path).resolve())
        elif choice == "bundled default":
            key = "default"
        elif choice.startswith("li2025"):
            key = "li2025"
        else:
            key = bundled_forest_for(layer_detector(self.boxes.value))
        if key not in self._forest_cache:
            self._forest_cache[key] = QualityForest.load(key)
        return self._forest_cache[key]

    # -- computing ---------------------------------------------------------------------------------
    def compute(self) -> None:
        """Featurize the layers and predict, in a worker; a change meanwhile queues one rerun."""
        if self.worker is not None:
            self._pending = True
            return
        try:
            stack = detections_from_layers(self.masks.value, self.boxes.value)
            forest = self.resolve_forest()
        except ValueError as exc:
            self.status.error(str(exc))
            return
        warning = forest.detector_mismatch(layer_detector(self.boxes.value))
        self.worker = create_worker(quality_with_readouts, stack, forest, pixel_size_from_layer(self.boxes.value))
        self.worker.returned.connect(lambda result: self._show(result, forest, warning))
        self.worker.errored.connect(lambda exc: self.status.error(f"quality prediction failed: {exc}"))
        self.worker.finished.connect(self._on_finished)
        self.status.value = "predicting quality…"
        self.worker.start()

    def _on_finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.compute()

    def _show(self, result, forest: QualityForest, warning: str | None) -> None:
        self.table, self.features = result
        self.forest = self.session.in_use = forest
        self._redraw()
        self._fill_table()
        poor = int((self.table["f1"] < self.threshold.value).sum())
        outside = int((~self.table["in_domain"]).sum())
        message = (f"{len(self.table)} frame(s): mean predicted F1 {self.table['f1'].mean():.2f}; "
                   f"{poor} under {self.threshold.value:g}, {outside} out of domain")
        if warning:
            self.status.warn(warning)
        else:
            self.status.value = message
        self._explain(self.current_frame())

    def _redraw(self, _value=None) -> None:
        if self.table is not None:
            self.plot.show_table(self.table, self.threshold.value, self.current_frame())

    def _fill_table(self) -> None:
        view = self.table_view
        columns = list(TABLE_COLUMNS) + [c for c in PHYSICAL_COLUMNS if c in self.table.columns]
        view.setColumnCount(len(columns))
        view.setHorizontalHeaderLabels(columns)
        view.setRowCount(len(self.table))
        for row, values in enumerate(self.table.loc[:, columns].itertuples(index=False)):
            for col, value in enumerate(values):
                if isinstance(value, (bool, np.bool_)):
                    text = "yes" if value else "no"
                elif isinstance(value, (float, np.floating)):
                    text = f"{value:.3f}"
                else:
                    text = str(value)
                view.setItem(row, col, QTableWidgetItem(text))
        view.resizeColumnsToContents()

    # -- frame navigation --------------------------------------------------------------------------
    def current_frame(self) -> int | None:
        if self.table is None:
            return None
        if len(self.table) == 1:
            return 0
        return int(self.viewer.dims.current_step[0])

    def go_to_frame(self, frame: int) -> None:
        if self.table is not None and len(self.table) > 1:
            self.viewer.dims.set_current_step(0, frame)

    def _on_step(self, _event=None) -> None:
        frame = self.current_frame()
        if frame is None or frame >= len(self.table):
            return
        self.plot.highlight(frame)
        self.table_view.selectRow(frame)
        self._explain(frame)

    def _explain(self, frame: int | None) -> None:
        """The features that pushed this frame's predicted F1 down most (SHAP)."""
        if frame is None or self.features is None or frame >= len(self.features):
            self.explanation.value = ""
            return
        row = self.table.iloc[frame]
        text = f"frame {frame}: predicted F1 {row['f1']:.2f} [{row['f1_low']:.2f}, {row['f1_high']:.2f}]"
        try:
            contributions = frame_contributions(self.forest, self.features.iloc[[frame]]).iloc[0]
        except ExplanationUnavailable as exc:
            self.explanation.value = f"{text}<br>{exc}"
            return
        pushed_down = strongest_negative(contributions)
        if pushed_down:
            text += "<br>pulled down by: " + ", ".join(f"{name} ({value:+.3f})" for name, value in pushed_down)
        self.explanation.value = text

    # -- export ------------------------------------------------------------------------------------
    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.native, "Export quality table", "quality.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def _ask_export_coco(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.native, "Export detections as COCO", "detections.json",
                                              "COCO JSON (*.json)")
        if path:
            self.export_coco(path)

    def export_coco(self, path) -> Path | None:
        """The chosen layers' detections as COCO JSON (RLE masks, boxes, scores)."""
        try:
            stack = detections_from_layers(self.masks.value, self.boxes.value)
        except ValueError as exc:
            self.status.error(str(exc))
            return None
        path = write_coco(path, detections_to_coco([(source_file_name(self.viewer, self.boxes.value), stack)]))
        self.status.info(f"wrote {stack.total_count} detections to {path}")
        return path

    def export_csv(self, path) -> Path:
        if self.table is None:
            self.status.error("nothing to export yet: predict quality first")
            raise ValueError("no quality table")
        path = Path(path)
        self.table.to_csv(path, index=False)
        self.status.info(f"wrote {len(self.table)} rows to {path}")
        return path


def source_file_name(viewer, boxes) -> str:
    """The name COCO images of these detections get: the file the image layer was read from
    (our reader records it), else the image layer's name."""
    record = (boxes.metadata or {}).get(METADATA_KEY, {})
    image_name = record.get("image_layer") or boxes.name.removesuffix(" boxes")
    image = viewer.layers[image_name] if image_name in viewer.layers else None
    source = (image.metadata or {}).get(METADATA_KEY, {}).get("source") if image is not None else None
    return Path(source).name if source else image_name


def quality_with_readouts(stack, forest: QualityForest, pixel_size_nm: float | None):
    """Worker body: the predicted-quality table (plus density and diameter when the pixel size is
    known) and the frames' features."""
    table, features = predicted_quality(stack, forest)
    if len(features):
        try:  # builds the cached explainer off the UI thread
            frame_contributions(forest, features.iloc[:1])
        except ExplanationUnavailable:
            pass  # the explanation line says what to install
    if pixel_size_nm:
        readouts = physical_readouts(stack, pixel_size_nm)
        table = pd.concat([table, readouts.loc[:, list(PHYSICAL_COLUMNS)]], axis=1)
    return table, features
