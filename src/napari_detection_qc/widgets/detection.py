"""Detection widget: run a Mask R-CNN over the current frame or the whole stack in a background
worker (progress bar, cancel, results streaming in per frame) into a Labels layer ``<image> masks``
and a Shapes layer ``<image> boxes`` with ``score``, ``label`` and ``frame`` features."""

from __future__ import annotations

import time

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker

from ..detections import FrameDetections, StackDetections, smallest_label_dtype
from ..engines import load_detector
from ..pixel_sizes import pixel_size_from_layer
from ._common import DOCK_MAX_WIDTH, METADATA_KEY, LayerPicker, StatusLabel, container

ENGINES = ("bundled default", "torchvision checkpoint", "detectron2 weights")
SHAPES_REFRESH_SECONDS = 1.0


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


class DetectionWidget(Container):
    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.native.setMaximumWidth(DOCK_MAX_WIDTH)
        self.viewer = napari_viewer
        self.image = LayerPicker(napari_viewer, Image, "image")
        self.engine = ComboBox(label="engine", choices=ENGINES, value=ENGINES[0])
        self.weights = FileEdit(label="weights", mode="r", filter="*.pt *.pth", visible=False)
        self.config = FileEdit(label="d2 config (optional)", mode="r", filter="*.yaml *.yml", visible=False)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.threshold = FloatSpinBox(label="score threshold", value=0.1, min=0.0, max=1.0, step=0.05)
        self.max_detections = SpinBox(label="max detections", value=1000, min=1, max=100000)
        self.pixel_size = FloatSpinBox(label="pixel size (nm, 0 = unknown)", value=0.0, min=0.0, max=1e6, step=0.1)
        self.scope = RadioButtons(label="run on", choices=["current frame", "whole stack"], value="whole stack",
                                  orientation="horizontal")
        self.run_button = PushButton(text="Detect")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.keep_other_frames = CheckBox(text="keep other frames' detections", value=True)
        self.status = StatusLabel(value="")
        self.extend([
            self.image, self.engine, self.weights, self.config, self.device, self.threshold,
            self.max_detections, self.pixel_size, self.scope, self.keep_other_frames,
            container(self.run_button, self.cancel_button), self.status,
        ])
        self.engine.changed.connect(self._on_engine)
        self.image.changed.connect(self._take_pixel_size)
        self._take_pixel_size(self.image.value)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.worker = None
        self._results: dict[int, FrameDetections] = {}
        self._last_shapes_refresh = 0.0

    # -- user actions ------------------------------------------------------------------------------
    def _take_pixel_size(self, layer) -> None:
        """The pixel size belongs to the image: take the one its layer knows (our reader, a scale
        in nm), or 0 (unknown) so another image's value is not carried over."""
        self.pixel_size.value = pixel_size_from_layer(layer) or 0.0

    def _on_engine(self, value: str) -> None:
        self.weights.visible = value != ENGINES[0]
        self.config.visible = value == ENGINES[2]

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
        if is_2d or self.scope.value == "whole stack":
            indices = list(range(len(frames)))
        else:
            indices = [int(self.viewer.dims.current_step[0])]
        self._prepare_layers(layer, frames, is_2d, indices)
        options = dict(device=self.device.value, score_threshold=self.threshold.value,
                       max_detections=self.max_detections.value)
        self.worker = create_worker(
            detect_frames, spec, options, frames, indices,
            _progress={"total": len(indices) + 1, "desc": f"Detecting on {layer.name}"},
        )
        self.worker.yielded.connect(self._on_frame)
        self.worker.returned.connect(self._on_done)
        self._detector_metadata = None
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"detecting on {len(indices)} frame(s)…"
        self.worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling after the current frame…"

    # -- layers ------------------------------------------------------------------------------------
    def _prepare_layers(self, layer: Image, frames, is_2d: bool, indices: list[int]) -> None:
        """Create or reuse ``<image> masks`` / ``<image> boxes``; remember what stays untouched."""
        shape = frames.shape[1:3]
        label_shape = shape if is_2d else (len(frames), *shape)
        dtype = smallest_label_dtype(self.max_detections.value)
        self.masks_layer = self._existing(f"{layer.name} masks", Labels)
        self.boxes_layer = self._existing(f"{layer.name} boxes", Shapes)
        self._results = {}
        self._is_2d = is_2d
        self._n_frames = len(frames)
        reusable = (
            self.masks_layer is not None and self.boxes_layer is not None
            and tuple(self.masks_layer.data.shape) == tuple(label_shape)
        )
        if reusable and self.keep_other_frames.value:
            try:
                previous = StackDetections.from_layer_data(self.masks_layer.data, self.boxes_layer.data,
                                                           self.boxes_layer.features)
                self._results = {t: previous[t] for t in range(len(previous)) if t not in indices}
            except ValueError:
                self._results = {}
        labels = np.zeros(label_shape, dtype=np.promote_types(dtype, self._results_dtype()))
        for t, frame in self._results.items():
            labels[t if not is_2d else ...] = frame.labels
        scale = layer.scale[-2:] if is_2d else layer.scale[-3:]
        if self.masks_layer is None:
            self.masks_layer = self.viewer.add_labels(labels, name=f"{layer.name} masks", scale=scale)
        else:
            self.masks_layer.data = labels
        if self.boxes_layer is None:
            self.boxes_layer = self.viewer.add_shapes(
                name=f"{layer.name} boxes", ndim=2 if is_2d else 3, scale=scale,
                face_color="transparent", edge_width=1.5,
            )
        self._refresh_shapes()

    def _existing(self, name: str, layer_type):
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, layer_type) else None

    def _results_dtype(self):
        return smallest_label_dtype(max((f.count for f in self._results.values()), default=0))

    def _stack(self) -> StackDetections:
        shape = self.masks_layer.data.shape[-2:]
        frames = [self._results.get(t, FrameDetections.empty(shape)) for t in range(self._n_frames)]
        return StackDetections.from_frames(frames, is_2d=self._is_2d)

    def _refresh_shapes(self) -> None:
        vertices, features = self._stack().to_shapes_data()
        layer = self.boxes_layer
        layer.data = (vertices, ["rectangle"] * len(vertices)) if vertices else []
        layer.features = features
        if len(vertices):
            layer.edge_color = "score"
            layer.edge_colormap = "plasma"
            layer.edge_contrast_limits = (0.0, 1.0)
        self._last_shapes_refresh = time.monotonic()

    def _on_frame(self, item) -> None:
        t, frame = item
        if t == "detector":
            self._detector_metadata = frame
            return
        self._results[t] = frame
        if frame.labels.max(initial=0) > np.iinfo(self.masks_layer.data.dtype).max:
            self.masks_layer.data = self.masks_layer.data.astype(smallest_label_dtype(frame.count))
        if self._is_2d:
            self.masks_layer.data[...] = frame.labels
        else:
            self.masks_layer.data[t] = frame.labels
        self.masks_layer.refresh()
        if time.monotonic() - self._last_shapes_refresh > SHAPES_REFRESH_SECONDS:
            self._refresh_shapes()
        self.status.value = f"frame {t}: {frame.count} detections"

    def _on_done(self, _result=None) -> None:
        self._finish_layers(self._detector_metadata, complete=True)

    def _finish_layers(self, detector_metadata: dict | None, complete: bool) -> None:
        self._refresh_shapes()
        layer = self.image.value
        record = {
            "detector": detector_metadata or {},
            "image_layer": layer.name if layer is not None else "",
            "pixel_size_nm": self.pixel_size.value or None,
            "frames_done": sorted(self._results),
        }
        for out in (self.masks_layer, self.boxes_layer):
            out.metadata = {**out.metadata, METADATA_KEY: record}
        total = sum(f.count for f in self._results.values())
        if complete:
            self.status.info(f"{total} detections in {len(self._results)} frame(s)")

    def _on_error(self, exc: Exception) -> None:
        self.status.error(f"detection failed: {exc}")

    def _on_finished(self) -> None:
        if self.worker is not None and self.worker.abort_requested:
            self._finish_layers(self._detector_metadata, complete=False)
            self.status.warn(f"cancelled; {len(self._results)} frame(s) have detections")
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False


def detect_frames(spec, options: dict, frames, indices: list[int]):
    """Worker body: load the detector and yield ``("detector", its metadata)``, then
    ``(t, FrameDetections)`` per frame, so progress and cancel take effect between frames."""
    detector = load_detector(spec, **options)
    yield "detector", detector.metadata()
    selected = (np.asarray(frames[t]) for t in indices)
    yield from zip(indices, detector.predict_many(selected))
