"""Detection step: run a Mask R-CNN over the current frame or the whole stack in a background
worker into a Labels layer ``<image> masks`` and a Shapes layer ``<image> boxes`` (features
``score``, ``label``, ``frame``, ``origin``), with the detector's quality signals about each frame
in the pair's record (for forests that use them) and the object size each frame was detected at
(frames sized far from the rest of the stack are named, and can be redone at the rest's size). A
re-run replaces frame by frame as results arrive, so a cancel or an error keeps every frame not
yet redone, with its signals. Progress (frames, elapsed, time left) shows in the dock from the
moment Detect is pressed."""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, PushButton, RadioButtons, SpinBox
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import QEventLoop
from qtpy.QtWidgets import QApplication, QProgressBar

from napari_detection_qc.detections.records import FrameDetections, smallest_label_dtype
from napari_detection_qc.io.layer_pair import (
    METADATA_KEY,
    OBJECT_SIZES_KEY,
    SIGNALS_KEY,
    merge_frames,
    merge_signals,
    new_pair_id,
    pair_record,
    with_origin,
)
from napari_detection_qc.io.pixel_sizes import pixel_size_from_layer
from napari_detection_qc.paper import DEFAULT_MAX_DETECTIONS
from napari_detection_qc.progress import RunProgress, clock
from napari_detection_qc.quality.signals import SIGNAL_LEVELS, signals_to_records
from napari_detection_qc.size_report import describe_sizes, outlier_warning, size_outliers, stack_size
from napari_detection_qc.widgets._common import LayerPicker, StatusLine, Step, device_picker, row
from napari_detection_qc.widgets._torch_import import import_engines

ENGINES = ("bundled default", "torchvision checkpoint", "detectron2 weights")
WHOLE_STACK, CURRENT_FRAME = "whole stack", "current frame"
SHAPES_REFRESH_SECONDS = 1.0
BOX_EDGE_FRACTION = (
    1 / 600
)  # box outlines this fraction of the frame's longer side: about 2 screen px at full view
MIN_BOX_EDGE_PX = 1.5
SIGNALS_TOOLTIP = (
    "the detector's label-free signals about each frame, stored with the detections for "
    "quality forests that use them. cheap (default): backbone embedding, one extra "
    "backbone pass per frame, for the default forest's novelty check (its domain flag, and "
    "intervals that widen on unfamiliar frames); none: no extra cost; all: also agreement under flips and "
    "rotation (TTA), adding about 0.8x the detection time (box-only passes)"
)


def image_frames(layer: Image) -> tuple[np.ndarray, bool]:
    """(frames array (T, Y, X[, C]), is_2d) of an image layer; a clear error for other shapes."""
    data = layer.data[0] if layer.multiscale else layer.data
    spatial_ndim = data.ndim - (1 if layer.rgb else 0)
    if spatial_ndim == 2:
        return data[None], True
    if spatial_ndim == 3:
        return data, False
    raise ValueError(
        f"'{layer.name}' is {spatial_ndim}-D; pick a 2-D image or a (T, Y, X) stack "
        "(split other axes into separate layers first)"
    )


SECOND_LOOK_TOOLTIP = (
    "the bundled model looks again at each detection's surroundings and drops those that look "
    "like background (blotches, bright gaps between bend contours); untick it to keep every "
    "detection when real, faint objects go missing. Its quality forest was fitted with it on"
)


