"""Training widget: seed an editable ground-truth layer from the predictions, mark reviewed
frames, compute the true F1 of the detections on them, and refit the forest in the background.
The refit forest becomes the quality widget's forest at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton
from napari.layers import Labels, Shapes
from napari.qt.threading import create_worker
from qtpy.QtWidgets import QFileDialog

from ..coco import CocoGroundTruth
from ..features import stack_features
from ..forest import QualityForest, bundled_forest_for
from ..scoring import ground_truth_frames, true_quality
from ..training_set import TrainingSet
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
from .plots import ParityPlot

REFIT_MODES = ("add to the forest's training data", "replace it with my frames only")
MIN_FRAMES_TO_REPLACE = 5


def ground_truth_record(layer: Labels) -> dict:
    """The ground-truth bookkeeping on a Labels layer: whether it was seeded from predictions and
    which frames the user reviewed (edited, or confirmed as shown, possibly empty)."""
    record = (layer.metadata or {}).setdefault(METADATA_KEY, {})
    record.setdefault("seeded_from", None)
    record.setdefault("reviewed_frames", [])
    return record


def labeled_frames(layer: Labels) -> list[int]:
    """Frames that count as labeled: reviewed ones; in a layer drawn from scratch (not seeded),
    also every frame that holds any ground truth."""
    record = ground_truth_record(layer)
    frames = set(record["reviewed_frames"])
    if record["seeded_from"] is None:
        data = np.asarray(layer.data)
        stack = data[None] if data.ndim == 2 else data
        frames |= {int(t) for t in np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1))}
    return sorted(frames)


class TrainingWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.native.setMaximumWidth(DOCK_MAX_WIDTH)
        self.viewer = napari_viewer
        self.session = forest_session(napari_viewer)
        self.masks = LayerPicker(napari_viewer, Labels, "predicted masks")
        self.boxes = LayerPicker(napari_viewer, Shapes, "predicted boxes")
        self.ground_truth = LayerPicker(napari_viewer, Labels, "ground truth")
        self.seed_button = PushButton(text="Start ground truth from predictions")
        self.coco_button = PushButton(text="Load COCO ground truth…")
        self.reviewed_button = PushButton(text="Frame reviewed ✓")
        self.empty_button = PushButton(text="Checked: no objects")
        self.iou = FloatSpinBox(label="IoU threshold", value=0.1, min=0.0, max=1.0, step=0.05)
        self.score_button = PushButton(text="Score labeled frames")
        self.mode = ComboBox(label="refit", choices=REFIT_MODES, value=REFIT_MODES[0])
        self.refit_button = PushButton(text="Refit forest")
        self.save_forest_button = PushButton(text="Save forest…")
        self.load_forest_button = PushButton(text="Load forest…")
        self.save_set_button = PushButton(text="Save training set…")
        self.load_set_button = PushButton(text="Load training set…")
        self.status = StatusLabel(value="")
        self.results = wrapping_label()
        self.metrics = wrapping_label()
        self.parity = ParityPlot()
        self.extend([
            self.masks, self.boxes, self.ground_truth, container(self.seed_button, self.coco_button),
            container(self.reviewed_button, self.empty_button), self.iou, self.score_button,
            self.results, self.mode, self.refit_button,
            container(self.save_forest_button, self.load_forest_button),
            container(self.save_set_button, self.load_set_button), self.status, self.metrics,
        ])
        self.native.layout().addWidget(self.parity)

        self.training_set: TrainingSet | None = None
        self.scores: pd.DataFrame | None = None
        self.worker = None
        self._watched_truth = None
        self.seed_button.changed.connect(self.seed_ground_truth)
        self.coco_button.changed.connect(self._ask_load_coco)
        self.reviewed_button.changed.connect(lambda: self.mark_reviewed(self.current_frame()))
        self.empty_button.changed.connect(lambda: self.mark_empty(self.current_frame()))
        self.score_button.changed.connect(self.score_labeled_frames)
        self.refit_button.changed.connect(self.refit)
        self.save_forest_button.changed.connect(self._ask_save_forest)
        self.load_forest_button.changed.connect(self._ask_load_forest)
        self.save_set_button.changed.connect(self._ask_save_set)
        self.load_set_button.changed.connect(self._ask_load_set)
        self.ground_truth.changed.connect(self._watch_truth)
        self._watch_truth()

    # -- ground truth ------------------------------------------------------------------------------
    def current_frame(self) -> int:
        layer = self.ground_truth.value
        if layer is not None and np.ndim(layer.data) == 2:
            return 0
        return int(self.viewer.dims.current_step[0])

    def seed_ground_truth(self) -> Labels | None:
        """A new editable Labels layer holding a copy of the predicted masks."""
        masks = self.masks.value
        if masks is None:
            self.status.error("pick the predicted masks layer to seed ground truth from")
            return None
        data = np.array(masks.data[0] if masks.multiscale else masks.data, copy=True)
        layer = self._add_ground_truth(masks, data, {"seeded_from": masks.name, "reviewed_frames": []})
        if layer is not None:
            self.status.info(f"'{layer.name}' seeded from predictions: correct a frame, then mark it reviewed")
        return layer

    def load_coco_ground_truth(self, path) -> Labels | None:
        """Ground truth from a COCO file: the images named like the masks' image (or, in a file
        about one image or stack, its images in order); every frame the file holds counts as
        labeled, with or without objects."""
        masks = self.masks.value
        if masks is None:
            self.status.error("pick the predicted masks layer: the COCO images are matched to its image")
            return None
        shape = np.shape(masks.data[0] if masks.multiscale else masks.data)
        n_frames = 1 if len(shape) == 2 else shape[0]
        try:
            truth = CocoGroundTruth.load(path).stack_labels(
                masks.name.removesuffix(" masks"), n_frames, shape[-2:], sole_input=True
            )
        except ValueError as exc:
            self.status.error(str(exc))
            return None
        record = {"seeded_from": None, "reviewed_frames": list(range(n_frames)), "source": str(path)}
        layer = self._add_ground_truth(masks, truth[0] if len(shape) == 2 else truth, record)
        if layer is not None:
            self.status.info(f"'{layer.name}' loaded from {Path(path).name}: {n_frames} labeled frame(s)")
        return layer

    def _add_ground_truth(self, masks: Labels, data: np.ndarray, record: dict) -> Labels | None:
        """A new Labels layer '<image> ground truth' beside the masks; never replaces one."""
        name = f"{masks.name.removesuffix(' masks')} ground truth"
        if name in self.viewer.layers:
            self.status.error(f"'{name}' exists already; rename or delete it first (nothing overwritten)")
            return None
        layer = self.viewer.add_labels(data, name=name, scale=masks.scale, metadata={METADATA_KEY: record})
        self.ground_truth.value = layer
        return layer

    def _watch_truth(self, _value=None) -> None:
        """Painting on a frame of the ground truth marks that frame reviewed."""
        if self._watched_truth is not None:
            self._watched_truth.events.paint.disconnect(self._on_paint)
        self._watched_truth = self.ground_truth.value
        if self._watched_truth is not None:
            self._watched_truth.events.paint.connect(self._on_paint)

    def _on_paint(self, _event=None) -> None:
        self.mark_reviewed(self.current_frame(), quiet=True)

    def mark_reviewed(self, frame: int, quiet: bool = False) -> None:
        layer = self.ground_truth.value
        if layer is None:
            self.status.error("pick or seed a ground-truth layer first")
            return
        record = ground_truth_record(layer)
        if frame not in record["reviewed_frames"]:
            record["reviewed_frames"] = sorted({*record["reviewed_frames"], int(frame)})
        if not quiet:
            self.status.info(f"frame {frame} counts as labeled ({len(labeled_frames(layer))} labeled)")

    def mark_empty(self, frame: int) -> None:
        """Clear the frame's ground truth and count it as labeled with no objects."""
        layer = self.ground_truth.value
        if layer is None:
            self.status.error("pick or seed a ground-truth layer first")
            return
        if np.ndim(layer.data) == 2:
            layer.data[...] = 0
        else:
            layer.data[frame] = 0
        layer.refresh()
        self.mark_reviewed(frame)

    # -- true quality ------------------------------------------------------------------------------
    def _labeled_inputs(self):
        layer = self.ground_truth.value
        if layer is None:
            raise ValueError("pick or seed a ground-truth layer first")
        stack = detections_from_layers(self.masks.value, self.boxes.value)
        truth = ground_truth_frames(np.asarray(layer.data), len(stack))
        if truth.shape[1:] != stack.image_shape:
            raise ValueError(f"ground truth is {truth.shape[1:]} per frame but the masks are {stack.image_shape}")
        frames = labeled_frames(layer)
        if not frames:
            raise ValueError("no labeled frames yet: correct a frame and mark it reviewed")
        return stack, truth, frames

    def score_labeled_frames(self) -> pd.DataFrame | None:
        """True TP/FP/FN, P, R, F1 on labeled frames, beside the forest's predicted F1."""
        try:
            stack, truth, frames = self._labeled_inputs()
        except ValueError as exc:
            self.status.error(str(exc))
            return None
        scores = true_quality(stack, truth, frames, self.iou.value)
        forest = self.session.forest or self.session.in_use
        if forest is not None:
            predicted = forest.predict(stack_features(stack).iloc[frames])
            scores["predicted_f1"] = predicted["f1"].to_numpy()
        self.scores = scores
        lines = [f"frame {r.frame}: TP {r.tp} FP {r.fp} FN {r.fn}  P {r.precision:.2f} R {r.recall:.2f} "
                 f"F1 {r.f1:.2f}" + (f" (predicted {r.predicted_f1:.2f})" if "predicted_f1" in scores else "")
                 for r in scores.itertuples()]
        self.results.value = "<br>".join(lines[:12]) + ("<br>…" if len(lines) > 12 else "")
        return scores

    # -- refit -------------------------------------------------------------------------------------
    def base_forest(self) -> QualityForest:
        """The forest to extend: the one trained here, else the quality widget's, else bundled."""
        for forest in (self.session.forest, self.session.in_use):
            if forest is not None:
                return forest
        return QualityForest.load(bundled_forest_for(layer_detector(self.boxes.value)))

    def refit(self) -> None:
        if self.worker is not None:
            self.status.warn("a refit is already running")
            return
        try:
            stack, truth, frames = self._labeled_inputs()
            base = self.base_forest()
        except ValueError as exc:
            self.status.error(str(exc))
            return
        features = stack_features(stack).iloc[frames].reset_index(drop=True)
        targets = true_quality(stack, truth, frames, self.iou.value)[["f1", "precision", "recall"]]
        source = self.ground_truth.value.name
        new_rows = TrainingSet().add(features, targets, [f"{source}#{t}" for t in frames])
        if self.mode.value == REFIT_MODES[0]:
            training = (self.training_set or TrainingSet.from_forest(base)).copy()
            training.add(new_rows.features, new_rows.targets, new_rows.sources)
        else:
            if len(frames) < MIN_FRAMES_TO_REPLACE:
                self.status.error(f"replacing the training data needs at least {MIN_FRAMES_TO_REPLACE} labeled "
                                  f"frames; you have {len(frames)}")
                return
            training = new_rows
        new_sources = set(new_rows.sources)
        self.worker = create_worker(refit_forest, training, base, layer_detector(self.boxes.value),
                                    _progress={"desc": "Refitting forest"})
        self.worker.returned.connect(lambda result: self._on_refit(result, training, new_sources))
        self.worker.errored.connect(lambda exc: self.status.error(f"refit failed: {exc}"))
        self.worker.finished.connect(self._on_refit_finished)
        self.refit_button.enabled = False
        self.status.value = f"refitting on {len(training)} frames ({len(frames)} yours)…"
        self.worker.start()

    def _on_refit(self, result, training: TrainingSet, new_sources: set[str]) -> None:
        forest, cv = result
        self.training_set = training
        self.session.set(forest, "trained in this viewer")
        if cv is None:
            self.metrics.value = f"fit on {len(training)} frames (too few for cross-validation)"
        else:
            s = cv.summary.loc["f1"]
            self.metrics.value = (f"fit on {len(training)} frames; 5-fold CV F1: MAE {s['mae']:.3f}, "
                                  f"RMSE {s['rmse']:.3f}, R² {s['r2']:.2f}")
            predictions = cv.predictions
            is_new = [training.sources[row] in new_sources for row in predictions["row"]]
            self.parity.show_predictions(predictions["true_f1"], predictions["f1"], is_new)
        self.status.info("refit done; the quality widget now uses the new forest")

    def _on_refit_finished(self) -> None:
        self.worker = None
        self.refit_button.enabled = True

    # -- files -------------------------------------------------------------------------------------
    def save_forest(self, path) -> None:
        if self.session.forest is None:
            self.status.error("no forest trained in this viewer yet")
            return
        self.session.forest.save(path)
        self.status.info(f"forest saved to {path}")

    def load_forest(self, path) -> None:
        try:
            forest = QualityForest.load(path)
        except ValueError as exc:
            self.status.error(str(exc))
            return
        self.training_set = None
        self.session.set(forest, f"loaded from {Path(path).name}")
        self.status.info(f"loaded forest {Path(path).name} ({forest.n_training} training frames)")

    def save_training_set(self, path) -> None:
        if self.training_set is None:
            self.status.error("no training set yet: refit once, or load one")
            return
        self.training_set.save(path)
        self.status.info(f"training set ({len(self.training_set)} frames) saved to {path}")

    def load_training_set(self, path) -> None:
        try:
            self.training_set = TrainingSet.load(path)
        except ValueError as exc:
            self.status.error(str(exc))
            return
        self.status.info(f"loaded {len(self.training_set)} training frames; refit to use them")

    def _ask(self, save: bool, caption: str, pattern: str):
        dialog = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = dialog(self.native, caption, "", pattern)
        return path or None

    def _ask_save_forest(self):
        if path := self._ask(True, "Save forest", "Forest (*.skops)"):
            self.save_forest(path)

    def _ask_load_forest(self):
        if path := self._ask(False, "Load forest", "Forest (*.skops)"):
            self.load_forest(path)

    def _ask_save_set(self):
        if path := self._ask(True, "Save training set", "CSV (*.csv)"):
            self.save_training_set(path)

    def _ask_load_coco(self):
        if path := self._ask(False, "Load COCO ground truth", "COCO JSON (*.json)"):
            self.load_coco_ground_truth(path)

    def _ask_load_set(self):
        if path := self._ask(False, "Load training set", "CSV (*.csv)"):
            self.load_training_set(path)


def refit_forest(training: TrainingSet, base: QualityForest, detector: dict | None):
    """Worker body: fit a forest like ``base`` on the training set, cross-validate when there are
    enough frames; returns (forest, CVResult or None)."""
    features = training.features
    forest = QualityForest(base.features, base.n_estimators, base.random_state, base.coverage,
                           detector or base.detector, base.forest_params)
    forest.fit(features, training.targets)
    cv = None
    if len(training) >= 10:
        cv = forest.cross_validate(features, training.targets, scheme="random", n_splits=5, n_repeats=1)
    return forest, cv
