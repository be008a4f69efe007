"""The detector interface every engine implements, and frame input handling.

Engines only see valid, non-constant grayscale frames already scaled to 0..255; everything a user
can hand in (uint8/uint16/int/float grayscale, RGB/RGBA, empty or constant frames, NaN) is dealt
with here once, so all engines behave alike on odd input.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from napari_detection_qc.detections.records import FrameDetections
from napari_detection_qc.engines.boxmasks import BoxMasks
from napari_detection_qc.engines.cpu_parallel import cpu_workers
from napari_detection_qc.engines.detection_verifier import DetectionVerifier, detection_evidence
from napari_detection_qc.engines.devices import resolve_device
from napari_detection_qc.engines.intensity import scale_to_255
from napari_detection_qc.engines.scaling import (
    ESTIMATE_MIN_SCORE,
    Rung,
    ScaleRule,
    Window,
    ladder_detections,
    resample,
    size_from_ladder,
)
from napari_detection_qc.engines.size_chooser import SizeChooser
from napari_detection_qc.engines.tiling import detect_in_tiles
from napari_detection_qc.paper import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD
from napari_detection_qc.quality.signals import SignalOptions, blank_frame_signals, frame_signals

RGB_TO_GRAY = np.array([0.299, 0.587, 0.114])


def as_grayscale(frame) -> np.ndarray:
    """A 2-D grayscale view of one frame (RGB/RGBA are converted); clear errors for anything else."""
    array = np.asarray(frame)
    if array.size == 0:
        raise ValueError(f"the frame is empty (shape {array.shape}); nothing to detect on")
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"frames must hold integer or float pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float64) @ RGB_TO_GRAY
    elif array.ndim != 2:
        raise ValueError(
            f"a frame must be a 2-D grayscale (Y, X) or RGB(A) (Y, X, 3|4) image, got shape {array.shape}; "
            "pass stacks one frame at a time (predict_many)"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError("the frame contains NaN or infinite pixels; fill or mask them before detection")
    return array


ObjectSize = float | str | None
"""A typical object diameter in native pixels, or ``"auto"``/None to estimate it per frame."""


class Detector(ABC):
    """A cavity detector: ``predict(frame)`` -> :class:`FrameDetections`, one frame at a time or
    streamed over a stack with ``predict_many`` (a caller can stop between frames).

    Models that know the object size they were trained at (``scale_rule``) see every frame
    resampled to it (``object_size``: a diameter in native pixels, or ``"auto"`` to estimate it per
    frame) and detected in overlapping tiles; results always come back on the frame's own pixel
    grid. Other models (detectron2's) apply their own resize rule to the whole frame.
    """

    engine: str
    scale_rule: ScaleRule | None = None
    size_chooser: SizeChooser | None = None
    verifier: DetectionVerifier | None = None

    def __init__(
        self,
        *,
        name: str,
        weights_sha256: str,
        normalisation: dict[str, Any],
        device="auto",
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        batch_size: int | None = None,
    ):
        if not 0 <= score_threshold <= 1:
            raise ValueError(f"score_threshold must lie in [0, 1], got {score_threshold}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        self.name = name
        self.weights_sha256 = weights_sha256
        self.normalisation = normalisation
        self.device = resolve_device(device)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.batch_size = batch_size or (4 if self.device.type == "cuda" else 1)
        self.last_object_sizes: list[float | None] = []
        """The typical object diameter used for each frame of the last ``predict_many``."""
        self.weights_path: str | None = None
        """The user's weights file this detector was loaded from (None for the bundled model)."""

    def metadata(self) -> dict[str, Any]:
        """What produced a set of detections (stored in napari layer metadata, checked by forests);
        a user's weights file is named so that the forest fitted beside it can be found."""
        description = {
            "detector": self.name,
            "engine": self.engine,
            "weights_sha256": self.weights_sha256,
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
            "second_look": self.verifier is not None,
        }
        if self.weights_path is not None:
            description["weights_path"] = self.weights_path
        return description

    def predict(self, frame, object_size: ObjectSize = "auto", signals=None) -> FrameDetections:
        return next(self.predict_many([frame], object_size, signals))

    def predict_many(
        self, frames: Iterable, object_size: ObjectSize = "auto", signals=None
    ) -> Iterator[FrameDetections]:
        """Yield each frame's detections in order. ``signals`` ("all", "cheap", a
        :class:`SignalOptions`, or None) adds the detector's label-free signals to each frame."""
        size = parse_object_size(object_size)
        options = SignalOptions.parse(signals)
        self.last_object_sizes = []
        if self.scale_rule is None:
            yield from self._predict_unscaled(frames, options)
            return
        for frame in frames:
            gray = as_grayscale(frame)
            image = scale_to_255(gray, self.normalisation)
            if image is None:
                self.last_object_sizes.append(size)
                yield _with_signals(
                    FrameDetections.empty(gray.shape), options and blank_frame_signals(options)
                )
                continue
            yield self._predict_scaled(image, size, options)

    def object_size_of(self, frame) -> float | None:
        """The typical object diameter (native px) ``"auto"`` finds in a frame; None if unknown."""
        if self.scale_rule is None:
            return None
        image = scale_to_255(as_grayscale(frame), self.normalisation)
        return None if image is None else self._estimate_object_size(image)

    def _estimate_object_size(self, image: np.ndarray) -> float | None:
        return size_from_ladder(self.size_ladder(image), self.scale_rule, chooser=self.size_chooser)

    def size_ladder(self, image: np.ndarray) -> list[Rung]:
        """The automatic size's detections of a 0..255 frame at each factor of its ladder. The
        estimate sees every detection down to its own floor, whatever this detector's threshold,
        so a model shipped with a high threshold sizes frames as at 0.1."""
        floor = min(self.score_threshold, ESTIMATE_MIN_SCORE)
        detect_boxes = partial(self._detect_boxes, min_score=floor, masks=False)
        return ladder_detections(image, detect_boxes, self.scale_rule, cpu_workers(self.device))

    def detect_resampled(self, image: np.ndarray, size: float | None = None) -> tuple[np.ndarray, BoxMasks]:
        """A 0..255 frame resampled to the detector's scale for objects of ``size`` (None: the
        automatic estimate) and its detections there, before the verifier."""
        resampled = self.resampled(image, size)
        found = detect_in_tiles(resampled, self._detect_boxes, self.batch_size, cpu_workers(self.device))
        return resampled, found.top(self.max_detections)

    def resampled(self, image: np.ndarray, size: float | None = None) -> np.ndarray:
        """A 0..255 frame resampled to the detector's scale for objects of ``size`` (None: the
        automatic estimate, recorded in ``last_object_sizes``)."""
        if size is None:
            size = self._estimate_object_size(image)
        self.last_object_sizes.append(size)
        return resample(image, self.scale_rule.factor_for(size))

    def verified(self, resampled: np.ndarray, found: BoxMasks) -> BoxMasks:
        """The detections this model's verifier keeps (all of them without one)."""
        if self.verifier is None or not len(found):
            return found
        evidence = detection_evidence(
            resampled, found.boxes, found.scores, found.mask_probs, self.scale_rule.target_px
        )
        return found.select(self.verifier.keep(evidence))

    def _predict_scaled(
        self, image: np.ndarray, size: float | None, options: SignalOptions | None
    ) -> FrameDetections:
        resampled, found = self.detect_resampled(image, size)
        found = self.verified(resampled, found)
        back = (image.shape[0] / resampled.shape[0], image.shape[1] / resampled.shape[1])
        detections = found.scaled(*back).to_detections(image.shape)
        if options is None:
            return detections
        workers = cpu_workers(self.device)

        def detect_view(view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            boxes_only = partial(self._detect_boxes, masks=False)
            in_view = detect_in_tiles(view, boxes_only, self.batch_size, workers).top(self.max_detections)
            return in_view.boxes, in_view.scores

        signals = frame_signals(resampled, found.boxes, found.scores, options, detect_view, self.embed)
        return _with_signals(detections, signals)

    def _predict_unscaled(self, frames: Iterable, options: SignalOptions | None) -> Iterator[FrameDetections]:
        """Same-shape frames run ``batch_size`` at a time, at the model's own resize rule."""
        pending: list[tuple[np.ndarray | None, tuple[int, int]]] = []
        for frame in frames:
            gray = as_grayscale(frame)
            pending.append((scale_to_255(gray, self.normalisation), gray.shape))
            self.last_object_sizes.append(None)
            if len(pending) >= self.batch_size:
                yield from self._run(pending, options)
                pending = []
        yield from self._run(pending, options)

    def _run(
        self, pending: Sequence[tuple[np.ndarray | None, tuple[int, int]]], options: SignalOptions | None
    ) -> Iterator[FrameDetections]:
        images = [image for image, _ in pending if image is not None]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            detected = iter([result for image in images for result in self._detect([image])])
        else:
            detected = iter(self._detect(images) if images else [])
        for image, shape in pending:
            if image is None:
                yield _with_signals(FrameDetections.empty(shape), options and blank_frame_signals(options))
                continue
            detections = next(detected)
            if options is not None:
                signals = frame_signals(
                    image,
                    detections.boxes,
                    detections.scores,
                    options,
                    self._detect_view_unscaled,
                    self.embed,
                )
                detections = _with_signals(detections, signals)
            yield detections

    def _detect_view_unscaled(self, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = self._detect([view])[0]
        return found.boxes, found.scores

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        """A fixed-length embedding of a 0..255 frame in the model's own feature space, for the
        novelty signal; None for engines that do not expose their features."""
        return None

    @abstractmethod
    def _detect(self, images: Sequence[np.ndarray]) -> list[FrameDetections]:
        """Detections of valid 0..255 float32 grayscale frames, at the model's own resize rule."""

    def _detect_boxes(
        self,
        images: Sequence[np.ndarray],
        min_score: float | None = None,
        masks: bool = True,
        cores: Sequence[Window] | None = None,
    ) -> list[BoxMasks]:
        """Raw detections of 0..255 frames at their given scale (models with a ``scale_rule``),
        scoring at least ``min_score`` (default: the detector's threshold); ``masks=False`` skips
        the mask branch (empty masks) where only boxes and scores are needed; ``cores`` (one
        window per frame) keeps only detections centred inside it. Runs on several threads at
        once (a frame's tiles, with the same arguments; ``cpu_parallel.py``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support object-size rescaling")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, device={self.device}, "
            f"score_threshold={self.score_threshold}, weights={self.weights_sha256[:12]})"
        )


def _with_signals(detections: FrameDetections, signals: dict | None) -> FrameDetections:
    if not signals:
        return detections
    return FrameDetections(detections.boxes, detections.scores, detections.labels, signals)


def parse_object_size(object_size: ObjectSize) -> float | None:
    """None for automatic; else a positive diameter in pixels (clear error otherwise)."""
    if object_size is None or (isinstance(object_size, str) and object_size.strip().lower() == "auto"):
        return None
    try:
        size = float(object_size)
    except (TypeError, ValueError):
        raise ValueError(f'object size must be "auto" or a diameter in pixels, got {object_size!r}') from None
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f'object size must be "auto" or a positive diameter in pixels, got {object_size!r}')
    return size


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
