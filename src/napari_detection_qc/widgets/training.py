"""Training step: seed an editable ground-truth layer from the predictions, review frames (listed,
click to jump), compute the true F1 of the detections on them, and refit the forest in the
background; the refit forest becomes the Quality step's forest at once. Sections are stacked, so
other features add theirs with ``add_section``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, PushButton
from napari.layers import Labels, Shapes
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_detection_qc.detections.coco import CocoGroundTruth
from napari_detection_qc.io.layer_pair import METADATA_KEY, pair_record, stored_signals
from napari_detection_qc.labels.ground_truth import (
    GroundTruthRecord,
    labeled_frames,
    painted_frames,
    seeded_name,
)
from napari_detection_qc.labels.refit_mode import RefitMode, refit_problem
from napari_detection_qc.quality.forest_choice import forest_for_detector, load_forest
from napari_detection_qc.widgets._common import (
    LayerPicker,
    Step,
    detections_from_layers,
    has_detection_record,
    has_scores,
    labels_data,
    layer_detector,
    row,
)
from napari_detection_qc.widgets.finetune import FinetuneSection
from napari_detection_qc.widgets.results_dock import alive, results_dock

if TYPE_CHECKING:
    from napari_detection_qc.labels.training_set import TrainingSet
    from napari_detection_qc.quality.forest import QualityForest
    from napari_detection_qc.quality.ranking import RankedFrame

SCORE_COLUMNS = ("tp", "fp", "fn", "precision", "recall", "f1", "predicted_f1")
SCORE_HEADERS = {
    "tp": "TP",
    "fp": "FP",
    "fn": "FN",
    "precision": "P",
    "recall": "R",
    "f1": "F1",
    "predicted_f1": "pred. F1",
}
LIST_ROWS = 3
TABLE_ROWS = 2
PARITY_MAX_WIDTH = 420
PREDICTION_OUTLINE_PX = 2


def is_ground_truth(layer) -> bool:
    """A layer seeded here, or one whose name says it is ground truth."""
    return GroundTruthRecord.from_metadata(layer.metadata).seeded_from is not None or layer.name.endswith(
        "ground truth"
    )


def list_rows_high(widget: QListWidget, rows: int) -> None:
    """Fix a list to ``rows`` lines, so it never grows the dock."""
    widget.setFixedHeight(rows * (widget.fontMetrics().height() + 2) + 8)


def table_rows_high(widget: QTableWidget, rows: int) -> None:
    """Fix a table to ``rows`` rows under its header, so it never grows the dock."""
    header = widget.horizontalHeader().sizeHint().height()
    widget.setFixedHeight(header + rows * widget.verticalHeader().defaultSectionSize() + 8)


class TrainingWidget(Step):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.masks = LayerPicker(napari_viewer, Labels, "predicted masks", prefer=has_detection_record)
        self.boxes = LayerPicker(napari_viewer, Shapes, "predicted boxes", prefer=has_scores)
        self.ground_truth = LayerPicker(
            napari_viewer, Labels, "ground truth", prefer=is_ground_truth, only_fallback=False
        )
        self.seed_button = PushButton(text="Start ground truth from predictions")
        self.outline_predictions = CheckBox(
            text="predicted masks as outlines",
            value=True,
            tooltip="while you edit the ground truth, the predicted masks under it show as outlines, so a "
            "mask you delete or change visibly differs from the prediction",
        )
        self.coco_button = PushButton(text="Load COCO ground truth…")
        self.reviewed_button = PushButton(text="Frame reviewed ✓")
        self.empty_button = PushButton(text="Checked: no objects")
        self.frame_list = QListWidget()
        list_rows_high(self.frame_list, LIST_ROWS)
        self.iou = FloatSpinBox(label="IoU threshold", value=0.1, min=0.0, max=1.0, step=0.05)
        self.score_button = PushButton(text="Score labeled frames")
        self.rank_button = PushButton(text="Label next…")
        self.rank_button.tooltip = (
            "rank the frames not yet labeled by how much correcting them is expected to help; "
            "the list opens under the canvas, a click goes to the frame"
        )
        self.score_table = QTableWidget(0, len(SCORE_COLUMNS))
        self.score_table.setHorizontalHeaderLabels([SCORE_HEADERS[c] for c in SCORE_COLUMNS])
        self.score_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table_rows_high(self.score_table, TABLE_ROWS)
        self.score_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.mode = ComboBox(label="refit", choices=[m.value for m in RefitMode], value=RefitMode.ADD.value)
        self.refit_button = PushButton(text="Refit forest")
        self.metrics = QLabel("")
        self.metrics.setWordWrap(True)
        self.metrics.setFixedHeight(4 * self.metrics.fontMetrics().height() + 6)
        self.save_forest_button = PushButton(text="Save forest…")
        self.load_forest_button = PushButton(text="Load forest…")
        self.save_set_button = PushButton(text="Save training set…")
        self.load_set_button = PushButton(text="Load training set…")
        self.add_section("Layers", self.masks, self.boxes, self.ground_truth)
        self.add_section(
            "Ground truth",
            row(self.seed_button, self.coco_button),
            row(self.reviewed_button, self.empty_button),
            self.outline_predictions,
            QLabel("labeled frames (click to go there):"),
            self.frame_list,
        )
        self.add_section("True quality", self.iou, row(self.score_button, self.rank_button), self.score_table)
        self.add_section("Refit forest", self.mode, self.refit_button, self.metrics)
        self.add_section(
            "Files",
            row(self.save_forest_button, self.load_forest_button),
            row(self.save_set_button, self.load_set_button),
        )
        self.finetune = FinetuneSection(self)

        self.training_set: TrainingSet | None = None
        self.scores: pd.DataFrame | None = None
        self.worker = None
        self.loader = None  # a file being read
        self._watched_truth = None
        self.seed_button.changed.connect(self.seed_ground_truth)
        self.outline_predictions.changed.connect(self._show_predictions)
        self.coco_button.changed.connect(self._ask_load_coco)
        self.reviewed_button.changed.connect(lambda: self.mark_reviewed(self.current_frame()))
        self.empty_button.changed.connect(lambda: self.mark_empty(self.current_frame()))
        self.frame_list.itemClicked.connect(lambda item: self.go_to_frame(item.data(256)))
        self.rank_button.changed.connect(self.rank_next)
        self.ranked: list[RankedFrame] = []
        self.score_button.changed.connect(self.score_labeled_frames)
        self.refit_button.changed.connect(self.refit)
        self.save_forest_button.changed.connect(self._ask_save_forest)
        self.load_forest_button.changed.connect(self._ask_load_forest)
        self.save_set_button.changed.connect(self._ask_save_set)
        self.load_set_button.changed.connect(self._ask_load_set)
        self.ground_truth.changed.connect(self._watch_truth)
        self.work.listen(self.session.detections_changed, self._on_detections)
        self._watch_truth()

    @cached_property
    def parity_page(self) -> QWidget:
        """The refit's parity plot and numbers in the results dock, built when first shown."""
        from napari_detection_qc.widgets.plots import ParityPlot

        self.parity = ParityPlot()
        self.parity.setMaximumWidth(PARITY_MAX_WIDTH)
        self.parity_text = QLabel("")
        self.parity_text.setWordWrap(True)
        page = QWidget()
        layout = QHBoxLayout(page)
        layout.addWidget(self.parity)
        layout.addWidget(self.parity_text, 1)
        return page

    @cached_property
    def next_list(self) -> QListWidget:
        """The "Label next" list in the results dock (best first; a click goes to the frame), built
        when first shown."""
        frames = QListWidget()
        frames.itemClicked.connect(lambda item: self.go_to_frame(item.data(256)))
        return frames

    def _on_detections(self, masks, boxes, _finished: bool) -> None:
        self.masks.value, self.boxes.value = masks, boxes

    # -- ground truth ------------------------------------------------------------------------------
    def current_frame(self) -> int:
        layer = self.ground_truth.value
        if layer is not None and np.ndim(layer.data) == 2:
            return 0
        return int(self.viewer.dims.current_step[0])

    def go_to_frame(self, frame: int) -> None:
        layer = self.ground_truth.value or self.masks.value
        if layer is not None and np.ndim(layer.data) == 3:
            self.viewer.dims.set_current_step(0, int(frame))

    def record(self) -> GroundTruthRecord:
        return GroundTruthRecord.from_metadata(self.ground_truth.value.metadata)

    def _store(self, record: GroundTruthRecord) -> None:
        layer = self.ground_truth.value
        layer.metadata = record.to_metadata(layer.metadata)
        self.refresh_frame_list()

    def labeled(self):
        layer = self.ground_truth.value
        return [] if layer is None else labeled_frames(self.record(), labels_data(layer))

    def refresh_frame_list(self) -> None:
        self.frame_list.clear()
        for frame in self.labeled():
            self.frame_list.addItem(f"frame {frame.frame}: {frame.n_objects} object(s), {frame.how}")
            self.frame_list.item(self.frame_list.count() - 1).setData(256, frame.frame)

    def seed_ground_truth(self) -> Labels | None:
        """A new editable Labels layer holding a copy of the predicted masks."""
        masks = self.masks.value
        if masks is None:
            self.status.error("pick the predicted masks layer to seed ground truth from")
            return None
        data = np.array(labels_data(masks), copy=True)
        layer = self._add_ground_truth(masks, data, GroundTruthRecord(seeded_from=masks.name).to_metadata({}))
        if layer is not None:
            self.status.info(
                f"'{layer.name}' seeded from predictions: correct a frame, then mark it reviewed"
            )
        return layer

    def load_coco_ground_truth(self, path) -> None:
        """Ground truth from a COCO file, read in the background: the images named like the masks'
        image (or, in a file about one image or stack, its images in order); every frame the file
        holds counts as labeled, with or without objects."""
        masks = self.masks.value
        if masks is None:
            self.status.error("pick the predicted masks layer: the COCO images are matched to its image")
            return
        if seeded_name(masks.name) in self.viewer.layers:
            self.status.error(
                f"'{seeded_name(masks.name)}' exists already; rename or delete it first (nothing overwritten)"
            )
            return
        shape = labels_data(masks).shape
        n_frames = 1 if len(shape) == 2 else shape[0]

        def add(loaded: tuple[np.ndarray, int]) -> None:
            truth, box_only = loaded
            record = GroundTruthRecord(reviewed_frames=set(range(n_frames)))
            metadata = record.to_metadata({METADATA_KEY: {"source": str(path)}})
            layer = self._add_ground_truth(masks, truth[0] if len(shape) == 2 else truth, metadata)
            if layer is not None:
                boxes_only = (
                    f"; {box_only} box-only annotation(s) drawn as the ellipse in each box"
                    if box_only
                    else ""
                )
                self.status.info(
                    f"'{layer.name}' loaded from {Path(path).name}: {n_frames} labeled frame(s){boxes_only}"
                )

        self._load(
            coco_stack_labels,
            path,
            masks.name.removesuffix(" masks"),
            n_frames,
            shape[-2:],
            done=add,
            what=f"reading {Path(path).name}…",
        )

    def _load(self, function, *args, done, what: str) -> None:
        """Read a file in the background (``function(*args)``), then ``done(result)``; a file that
        cannot be read is a one-line error."""
        if self.loader is not None:
            self.status.warn("a file is still being read; try again when it is done")
            return
        self.status.value = what

        def finished() -> None:
            self.loader = None

        self.loader = self.work.run(
            function, *args, returned=done, finished=finished, errored=lambda exc: self.status.error(str(exc))
        )

    def _add_ground_truth(self, masks: Labels, data: np.ndarray, metadata: dict) -> Labels | None:
        """A new Labels layer '<image> ground truth' beside the masks; never replaces one."""
        name = seeded_name(masks.name)
        if name in self.viewer.layers:
            self.status.error(f"'{name}' exists already; rename or delete it first (nothing overwritten)")
            return None
        layer = self.viewer.add_labels(data, name=name, scale=masks.scale, metadata=metadata)
        self.ground_truth.value = layer
        self._show_predictions()
        return layer

    def _show_predictions(self, _value=None) -> None:
        """Predicted masks as outlines while a ground truth is being edited over them (else filled)."""
        masks = self.masks.value
        if masks is not None:
            masks.contour = (
                PREDICTION_OUTLINE_PX if self.outline_predictions.value and self.ground_truth.value else 0
            )

    def _watch_truth(self, _value=None) -> None:
        """Painting on a frame of the ground truth marks that frame reviewed (and says so)."""
        if self._watched_truth is not None:
            self._watched_truth.events.paint.disconnect(self._on_paint)
        self._watched_truth = self.ground_truth.value
        if self._watched_truth is not None:
            self._watched_truth.events.paint.connect(self._on_paint)
        self.refresh_frame_list()

    def _on_paint(self, event) -> None:
        record = self.record()
        frames = painted_frames(event.value, np.ndim(self.ground_truth.value.data)) - record.reviewed_frames
        if frames:
            record.reviewed_frames |= frames
            layer = self.ground_truth.value
            layer.metadata = record.to_metadata(layer.metadata)
            self.status.value = f"frame(s) {sorted(frames)} marked reviewed: you edited them"
        QTimer.singleShot(0, self.refresh_frame_list)  # napari writes the pixels after announcing them

    def mark_reviewed(self, frame: int, quiet: bool = False) -> None:
        if self.ground_truth.value is None:
            self.status.error("pick or seed a ground-truth layer first")
            return
        record = self.record()
        record.reviewed_frames.add(int(frame))
        self._store(record)
        if not quiet:
            self.status.info(f"frame {frame} counts as labeled ({len(self.labeled())} labeled)")

    def mark_empty(self, frame: int) -> None:
        """Clear the frame's ground truth (one undoable step of the layer's history) and count it
        as labeled with no objects."""
        layer = self.ground_truth.value
        if layer is None:
            self.status.error("pick or seed a ground-truth layer first")
            return
        data = labels_data(layer)
        if data.ndim == 2:
            where = np.nonzero(data)
        else:
            inside = np.nonzero(data[frame])
            where = (np.full(inside[0].size, frame), *inside)
        if where[0].size:
            with layer.block_history():
                layer.data_setitem(where, 0)
        self.mark_reviewed(frame, quiet=True)
        undo = (
            f" ({where[0].size} pixels cleared; undo on '{layer.name}' restores them)"
            if where[0].size
            else ""
        )
        self.status.info(f"frame {frame} counts as labeled with no objects{undo}")

    # -- true quality ------------------------------------------------------------------------------
    def _labeled_inputs(self):
        layer = self.ground_truth.value
        if layer is None:
            raise ValueError("pick or seed a ground-truth layer first")
        stack = detections_from_layers(self.masks.value, self.boxes.value)
        from napari_detection_qc.quality.scoring import ground_truth_frames

        truth = ground_truth_frames(labels_data(layer), len(stack))
        if truth.shape[1:] != stack.image_shape:
            raise ValueError(
                f"ground truth is {truth.shape[1:]} per frame but the masks are {stack.image_shape}"
            )
        frames = [f.frame for f in self.labeled()]
        if not frames:
            raise ValueError("no labeled frames yet: correct a frame and mark it reviewed")
        return stack, truth, frames

    def _stored_signals(self, n_frames: int) -> list[dict]:
        """The detector's signals stored with the boxes layer's frames (embeddings for the forest)."""
        return stored_signals(pair_record(self.boxes.value.metadata), n_frames)

    def score_labeled_frames(self) -> pd.DataFrame | None:
        """True TP/FP/FN, P, R, F1 on labeled frames, beside the forest's predicted F1."""
        try:
            stack, truth, frames = self._labeled_inputs()
        except ValueError as exc:
            self.scores = None
            self.score_table.setRowCount(0)
            self.status.error(str(exc))
            return None
        from napari_detection_qc.quality.scoring import predicted_quality, true_quality

        scores = true_quality(stack, truth, frames, self.iou.value)
        forest = self.session.forest or self.session.in_use
        if forest is not None:
            signals = self._stored_signals(len(stack))
            try:
                predicted, _ = predicted_quality(stack, forest, signals)
                scores["predicted_f1"] = predicted["f1"].to_numpy()[frames]
            except ValueError as exc:  # a forest needing signals these detections lack
                self.status.warn(f"no predicted F1 beside the true one: {exc}")
        self.scores = scores
        columns = [c for c in SCORE_COLUMNS if c in scores.columns]
        self.score_table.setColumnCount(len(columns))
        self.score_table.setHorizontalHeaderLabels([SCORE_HEADERS[c] for c in columns])
        self.score_table.setRowCount(len(scores))
        self.score_table.setVerticalHeaderLabels([str(t) for t in scores["frame"]])
        for r, values in enumerate(scores.loc[:, columns].itertuples(index=False)):
            for c, value in enumerate(values):
                text = f"{value:.2f}" if isinstance(value, (float, np.floating)) else str(value)
                self.score_table.setItem(r, c, QTableWidgetItem(text))
        self.score_table.resizeColumnsToContents()
        self.status.value = f"{len(scores)} labeled frame(s): mean true F1 {scores['f1'].mean():.2f}" + (
            f", mean predicted {scores['predicted_f1'].mean():.2f}" if forest else ""
        )
        return scores

    # -- label next --------------------------------------------------------------------------------
    def rank_next(self) -> None:
        """Order the frames not yet labelled by the value of labelling them (``ranking``), in the
        background; the list fills when done."""
        try:
            stack = detections_from_layers(self.masks.value, self.boxes.value)
        except (ValueError, AttributeError) as exc:
            self.status.error(f"pick the predicted masks and boxes to rank frames: {exc}")
            return
        if len(stack) < 2:
            self.status.warn("a single image: nothing to rank")
            return
        labeled = [f.frame for f in self.labeled()]
        self.rank_button.enabled = False
        self.status.value = f"ranking {len(stack) - len(labeled)} frame(s)…"
        self.work.run(
            label_next_job,
            stack,
            self.base_forest(),
            self._stored_signals(len(stack)),
            labeled,
            returned=self._show_ranked,
            errored=self._on_rank_error,
            finished=self._on_rank_finished,
        )

    def _show_ranked(self, ranked: list[RankedFrame]) -> None:
        if not alive(self.next_list):
            return  # the viewer closed while the worker ran
        self.ranked = ranked
        results_dock(self.viewer).show_page(self.next_list, "Label next", front=True)
        self.next_list.clear()
        for item in ranked:
            self.next_list.addItem(f"frame {item.frame}: {item.reason}")
            self.next_list.item(self.next_list.count() - 1).setData(256, item.frame)
            self.next_list.item(self.next_list.count() - 1).setToolTip(item.reason)
        self.status.value = (
            f"label frame {ranked[0].frame} next ({len(ranked)} ranked)"
            if ranked
            else "every frame is labelled"
        )

    def _on_rank_error(self, exc: Exception) -> None:
        self.status.error(f"ranking failed: {exc}")

    def _on_rank_finished(self) -> None:
        self.rank_button.enabled = True

    # -- refit -------------------------------------------------------------------------------------
    def base_forest(self) -> QualityForest | str:
        """The forest to extend: the one trained here, else the Quality step's, else (the name of,
        loaded in the worker) the bundled one that belongs to the detector."""
        for forest in (self.session.forest, self.session.in_use):
            if forest is not None:
                return forest
        return forest_for_detector(layer_detector(self.boxes.value))

    def refit(self) -> None:
        if self.worker is not None:
            self.status.warn("a refit is already running")
            return
        mode = RefitMode(self.mode.value)
        try:
            stack, truth, frames = self._labeled_inputs()
            if problem := refit_problem(mode, len(frames)):
                raise ValueError(problem)
        except ValueError as exc:
            self.status.error(str(exc))
            return
        self.refit_button.enabled = False
        self.status.value = f"refitting with {len(frames)} labeled frame(s) of yours…"
        self.worker = self.work.run(
            refit_job,
            stack,
            truth,
            frames,
            self.iou.value,
            self.ground_truth.value.name,
            self._stored_signals(len(stack)),
            mode,
            self.training_set,
            self.base_forest(),
            layer_detector(self.boxes.value),
            returned=self._on_refit,
            errored=self._on_refit_error,
            finished=self._on_refit_finished,
        )

    def _on_refit(self, result: RefitOutcome) -> None:
        if not alive(self.parity_page):
            return  # the viewer closed while the forest was refit
        forest, cv, training, new_sources = result.forest, result.cv, result.training, result.new_sources
        self.training_set = training
        mine = sum(source in new_sources for source in training.sources)
        self.session.set_forest(forest, f"refit in this viewer on {len(training)} frames ({mine} yours)")
        if cv is None:
            self.metrics.setText(f"fit on {len(training)} frames (too few for cross-validation)")
            self.parity.clear()
        else:
            from napari_detection_qc.labels.refit import cv_report

            report = cv_report(cv, training, new_sources)
            self.metrics.setText(
                "5-fold cross-validated F1 (MAE / RMSE / R²)<br>"
                + "<br>".join(
                    f"{name}, {int(r.n)} frames: {r.mae:.3f} / {r.rmse:.3f} / "
                    + ("–" if np.isnan(r.r2) else f"{r.r2:.2f}")
                    for name, r in report.iterrows()
                )
            )
            predictions = cv.predictions
            is_new = [training.sources[r] in new_sources for r in predictions["row"]]
            self.parity.show_predictions(predictions["true_f1"], predictions["f1"], is_new)
            self.parity_text.setText(self.metrics.text())
            results_dock(self.viewer).show_page(self.parity_page, "Refit: predicted vs true F1", front=True)
        self.status.info("refit done; the Quality step now uses the new forest")

    def _on_refit_error(self, exc: Exception) -> None:
        if self.metrics.text() and not self.metrics.text().startswith("stale"):
            self.metrics.setText("stale (the last refit failed): " + self.metrics.text())
            if "parity_page" in self.__dict__:
                self.parity_text.setText(self.metrics.text())
        self.status.error(str(exc) if isinstance(exc, ValueError) else f"refit failed: {exc}")

    def _on_refit_finished(self) -> None:
        self.worker = None
        self.refit_button.enabled = True

    # -- files -------------------------------------------------------------------------------------
    def save_forest(self, path) -> None:
        if self.session.forest is None:
            self.status.error("no forest refit or loaded in this viewer yet: refit first")
            return
        self.session.forest.save(path)
        self.status.info(f"forest saved to {path}")

    def load_forest(self, path) -> None:
        """Load a forest file in the background; it becomes the Quality step's forest."""

        def use(forest: QualityForest) -> None:
            self.training_set = None
            self.session.set_forest(forest, f"loaded from {Path(path).name}")
            self.status.info(f"loaded forest {Path(path).name} ({forest.n_training} training frames)")

        self._load(read_forest, path, done=use, what=f"loading {Path(path).name}…")

    def save_training_set(self, path) -> None:
        if self.training_set is None:
            self.status.error("no training set yet: refit once, or load one")
            return
        self.training_set.save(path)
        self.status.info(f"training set ({len(self.training_set)} frames) saved to {path}")

    def load_training_set(self, path) -> None:
        """Load a training set file in the background; the next refit uses it."""

        def use(training_set: TrainingSet) -> None:
            self.training_set = training_set
            self.status.info(f"loaded {len(training_set)} training frames; refit to use them")

        self._load(read_training_set, path, done=use, what=f"reading {Path(path).name}…")

    def _ask(self, save: bool, caption: str, pattern: str):
        dialog = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = dialog(self, caption, "", pattern)
        return path or None

    def _ask_save_forest(self):
        if self.session.forest is None:
            self.status.error("no forest refit or loaded in this viewer yet: refit first")
        elif path := self._ask(True, "Save forest", "Forest (*.skops)"):
            self.save_forest(path)

    def _ask_load_forest(self):
        if path := self._ask(False, "Load forest", "Forest (*.skops)"):
            self.load_forest(path)

    def _ask_save_set(self):
        if self.training_set is None:
            self.status.error("no training set yet: refit once, or load one")
        elif path := self._ask(True, "Save training set", "CSV (*.csv)"):
            self.save_training_set(path)

    def _ask_load_coco(self):
        if path := self._ask(False, "Load COCO ground truth", "COCO JSON (*.json)"):
            self.load_coco_ground_truth(path)

    def _ask_load_set(self):
        if path := self._ask(False, "Load training set", "CSV (*.csv)"):
            self.load_training_set(path)


