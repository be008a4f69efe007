"""Quality step: predicted F1 / precision / recall per frame from a masks + boxes layer pair. The
controls live in the step; the plot, the table and the features that pulled the current frame
down (SHAP) live in the results dock under the canvas. Recomputes in the background, debounced,
whenever the layers change; layers that do not belong together are refused with the reason. The
detector's signals stored with the detections (Detection step, "quality signals") feed forests that
use them; a forest that needs more than the layers hold says which setting to detect with."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, PushButton
from napari.layers import Labels, Shapes
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_detection_qc.detections.coco import write_coco
from napari_detection_qc.io.layer_pair import count_unboxed, pair_record, stored_signals
from napari_detection_qc.io.pixel_sizes import pixel_size_from_layer
from napari_detection_qc.quality.counts import stack_summary, with_count_estimates
from napari_detection_qc.quality.features import feature_label
from napari_detection_qc.quality.forest_choice import (
    ForestChoice,
    ForestReference,
    forest_reference,
    is_loaded,
    load_forest,
)
from napari_detection_qc.quality.signals import frames_lacking
from napari_detection_qc.widgets._common import (
    LayerPicker,
    StatusLine,
    Step,
    detections_from_layers,
    has_detection_record,
    has_scores,
    labels_data,
    layer_detector,
    row,
)
from napari_detection_qc.widgets.pair_sync import PairSync
from napari_detection_qc.widgets.results_dock import alive, results_dock

if TYPE_CHECKING:
    from napari_detection_qc.quality.forest import QualityForest

FOREST_AUTO = "auto (matches the detector)"
FOREST_DEFAULT = "bundled default"
FOREST_LI2025 = "li2025 (authors' detectron2 model)"
FOREST_SESSION = "from the Training step"
FOREST_FILE = "from file"
FOREST_CHOICES = (FOREST_AUTO, FOREST_DEFAULT, FOREST_LI2025, FOREST_SESSION, FOREST_FILE)
CHOICE_OF_LABEL = {
    FOREST_AUTO: ForestChoice.AUTO,
    FOREST_DEFAULT: ForestChoice.DEFAULT,
    FOREST_LI2025: ForestChoice.LI2025,
    FOREST_FILE: ForestChoice.FILE,
}
TABLE_COLUMNS = (
    "count",
    "f1",
    "f1_low",
    "f1_high",
    "precision",
    "recall",
    "in_domain",
    "count_estimate",
    "count_low",
    "count_high",
)
PHYSICAL_COLUMNS = ("density_per_um2", "mean_diameter_nm", "p_true_mean_diameter_nm")
ESTIMATE_COLUMNS = ("density_estimate_per_um2", "density_low_per_um2", "density_high_per_um2", "count_note")
DEBOUNCE_MS = 300


class QualityPanel(QWidget):
    """The per-frame plot beside the table (row headers are the frames, 0-based like napari's
    slider) and the explanation of the current frame."""

    def __init__(self):
        from napari_detection_qc.widgets.plots import QualityPlot

        super().__init__()
        self.plot = QualityPlot()
        self.table_view = QTableWidget(0, len(TABLE_COLUMNS))
        self.table_view.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.explanation = QLabel("")
        self.explanation.setWordWrap(True)
        self.explanation.setFixedHeight(3 * self.explanation.fontMetrics().height() + 6)
        right = QVBoxLayout()
        right.addWidget(self.table_view)
        right.addWidget(self.explanation)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.plot, 3)
        layout.addLayout(right, 2)

    def clear(self) -> None:
        self.plot.clear()
        self.table_view.setRowCount(0)
        self.explanation.setText("")

    def fill(self, table: pd.DataFrame) -> None:
        view = self.table_view
        columns = [c for c in (*TABLE_COLUMNS, *PHYSICAL_COLUMNS, *ESTIMATE_COLUMNS) if c in table.columns]
        view.setColumnCount(len(columns))
        view.setHorizontalHeaderLabels(columns)
        view.setRowCount(len(table))
        view.setVerticalHeaderLabels([str(int(t)) for t in table["frame"]])
        for r, values in enumerate(table.loc[:, columns].itertuples(index=False)):
            for c, value in enumerate(values):
                if isinstance(value, (bool, np.bool_)):
                    text = "yes" if value else "no"
                elif isinstance(value, (float, np.floating)):
                    text = f"{value:.3f}"
                else:
                    text = str(value)
                view.setItem(r, c, QTableWidgetItem(text))
        view.resizeColumnsToContents()


class QualityWidget(Step):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.masks = LayerPicker(napari_viewer, Labels, "masks", prefer=has_detection_record)
        self.boxes = LayerPicker(napari_viewer, Shapes, "boxes", prefer=has_scores)
        self.forest_choice = ComboBox(label="forest", choices=FOREST_CHOICES, value=FOREST_AUTO)
        self.forest_file = FileEdit(label="forest file", mode="r", filter="*.skops", visible=False)
        self.forest_name = QLabel("")
        self.forest_name.setWordWrap(True)
        self.forest_note = StatusLine()  # the forest's signals_note: one elided line, in full as tooltip
        self.threshold = FloatSpinBox(label="flag F1 below", value=0.5, min=0.0, max=1.0, step=0.05)
        self.auto_update = CheckBox(text="update when the layers change", value=True)
        self.compute_button = PushButton(text="Predict quality")
        self.export_button = PushButton(text="Export CSV…")
        self.export_coco_button = PushButton(text="Export COCO…")
        self.summary = StatusLine()  # the stack's mean estimated density (or count) with its interval
        self.add_section("Detections", self.masks, self.boxes)
        self.add_section(
            "Forest", self.forest_choice, self.forest_file, self.forest_name, self.forest_note, self.threshold
        )
        self.add_section(
            "Predict",
            self.auto_update,
            row(self.compute_button, self.export_button, self.export_coco_button),
            self.summary,
        )

        self.table: pd.DataFrame | None = None
        self.features: pd.DataFrame | None = None
        self.forest: QualityForest | None = None
        self.worker = None
        self._pending = False
        self._watched: list = []
        self._sync: PairSync | None = None
        self._timer = self.work.timer(DEBOUNCE_MS, lambda: self.compute(automatic=True), single_shot=True)
        self._automatic = False

        self.compute_button.changed.connect(lambda: self.compute())
        self.export_button.changed.connect(self._ask_export)
        self.export_coco_button.changed.connect(self._ask_export_coco)
        self.forest_choice.changed.connect(self._on_forest_choice)
        self.forest_file.changed.connect(self.request)
        self.threshold.changed.connect(self._redraw)
        self.masks.changed.connect(self._watch_layers)
        self.boxes.changed.connect(self._watch_layers)
        self.work.listen(self.viewer.dims.events.current_step, self._on_step)
        self.work.listen(self.session.forest_changed, self._on_session_forest)
        self.work.listen(self.session.detections_changed, self._on_detections)
        self._watch_layers()

    @cached_property
    def panel(self) -> QualityPanel:
        """The plot and table in the results dock, built when first shown (matplotlib loads then,
        not while the dock opens)."""
        panel = QualityPanel()
        panel.plot.frame_clicked.connect(self.go_to_frame)
        panel.table_view.cellClicked.connect(lambda r, _c: self.go_to_frame(int(self.table.iloc[r]["frame"])))
        return panel

    @property
    def plot(self):
        return self.panel.plot

    @property
    def table_view(self) -> QTableWidget:
        return self.panel.table_view

    # -- inputs ------------------------------------------------------------------------------------
    def _on_forest_choice(self, value: str) -> None:
        self.forest_file.visible = value == FOREST_FILE
        self.request()

    def _on_session_forest(self, _forest) -> None:
        if self.forest_choice.value == FOREST_SESSION:
            self.request()
        self.forest_choice.value = FOREST_SESSION

    def _on_detections(self, masks, boxes, finished: bool) -> None:
        """The layers a detection makes become this step's layers; predict once it is done (as the
        user asked: a problem is reported as such)."""
        self.masks.value, self.boxes.value = masks, boxes
        if finished:
            self.compute()

    def _watch_layers(self, _value=None) -> None:
        """Recompute (debounced) when the chosen layers are edited, and keep them consistent."""
        for emitter in self._watched:
            self.work.forget(emitter, self.schedule)
        if self._sync is not None:
            self._sync.disconnect()
            self._sync = None
        self._watched = []
        masks, boxes = self.masks.value, self.boxes.value
        if masks is not None:
            self._watched += [masks.events.paint, masks.events.data]
        if boxes is not None:
            self._watched += [boxes.events.data, boxes.events.features]
        for emitter in self._watched:
            self.work.listen(emitter, self.schedule)
        if masks is not None and boxes is not None:
            self._sync = PairSync(
                self.session,
                masks,
                boxes,
                self.work.guarded(self.status.info),
                lambda: self.viewer.dims.current_step[0],
                self.work,
            )
        self.schedule()

    def schedule(self, _event=None) -> None:
        """A layer changed: recompute soon, if the user wants updates on layer changes."""
        if self.auto_update.value and not self.session.is_busy(self.masks.value, self.boxes.value):
            self.request()

    def request(self, _value=None) -> None:
        """Recompute soon (debounced) when both layers are chosen."""
        if self.masks.value is not None and self.boxes.value is not None:
            self._timer.start()

    def chosen_forest(self) -> tuple[QualityForest | ForestReference, str]:
        """The chosen forest (the Training step's, or a reference the worker loads) and an honest
        name for it; cheap, on the UI thread."""
        choice = self.forest_choice.value
        if choice == FOREST_SESSION:
            if self.session.forest is None:
                raise ValueError("no forest refit or loaded in the Training step yet")
            return self.session.forest, self.session.source
        reference = forest_reference(
            CHOICE_OF_LABEL[choice], layer_detector(self.boxes.value), self.forest_file.value
        )
        return reference, reference.name

    # -- computing ---------------------------------------------------------------------------------
    def compute(self, automatic: bool = False) -> None:
        """Featurize the layers and predict, in a worker; a change meanwhile queues one rerun. A
        debounced request still waiting is served by this run (no second prediction after it).
        ``automatic``: a recompute the user did not ask for (the layers changed); a problem then
        shows in the status line only, not as an error pop-up."""
        self._timer.stop()
        if self.worker is not None:
            self._pending = True
            return
        self._automatic = automatic
        if self.session.is_busy(self.masks.value, self.boxes.value):
            self.status.value = "waiting for the detection to finish…"  # it asks again when done
            return
        masks, boxes = self.masks.value, self.boxes.value
        try:
            stack = detections_from_layers(masks, boxes)
            forest, name = self.chosen_forest()
            signals = stored_signals(pair_record(boxes.metadata), len(stack))
        except ValueError as exc:
            self._clear()
            self._report_problem(str(exc))
            return
        loading = isinstance(forest, ForestReference) and not is_loaded(forest.key)
        self.status.value = "loading the forest and predicting quality…" if loading else "predicting quality…"
        self.worker = self.work.run(
            quality_with_readouts,
            stack,
            forest,
            layer_detector(boxes),
            pixel_size_from_layer(boxes),
            labels_data(masks),
            boxes.features.copy(),
            signals,
            returned=lambda result: self._show(result, name, signals),
            errored=self._on_error,
            finished=self._on_finished,
        )

    def _clear(self) -> None:
        """Nothing shown is better than numbers from inputs that are no longer valid."""
        self.table = self.features = None
        self.summary.value = ""
        self.panel.clear()

    def _on_error(self, exc: Exception) -> None:
        self._clear()
        self._report_problem(str(exc) if isinstance(exc, ValueError) else f"quality prediction failed: {exc}")

    def _report_problem(self, text: str) -> None:
        if self._automatic:
            self.status.value = f"✖ {text}"
        else:
            self.status.error(text)

    def _on_finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.compute(automatic=True)

    def _show(self, result: LayerQuality, name: str, signals: list[dict]) -> None:
        if not alive(self.panel):
            return  # the viewer closed while the worker ran
        self.table, self.features, ignored, warning = (
            result.table,
            result.features,
            result.unboxed,
            result.warning,
        )
        forest = self.forest = self.session.in_use = result.forest
        self.forest_name.setText(f"using: {name} ({forest.n_training} training frames)")
        self.forest_note.value = forest.scoring_note(detected_with_signals=any(signals))
        results_dock(self.viewer).show_page(self.panel, "Quality per frame")
        self.panel.fill(self.table)
        self._redraw()
        poor = int((self.table["f1"] < self.threshold.value).sum())
        outside = int((~self.table["in_domain"]).sum())
        message = (
            f"{len(self.table)} frame(s): mean predicted F1 {self.table['f1'].mean():.2f}; "
            f"{poor} under {self.threshold.value:g}, {outside} out of domain"
        )
        self.summary.value = stack_summary(self.table).describe()
        if ignored:
            message += f"; {ignored} mask(s) without a box ignored"
        if warning:
            self.status.warn(warning)
        elif ignored:
            self.status.warn(message)
        else:
            self.status.value = message
        self._explain(self.current_frame())

    def _redraw(self, _value=None) -> None:
        if self.table is not None:
            self.plot.show_table(self.table, self.threshold.value, self.current_frame())

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

    @property
    def explanation(self) -> str:
        return self.panel.explanation.text()

    def _explain(self, frame: int | None) -> None:
        """The features that pushed this frame's predicted F1 down most (SHAP), in plain words."""
        if frame is None or self.features is None or frame >= len(self.features):
            self.panel.explanation.setText("")
            return
        from napari_detection_qc.quality.explain import (
            ExplanationUnavailable,
            frame_contributions,
            strongest_negative,
        )

        r = self.table.iloc[frame]
        text = f"frame {frame}: predicted F1 {r['f1']:.2f} [{r['f1_low']:.2f}, {r['f1_high']:.2f}]"
        if r["count"] == 0:  # every feature is 0: no feature "pulls" anything
            self.panel.explanation.setText(
                f"{text}; no detections here: frames like it often held objects the detector missed. If it "
                "truly has none, mark it 'Checked: no objects' in the Training step"
            )
            return
        try:
            contributions = frame_contributions(self.forest, self.features.iloc[[frame]]).iloc[0]
        except ExplanationUnavailable as exc:
            self.panel.explanation.setText(f"{text}; {exc}")
            return
        pushed_down = strongest_negative(contributions)
        if pushed_down:
            text += "; pulled down by: " + ", ".join(
                f"{feature_label(name)} ({value:+.2f})" for name, value in pushed_down
            )
        self.panel.explanation.setText(text)

    # -- export ------------------------------------------------------------------------------------
    def _ask_export(self) -> None:
        if self.table is None:
            self.status.error("nothing to export yet: predict quality first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export quality table", "quality.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def _ask_export_coco(self) -> None:
        try:
            detections_from_layers(self.masks.value, self.boxes.value)
        except ValueError as exc:
            self.status.error(f"nothing to export: {exc}")
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export detections as COCO", "detections.json", "COCO JSON (*.json)"
        )
        if path:
            self.export_coco(path)

    def export_coco(self, path) -> Path | None:
        """The chosen layers' detections as COCO JSON (RLE masks, boxes, scores, and the detector
        record and pixel size in its ``info``): what napari's File > Save writes for the pair."""
        from napari_detection_qc.io.writers import stack_document

        try:  # checks the pair (one-line errors) and rebuilds the detections once
            stack = detections_from_layers(self.masks.value, self.boxes.value)
        except ValueError as exc:
            self.status.error(str(exc))
            return None
        boxes = self.boxes.value
        document = stack_document(stack, pair_record(boxes.metadata), source_file_name(self.viewer, boxes))
        path = write_coco(path, document)
        self.status.info(f"wrote {stack.total_count} detections to {path}")
        return path

    def export_csv(self, path) -> Path | None:
        if self.table is None:
            self.status.error("nothing to export yet: predict quality first")
            return None
        path = Path(path)
        self.table.to_csv(path, index=False)
        self.status.info(f"wrote {len(self.table)} rows to {path}")
        return path


def source_file_name(viewer, boxes) -> str:
    """The name COCO images of these detections get: the file the image layer was read from (by
    our reader, which records it, or by any other, which napari records as the layer's source),
    else the image layer's name."""
    image_name = pair_record(boxes.metadata).get("image_layer") or boxes.name.removesuffix(" boxes")
    image = viewer.layers[image_name] if image_name in viewer.layers else None  # noqa: SIM401 (a LayerList)
    source = None
    if image is not None:
        source = pair_record(image.metadata).get("source") or getattr(image.source, "path", None)
    return Path(source).name if source else image_name


def check_signals(forest: QualityForest, signals: list[dict]) -> None:
    """A one-line error naming the "quality signals" setting to detect with, when the forest's
    features need signals some frames were detected without."""
    required = forest.required_signals
    lacking = frames_lacking(required, signals)
    if lacking:
        shown = ", ".join(map(str, lacking[:5])) + ("…" if len(lacking) > 5 else "")
        raise ValueError(
            f"this forest needs the detector's signals, which frame(s) {shown} lack: detect again "
            f"with quality signals '{required}' (Detection step), or choose another forest"
        )


@dataclass
class LayerQuality:
    """What the Quality step shows for a layer pair: the per-frame table (with density and
    diameter when the pixel size is known), the frames' features, the forest used, how many masks
    have no box (ignored), and a warning when the forest was fitted for another detector."""

    table: pd.DataFrame
    features: pd.DataFrame
    forest: QualityForest
    unboxed: int
    warning: str | None


def quality_with_readouts(
    stack,
    forest: QualityForest | ForestReference,
    detector: dict | None,
    pixel_size_nm: float | None,
    labels,
    box_features,
    signals: list[dict] | None = None,
) -> LayerQuality:
    """Worker body: load the forest if it is a reference (once per process), check that the
    detections carry the signals it needs, and predict; also builds the cached explainer, all off
    the UI thread. ``signals``: each frame's stored detector signals (``stored_signals``)."""
    from napari_detection_qc.quality.explain import ExplanationUnavailable, frame_contributions
    from napari_detection_qc.quality.scoring import physical_readouts, predicted_quality

    if isinstance(forest, ForestReference):
        forest = load_forest(forest.key)
    check_signals(forest, signals or [])
    table, features = predicted_quality(stack, forest, signals)
    if len(features):
        with suppress(ExplanationUnavailable):  # the explanation line says what to install
            frame_contributions(forest, features.iloc[:1])
    if pixel_size_nm:
        readouts = physical_readouts(stack, pixel_size_nm)
        table = pd.concat([table, readouts.loc[:, list(PHYSICAL_COLUMNS)]], axis=1)
    table = with_count_estimates(table, stack.image_shape, pixel_size_nm)
    return LayerQuality(
        table, features, forest, count_unboxed(labels, box_features), forest.detector_mismatch(detector)
    )
