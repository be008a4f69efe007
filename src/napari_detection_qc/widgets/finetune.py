"""The "Fine-tune detector" section of the Training step: fine-tune the detector on the reviewed
frames in a background thread (progress, cancel, live training graphs in the results dock), fit
the new detector's forest, show held-out F1 before and after, and save model + forest to a file
the user picks.

Qt-free work (``engines.finetune``, ``detector_forest``, ``finetune_outputs``) runs in a napari
thread worker; its reports are queued and drawn by a timer on the UI thread, and cancel (or the
viewer closing) sets an event that the training loop checks before every step. The graphs, the
before/after result and *Save* share one page of the results dock, side by side."""

from __future__ import annotations

import threading
from collections import deque
from functools import cached_property

import numpy as np
import pandas as pd
from magicgui.widgets import FileEdit, FloatSpinBox, PushButton
from napari.layers import Image
from napari.utils import progress
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_detection_qc.quality.forest_choice import companion_forest_path
from napari_detection_qc.widgets._common import LayerPicker, device_picker, row
from napari_detection_qc.widgets._torch_import import import_engines
from napari_detection_qc.widgets.detection import image_frames
from napari_detection_qc.widgets.results_dock import results_dock

REDRAW_MS = 700


def finetune_job(
    spec,
    device: str,
    minutes: float,
    frames_per_domain: int | None,
    images,
    truths,
    reports: deque,
    stop: threading.Event,
):
    """Worker body: fine-tune, then fit the forest for the new detector; (result, forest).
    ``frames_per_domain`` None: the study's default number of synthetic frames per domain."""
    import_engines()
    from napari_detection_qc.engines import load_detector
    from napari_detection_qc.engines.finetune import finetune
    from napari_detection_qc.finetune.detector_forest import STUDY_FRAMES_PER_DOMAIN, fit_detector_forest

    parent = load_detector(spec, device=device)
    result = finetune(
        parent, images, truths, minutes=minutes, device=device, progress=reports.append, cancelled=stop.is_set
    )
    forest = fit_detector_forest(
        result.detector,
        images,
        truths,
        cancelled=stop.is_set,
        frames_per_domain=frames_per_domain or STUDY_FRAMES_PER_DOMAIN,
        progress=lambda done, total, _what: reports.append(("forest", done, total)),
    )
    return result, forest