class DetectionWidget(Step):
    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.image = LayerPicker(napari_viewer, Image, "image")
        self.engine = ComboBox(label="engine", choices=ENGINES, value=ENGINES[0])
        self.weights = FileEdit(label="weights", mode="r", filter="*.pt *.pth", visible=False)
        self.config = FileEdit(label="d2 config (optional)", mode="r", filter="*.yaml *.yml", visible=False)
        self.device = device_picker(self)
        # 0 shows "model's own": the threshold stored with the weights (else 0.1), which its forest was fit at
        self.threshold = FloatSpinBox(
            label="score threshold",
            value=0.0,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip='keep detections scoring at least this; "model\'s own" is the '
            "threshold chosen for the weights, the one their forest expects",
        )
        self.threshold.native.setSpecialValueText("model's own")
        self.max_detections = SpinBox(label="max detections", value=DEFAULT_MAX_DETECTIONS, min=1, max=100000)
        # object size: typical cavity diameter in native px; 0 shows "auto" (passed as None: estimated per frame)
        self.object_size = FloatSpinBox(
            label="object size (px)",
            value=0.0,
            min=0.0,
            max=10000.0,
            step=1.0,
            tooltip="typical cavity diameter in pixels; auto lets the detector decide",
        )
        self.object_size.native.setSpecialValueText("auto")
        self.pixel_size = FloatSpinBox(
            label="pixel size (nm, 0 = unknown)", value=0.0, min=0.0, max=1e6, step=0.1
        )
        self.second_look = CheckBox(
            text="second look (drop likely background)", value=True, tooltip=SECOND_LOOK_TOOLTIP
        )
        self.signals = ComboBox(
            label="quality signals", choices=SIGNAL_LEVELS, value="cheap", tooltip=SIGNALS_TOOLTIP
        )
        self.scope = RadioButtons(
            label="run on", choices=[CURRENT_FRAME, WHOLE_STACK], value=WHOLE_STACK, orientation="horizontal"
        )
        self.run_button = PushButton(text="Detect")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.resize_button = PushButton(
            text="Redo mis-sized frames",
            enabled=False,
            tooltip="detect again the frames whose automatic object size is over 3x "
            "off the rest of the stack, at the size of the rest",
        )
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.progress_text = StatusLine()
        self.add_section(
            "Image and detector",
            self.image,
            self.engine,
            self.weights,
            self.config,
            self.device,
            self.threshold,
            self.max_detections,
            self.object_size,
            self.second_look,
            self.pixel_size,
            self.signals,
        )
        self.add_section(
            "Run",
            self.scope,
            row(self.run_button, self.cancel_button),
            self.resize_button,
            self.progress_bar,
            self.progress_text,
        )

        self.engine.changed.connect(self._on_engine)
        self.image.changed.connect(self._take_pixel_size)
        self.image.changed.connect(self._enable_resize)
        self.image.changed.connect(self._show_scope)
        self._take_pixel_size(self.image.value)
        self._show_scope(self.image.value)
        self.pixel_size.changed.connect(self._on_pixel_size)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.resize_button.changed.connect(self.redo_mis_sized)
        self.worker = None
        self.masks_layer: Labels | None = None
        self.boxes_layer: Shapes | None = None
        self.progress: RunProgress | None = None
        self._cancelling = False
        self._ticker = self.work.timer(1000, self._show_progress)
        self.work.listen(self.session.detector_saved, self._use_saved_detector)

    # -- user actions ------------------------------------------------------------------------------
    def _on_engine(self, value: str) -> None:
        self.weights.visible = value != ENGINES[0]
        self.config.visible = value == ENGINES[2]

    def _use_saved_detector(self, path: str, image_name: str) -> None:
        """A model fine-tuned in the Training step becomes this step's detector (at its own
        threshold) and detects the stack it was tuned on again, so the Quality step's "auto"
        forest switches to the forest saved beside it."""
        self.engine.value = ENGINES[1]
        self.weights.value = path
        self.threshold.value = 0.0
        if image_name in self.viewer.layers and isinstance(self.viewer.layers[image_name], Image):
            self.image.value = self.viewer.layers[image_name]
        if self.worker is None:
            self.scope.value = WHOLE_STACK
            self.run()
        else:
            self.status.warn("the fine-tuned model is selected; detect again when the running detection ends")

    def _show_scope(self, layer) -> None:
        """ "run on: current frame / whole stack" means something for stacks only."""
        try:
            self.scope.visible = layer is not None and not image_frames(layer)[1]
        except ValueError:
            self.scope.visible = False

    def _take_pixel_size(self, layer) -> None:
        """The pixel size belongs to the image: take the one its layer knows (our reader, a scale
        in nm), or 0 (unknown) so another image's value is not carried over; when the file's
        metadata did not give one, the status line says why."""
        self.pixel_size.value = pixel_size_from_layer(layer) or 0.0
        note = pair_record(layer.metadata).get("pixel_size_note") if layer is not None else None
        if note and not self.pixel_size.value:
            self.status.value = f"⚠ pixel size unknown: {note}; type it in for densities and diameters in nm"

    def _on_pixel_size(self, value: float) -> None:
        """A new pixel size applies at once to the layers detected on this image (density and
        diameters follow)."""
        image = self.image.value
        if (
            self.worker is None
            and self.masks_layer is not None
            and self.boxes_layer is not None
            and image is not None
            and pair_record(self.masks_layer.metadata).get("image_layer") == image.name
        ):
            for layer in (self.masks_layer, self.boxes_layer):
                record = {**pair_record(layer.metadata), "pixel_size_nm": value or None}
                layer.metadata = {**layer.metadata, METADATA_KEY: record}
            self.session.detections_changed.emit(self.masks_layer, self.boxes_layer, True)

    def detector_spec(self):
        engine = self.engine.value
        if engine == ENGINES[0]:
            return "default"
        weights = self.weights.value
        if not weights or not weights.is_file():
            raise ValueError("choose a weights file for this engine")
        config = self.config.value
        if engine == ENGINES[2] and config and config.is_file():
            return (config, weights)
        return weights

    def run(self) -> None:
        """Check the input, then detect in a background worker."""
        self._detect(None, self.object_size.value or None, "set by hand")

    def redo_mis_sized(self) -> None:
        """Detect the frames sized far from the rest of their stack again, at the rest's size."""
        sizes = self._stored_object_sizes(self._masks_of(self.image.value))
        outliers, size = size_outliers(sizes), stack_size(sizes)
        if not outliers or size is None:
            self.status.info("no frame of this image is sized far from the rest of its stack")
            return
        self._detect(outliers, size, "the rest of the stack's")

    def _masks_of(self, image) -> Labels | None:
        return self._existing(f"{image.name} masks", Labels) if image is not None else None

    @staticmethod
    def _stored_object_sizes(masks: Labels | None) -> dict[int, float | None]:
        """Each frame's object size from a masks layer's record (empty without one)."""
        stored = pair_record(masks.metadata).get(OBJECT_SIZES_KEY) if masks is not None else None
        return {int(t): s for t, s in (stored or {}).items()}

    def _enable_resize(self, *_) -> None:
        sizes = self._stored_object_sizes(self._masks_of(self.image.value))
        self.resize_button.enabled = self.worker is None and bool(size_outliers(sizes))

    def _detect(self, chosen: list[int] | None, object_size: float | None, size_origin: str) -> None:
        """Detect ``chosen`` frames (None: those the scope says) at ``object_size`` (None: auto)."""
        if self.worker is not None:
            self.status.warn("detection is already running; cancel it first")
            return
        layer = self.image.value
        try:
            if layer is None:
                raise ValueError("open an image first: there is no image layer to detect on")
            frames, is_2d = image_frames(layer)
            spec = self.detector_spec()
        except ValueError as exc:
            self.status.error(str(exc))
            return
        if chosen is not None:
            indices = [t for t in chosen if t < len(frames)]
        elif is_2d or self.scope.value == WHOLE_STACK:
            indices = list(range(len(frames)))
        else:
            indices = [int(self.viewer.dims.current_step[0])]
        self._start_progress(len(indices))
        self._prepare_layers(layer, frames, is_2d)
        options = dict(
            device=self.device.value,
            score_threshold=self.threshold.value or None,
            max_detections=self.max_detections.value,
            second_look=self.second_look.value,
        )
        self._run_object_size, self._run_size_origin = object_size, size_origin
        self.resize_button.enabled = False
        self.cancel_button.enabled = True
        self.worker = self.work.run(
            detect_frames,
            spec,
            options,
            frames,
            indices,
            object_size,
            self.signals.value,
            yielded=self._on_frame,
            errored=self._on_error,
            finished=self._on_finished,
        )

    def _start_progress(self, total: int) -> None:
        """Show the progress at once: creating the layers and loading the detector take seconds,
        and the user must see that Detect was taken (painted before that work starts)."""
        self.run_button.enabled = False
        self._cancelling = False
        self.progress = RunProgress(total=total)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self._show_progress()
        self._ticker.start()
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self._cancelling = True
            self.cancel_button.enabled = False
            self._show_progress()

    def _show_progress(self) -> None:
        """Frames done, time elapsed and left; once Cancel is pressed, that it is cancelling, until
        the run stops."""
        if self.progress is not None:
            self.progress_bar.setValue(self.progress.done)
            text = self.progress.text()
            self.progress_text.value = (
                f"cancelling after the current frame… ({text})" if self._cancelling else text
            )

    # -- layers ------------------------------------------------------------------------------------
    def _prepare_layers(self, layer: Image, frames, is_2d: bool) -> None:
        """Reuse ``<image> masks`` / ``<image> boxes`` when they fit this image (their frames stay
        until redone), else add new layers (napari numbers the names; nothing is overwritten)."""
        label_shape = frames.shape[1:3] if is_2d else (len(frames), *frames.shape[1:3])
        masks = self._existing(f"{layer.name} masks", Labels)
        boxes = self._existing(f"{layer.name} boxes", Shapes)
        reusable = (
            masks is not None
            and boxes is not None
            and tuple(masks.data.shape) == tuple(label_shape)
            and boxes.ndim == len(label_shape)
            and ({"score", "label", "frame"} <= set(boxes.features.columns) or not len(boxes.data))
        )
        scale = layer.scale[-2:] if is_2d else layer.scale[-3:]
        if not reusable:
            masks = self.viewer.add_labels(
                np.zeros(label_shape, smallest_label_dtype(self.max_detections.value)),
                name=f"{layer.name} masks",
                scale=scale,
            )
            boxes = self.viewer.add_shapes(
                name=f"{layer.name} boxes",
                ndim=len(label_shape),
                scale=scale,
                face_color="transparent",
                edge_width=box_edge_width(label_shape[-2:]),
            )
        self.masks_layer, self.boxes_layer = masks, boxes
        self._is_2d = is_2d
        self._previous = pair_record(masks.metadata)
        self._vertices = list(boxes.data)
        self._features = (
            with_origin(boxes.features)
            if len(boxes.data)
            else with_origin(boxes.features.reindex(columns=["score", "label", "frame"]))
        )
        self._pending: dict[int, FrameDetections] = {}
        self._signals: dict[int, dict] = {}
        self._object_sizes: dict[int, float | None] = {}
        self._redone: list[int] = []
        self._detector: dict | None = None
        self._pair_id = new_pair_id()
        self.session.start_detecting(masks, boxes)
        self.session.detections_changed.emit(masks, boxes, False)

    def _existing(self, name: str, layer_type):
        layer = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (a LayerList)
        return layer if isinstance(layer, layer_type) else None

    def _layers_gone(self) -> bool:
        """Whether the user (or another plugin) deleted a layer this detection writes."""
        return any(layer not in self.viewer.layers for layer in (self.masks_layer, self.boxes_layer))

    def _on_frame(self, item) -> None:
        t, frame, detector, object_size = item
        if self._layers_gone():
            if not self._failed:
                self._failed = (
                    "its masks or boxes layer was deleted while it ran; detect again to redo the frames"
                )
                self.worker.quit()
            return
        self._detector = detector
        masks = self.masks_layer
        if frame.count > np.iinfo(masks.data.dtype).max:
            masks.data = masks.data.astype(smallest_label_dtype(frame.count))
        if self._is_2d:
            masks.data[...] = frame.labels
        else:
            masks.data[t] = frame.labels
        masks.refresh()
        self._pending[t] = frame
        self._signals[t] = signals_to_records([frame])[0]
        self._object_sizes[t] = object_size
        self._redone.append(t)
        self.progress.advance()
        self._show_progress()
        if time.monotonic() - self._last_shapes_refresh > SHAPES_REFRESH_SECONDS:
            self._refresh_shapes()

    _last_shapes_refresh = 0.0

    def _refresh_shapes(self) -> None:
        """Replace the boxes of the frames done since the last refresh."""
        if self._pending:
            self._vertices, self._features = merge_frames(
                self._vertices, self._features, self._pending, self._is_2d
            )
            self._pending = {}
        layer = self.boxes_layer
        layer.data = (self._vertices, ["rectangle"] * len(self._vertices)) if self._vertices else []
        layer.features = self._features
        layer.edge_width = box_edge_width(self.masks_layer.data.shape[-2:])
        if len(self._vertices):
            layer.edge_color = "score"
            layer.edge_colormap = "plasma"
            layer.edge_contrast_limits = (0.0, 1.0)
        self._last_shapes_refresh = time.monotonic()

    def _finish_layers(self) -> None:
        """Boxes up to date, and the record both layers carry (detector, image, pixel size, each
        frame's signals)."""
        if self._layers_gone():
            return
        self._refresh_shapes()
        image = self.image.value
        record = {
            "pair_id": self._pair_id,
            "detector": self._detector or self._previous.get("detector") or {},
            "image_layer": image.name if image is not None else "",
            "pixel_size_nm": self.pixel_size.value or None,
            "frames_done": sorted(set(self._previous.get("frames_done", [])) | set(self._redone)),
            SIGNALS_KEY: merge_signals(self._previous.get(SIGNALS_KEY), self._signals),
            OBJECT_SIZES_KEY: self._stack_object_sizes(),
        }
        for layer in (self.masks_layer, self.boxes_layer):
            layer.metadata = {**layer.metadata, METADATA_KEY: record}

    def _stack_object_sizes(self) -> dict[str, float | None]:
        """Each detected frame's object size (native px): this run's, then the earlier runs'."""
        merged = {
            **(self._previous.get(OBJECT_SIZES_KEY) or {}),
            **{str(t): s for t, s in self._object_sizes.items()},
        }
        return dict(sorted(merged.items(), key=lambda item: int(item[0])))

    def _frames_at_max_detections(self) -> list[int]:
        counts = self._features["frame"].value_counts()
        return sorted(t for t in set(self._redone) if counts.get(t, 0) >= self.max_detections.value)

    def _kept_from_other_detector(self) -> list[int]:
        earlier = (self._previous.get("detector") or {}).get("weights_sha256")
        now = (self._detector or {}).get("weights_sha256")
        if not earlier or not now or earlier == now:
            return []
        return sorted(set(self._previous.get("frames_done", [])) - set(self._redone))

    def _on_error(self, exc: Exception) -> None:
        self._failed = f"detection failed: {exc}"

    _failed: str | None = None

    def _on_finished(self) -> None:
        self._ticker.stop()
        self._finish_layers()
        self.session.stop_detecting(self.masks_layer, self.boxes_layer)
        done, total = len(self._redone), self.progress.total
        count = int(self._features["frame"].isin(self._redone).sum())
        kept = "" if done == total else f"; the other {total - done} frame(s) keep their earlier detections"
        if self._failed:
            self.status.error(f"{self._failed} ({done} of {total} frame(s) redone{kept})")
        elif self.worker.abort_requested:
            self.status.warn(f"cancelled: {done} of {total} frame(s) redone{kept}")
        else:
            sizes = describe_sizes(self._object_sizes, self._run_object_size, self._run_size_origin)
            self.status.info(
                f"{count} detections in {done} frame(s) in {clock(time.monotonic() - self.progress.started)}; "
                f"{sizes}"
            )
            if not self._run_object_size and (
                mis_sized := outlier_warning(self._stored_object_sizes(self.masks_layer))
            ):
                self.status.warn(mis_sized)
        if capped := self._frames_at_max_detections():
            self.status.warn(
                f"frame(s) {capped[:5]}{'…' if len(capped) > 5 else ''} reached max detections "
                f"({self.max_detections.value}): objects past it were dropped; raise it and detect again"
            )
        if mixed := self._kept_from_other_detector():
            self.status.warn(
                f"frames {mixed[:5]}{'…' if len(mixed) > 5 else ''} keep detections from an earlier "
                "detector; run on the whole stack to make them consistent"
            )
        self._failed = None
        self._cancelling = False
        self.worker = None
        self._enable_resize()
        self.progress_bar.setVisible(False)
        self.progress_text.value = ""
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if not self._layers_gone():
            self.session.detections_changed.emit(self.masks_layer, self.boxes_layer, True)


def box_edge_width(frame_shape) -> float:
    """Box outline width in image pixels, scaled with the frame so the outlines stay visible on a
    4000 px frame at full view and stay thin on a small one."""
    return max(MIN_BOX_EDGE_PX, max(frame_shape) * BOX_EDGE_FRACTION)


def detect_frames(
    spec, options: dict, frames, indices: list[int], object_size: float | None = None, signals: str = "none"
):
    """Worker body: load the detector, then yield ``(t, FrameDetections, detector metadata)`` per
    frame, so progress and cancel take effect between frames. ``object_size`` None: the detector
    estimates it per frame (auto); the metadata records it as the batch store does; each frame
    also comes with the size it was detected at (None: not sized). ``signals``: a
    ``SIGNAL_LEVELS`` name, the detector's signals each frame carries."""
    import_engines()
    from napari_detection_qc.engines import load_detector

    detector = load_detector(spec, **options)
    metadata = {**detector.metadata(), "object_size": object_size or "auto"}
    selected = (np.asarray(frames[t]) for t in indices)
    for k, (t, frame) in enumerate(zip(indices, detector.predict_many(selected, object_size, signals))):
        sizes = detector.last_object_sizes
        yield t, frame, metadata, sizes[k] if k < len(sizes) else None