def label_next_job(stack, forest, signals, labeled: list[int]) -> list[RankedFrame]:
    """Worker body: predicted quality of every frame (the forest loaded here when given by name),
    then the label-next order of the frames not yet labelled."""
    from napari_detection_qc.quality.ranking import rank_by_features
    from napari_detection_qc.quality.scoring import predicted_quality

    if isinstance(forest, str):
        forest = load_forest(forest)
    quality, features = predicted_quality(stack, forest, signals)
    return rank_by_features(quality, features, exclude=labeled)


@dataclass
class RefitOutcome:
    """A refit forest, its cross-validation (None with too few frames), the training set it was
    fit on and the sources of the user's own rows in it."""

    forest: QualityForest
    cv: object
    training: TrainingSet
    new_sources: set[str]


def refit_job(
    stack,
    truth,
    frames,
    iou: float,
    source: str,
    signals,
    mode: RefitMode,
    training_set: TrainingSet | None,
    base: QualityForest | str,
    detector: dict | None,
) -> RefitOutcome:
    """Worker body: the labeled frames' rows, the training set for the refit mode, and the refit
    (loading the base forest first when it is named, not loaded)."""
    from napari_detection_qc.labels.refit import labeled_rows, refit_forest, training_for_refit

    if isinstance(base, str):
        base = load_forest(base)
    new_rows = labeled_rows(stack, truth, frames, iou, source, signals)
    training = training_for_refit(mode, new_rows, training_set, base)
    forest, cv = refit_forest(training, base, detector)
    return RefitOutcome(forest, cv, training, set(new_rows.sources))


def coco_stack_labels(path, image_name: str, n_frames: int, frame_shape) -> tuple[np.ndarray, int]:
    """Worker body: a COCO file's ground truth as labels for an image (stack), a box-only
    annotation as the ellipse inscribed in its box (what fine-tuning learns its mask from), and
    how many annotations were box-only."""
    coco = CocoGroundTruth.load(path)
    truth = coco.stack_labels(image_name, n_frames, frame_shape, sole_input=True, box_mask="ellipse")
    return truth, coco.box_only_count(coco.images_for(image_name, n_frames, sole_input=True))


def read_forest(path) -> QualityForest:
    """Worker body: a forest file, refused with a one-line reason when it is not one."""
    from napari_detection_qc.quality.forest import QualityForest

    return QualityForest.load(path)


def read_training_set(path) -> TrainingSet:
    from napari_detection_qc.labels.training_set import TrainingSet

    return TrainingSet.load(path)