class FinetuneSection:
    """A section of the Training step (``step``): its ground-truth picker, its reviewed frames
    (``step.labeled()``) and its status line."""

    def __init__(self, step):
        self.step = step
        self.viewer = step.viewer
        self.status = step.status
        self.frames_per_domain: int | None = None  # the forest study's default
        self.image = LayerPicker(step.viewer, Image, "image")
        self.base = FileEdit(label="base weights (empty: bundled)", mode="r", filter="*.pt *.pth")
        self.minutes = FloatSpinBox(label="minutes", value=5.0, min=0.05, max=600.0, step=0.5)
        self.device = device_picker(step)
        self.run_button = PushButton(text="Fine-tune detector")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.save_button = PushButton(text="Save model + forest…", enabled=False)
        self.comparison = QLabel("")
        self.comparison.setWordWrap(True)
        step.add_section(
            "Fine-tune detector on the reviewed frames",
            self.image,
            self.base,
            self.minutes,
            self.device,
            row(self.run_button, self.cancel_button),
            collapsed=True,
        )
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self._ask_save)
        self.worker = None
        self.result = self.forest = None
        self._reports: deque = deque()
        self._history: list[dict] = []
        self._stop = threading.Event()
        self._progress = None
        self._timer = step.work.timer(REDRAW_MS, self._drain)

    @cached_property
    def page(self) -> QWidget:
        """The graphs with room, and beside them the before/after result and Save (in view without
        scrolling in the low results dock); built when first shown."""
        from napari_detection_qc.widgets.plots import TrainingCurves

        self.curves = TrainingCurves()
        page = QWidget()
        side = QVBoxLayout()
        side.addWidget(self.comparison)
        side.addWidget(self.save_button.native)
        side.addStretch(1)
        layout = QHBoxLayout(page)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.curves, 3)
        layout.addLayout(side, 1)
        return page

    # -- inputs ------------------------------------------------------------------------------------
    def labelled_inputs(self) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        """Copies of the labelled frames and their ground truth (edits during training cannot race)."""
        ground_truth = self.step.ground_truth.value
        if self.image.value is None or ground_truth is None:
            raise ValueError("pick the image and its ground-truth layer")
        from napari_detection_qc.quality.scoring import ground_truth_frames

        frames, _ = image_frames(self.image.value)
        truth = ground_truth_frames(np.asarray(ground_truth.data), len(frames))
        if truth.shape[1:] != frames.shape[1:3]:
            raise ValueError(
                f"ground truth is {truth.shape[1:]} per frame but the image is {frames.shape[1:3]}"
            )
        chosen = [labeled.frame for labeled in self.step.labeled()]
        if not chosen:
            raise ValueError("no reviewed frames yet: correct a frame and mark it reviewed")
        return [np.array(frames[t]) for t in chosen], [np.array(truth[t]) for t in chosen], chosen

    def base_spec(self):
        path = self.base.value
        return "default" if not path or not path.is_file() else path

    # -- actions -----------------------------------------------------------------------------------
    def run(self) -> None:
        if self.worker is not None:
            self.status.warn("fine-tuning is already running; cancel it first")
            return
        try:
            images, truths, chosen = self.labelled_inputs()
        except ValueError as exc:
            self.status.error(str(exc))
            return
        self._frames = chosen
        self._reports.clear()
        self._history = []
        self._stop.clear()
        self.result = self.forest = None
        self._progress = progress(total=100, desc="Fine-tuning detector")
        self.run_button.enabled, self.cancel_button.enabled, self.save_button.enabled = False, True, False
        self.status.value = (
            f"fine-tuning on {len(chosen)} reviewed frame(s) for up to {self.minutes.value:g} min…"
        )
        self.comparison.setText("training…")
        results_dock(self.viewer).show_page(self.page, "Fine-tuning", front=True)
        self._timer.start()
        self.worker = self.step.work.run(
            finetune_job,
            self.base_spec(),
            self.device.value,
            self.minutes.value,
            self.frames_per_domain,
            images,
            truths,
            self._reports,
            self._stop,
            cancel=self._stop.set,
            returned=self._on_done,
            errored=self._on_error,
            finished=self._on_finished,
        )

    def cancel(self) -> None:
        if self.worker is not None:
            self._stop.set()
            self.cancel_button.enabled = False
            self.status.value = "cancelling after the current step…"

    def _drain(self) -> None:
        """Apply the queued reports on the UI thread: progress bar, status, graphs."""
        changed = False
        while self._reports:
            report = self._reports.popleft()
            if isinstance(report, tuple):
                _, done, total = report
                self.status.value = f"fitting the forest for the new detector: frame {done}/{total}"
                continue
            self._history.append(report.row)
            changed = True
            if self._progress is not None:
                self._progress.n = round(100 * report.fraction)
                self._progress.refresh()
            if not self._stop.is_set():
                held = f", held-out F1 {report.row['val_f1']:.2f}" if "val_f1" in report.row else ""
                self.status.value = f"step {report.step}: loss {report.row['loss_total']:.3f}{held}"
        if changed:
            self.curves.show_history(pd.DataFrame(self._history))

    def _on_done(self, outcome) -> None:
        self._drain()
        self.result, self.forest = outcome
        self.curves.show_history(self.result.history)
        lines = list(self.result.notes)
        if self.result.after is not None:
            held = ", ".join(str(self._frames[i]) for i in self.result.validation_frames)
            b, a = self.result.before, self.result.after
            lines.insert(
                0,
                f"held-out frame(s) {held}: true F1 {b['f1']:.2f} → {a['f1']:.2f} (precision "
                f"{b['precision']:.2f} → {a['precision']:.2f}, recall {b['recall']:.2f} → "
                f"{a['recall']:.2f}; score threshold {self.result.score_threshold:g})",
            )
        self.comparison.setText("\n".join(lines))
        self.save_button.enabled = True
        self.status.info(
            "fine-tuned and its forest fitted: save them to detect the stack again with the new "
            "model (the Quality step's 'auto' forest finds the forest beside it)"
        )

    def _on_error(self, exc: Exception) -> None:
        from napari_detection_qc.engines.finetune import FinetuneCancelled
        from napari_detection_qc.finetune.detector_forest import ForestFitCancelled

        if isinstance(exc, (FinetuneCancelled, ForestFitCancelled)):
            self.comparison.setText("")
            self.status.warn("cancelled; the parent model is unchanged")
        else:
            self.status.error(f"fine-tuning failed: {exc}")

    def _on_finished(self) -> None:
        self._timer.stop()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False

    # -- saving ------------------------------------------------------------------------------------
    def save(self, path) -> None:
        if self.result is None:
            self.status.error("nothing fine-tuned yet")
            return
        from napari_detection_qc.finetune.outputs import save_finetuned

        try:
            save_finetuned(self.result, self.forest, path)
        except (ValueError, OSError) as exc:
            self.status.error(str(exc))
            return
        self.status.info(
            f"saved {path} and {companion_forest_path(path).name}; the Detection step detects "
            "the stack again with the new model"
        )
        image = self.image.value
        self.step.session.detector_saved.emit(str(path), image.name if image is not None else "")

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.step, "Save fine-tuned model", "", "Checkpoint (*.pt)")
        if path:
            self.save(path)
