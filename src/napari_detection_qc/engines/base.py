"""The detector interface every engine implements, frame input handling, and ``load_detector``.

Engines only see valid, non-constant grayscale frames already scaled to 0..255; everything a user
can hand in (uint8/uint16/int/float grayscale, RGB/RGBA, empty or constant frames, NaN) is dealt
with here once, so all engines behave alike on odd input.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..detections import FrameDetections
from ..paper import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD
from .checkpoint import DetectorLoadError

RGB_TO_GRAY = np.array([0.299, 0.587, 0.114])


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def scale_to_255(gray: np.ndarray, normalisation: dict[str, Any]) -> np.ndarray | None:
    """Map intensities to the 0..255 range the model saw in training; None for a constant frame.

    ``percentile``: the header's (low, high) percentiles go to 0 and 255, so uint16, float and
    gain/offset changes all look alike. ``raw8``: uint8 frames are used as they are (as detectron2
    models were trained); other dtypes are min-max scaled to 0..255.
    """
    low, high = float(gray.min()), float(gray.max())
    if high <= low:
        return None
    mode = normalisation["intensity"]
    if mode == "raw8" and gray.dtype == np.uint8:
        return gray.astype(np.float32)
    if mode == "percentile":
        low, high = np.percentile(gray, normalisation["percentiles"])
        if high <= low:
            low, high = float(gray.min()), float(gray.max())
    elif mode != "raw8":
        raise DetectorLoadError(f"unknown input intensity mode {mode!r} in the model header")
    scaled = (gray.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0, 255, out=scaled)


class Detector(ABC):
    """A cavity detector: ``predict(frame)`` -> :class:`FrameDetections`, one frame at a time or
    streamed over a stack with ``predict_many`` (a caller can stop between frames)."""

    engine: str

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

    def metadata(self) -> dict[str, Any]:
        """What produced a set of detections (stored in napari layer metadata, checked by forests)."""
        return {
            "detector": self.name,
            "engine": self.engine,
            "weights_sha256": self.weights_sha256,
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
        }

    def predict(self, frame) -> FrameDetections:
        return next(self.predict_many([frame]))

    def predict_many(self, frames: Iterable) -> Iterator[FrameDetections]:
        """Yield each frame's detections in order; same-shape frames run ``batch_size`` at a time."""
        pending: list[tuple[np.ndarray | None, tuple[int, int]]] = []
        for frame in frames:
            gray = as_grayscale(frame)
            pending.append((scale_to_255(gray, self.normalisation), gray.shape))
            if len(pending) >= self.batch_size:
                yield from self._run(pending)
                pending = []
        yield from self._run(pending)

    def _run(self, pending: Sequence[tuple[np.ndarray | None, tuple[int, int]]]) -> Iterator[FrameDetections]:
        images = [image for image, _ in pending if image is not None]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            detected = iter([result for image in images for result in self._detect([image])])
        else:
            detected = iter(self._detect(images) if images else [])
        for image, shape in pending:
            yield FrameDetections.empty(shape) if image is None else next(detected)

    @abstractmethod
    def _detect(self, images: Sequence[np.ndarray]) -> list[FrameDetections]:
        """Detections of valid 0..255 float32 grayscale frames."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, device={self.device}, "
            f"score_threshold={self.score_threshold}, weights={self.weights_sha256[:12]})"
        )


def default_weights_path() -> Path:
    """The bundled default model inside the installed package."""
    return Path(str(resources.files("napari_detection_qc") / "models" / "default_detector.pt"))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_detector(
    spec="default",
    *,
    device="auto",
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    batch_size: int | None = None,
) -> Detector:
    """A ready detector from ``"default"`` (the bundled model), a torchvision-engine checkpoint
    path, a detectron2 ``model_final.pth`` path, or a ``(config_yaml, weights_pth)`` pair.

    detectron2 weights run on detectron2 when it is installed, otherwise they are imported into the
    torchvision engine (no detectron2 needed).
    """
    from .torchvision_maskrcnn import TorchvisionDetector

    options = dict(
        device=device, score_threshold=score_threshold, max_detections=max_detections, batch_size=batch_size
    )
    if isinstance(spec, str) and spec == "default":
        path = default_weights_path()
        if not path.is_file():
            raise DetectorLoadError(f"the bundled default model is missing from the installation ({path})")
        return TorchvisionDetector.from_checkpoint(path, **options)
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError("a detectron2 spec is a (config_yaml, weights_pth) pair")
        config, weights = (Path(p) for p in spec)
        return load_detectron2_weights(weights, config, options)
    path = Path(spec)
    if path.suffix == ".pth":
        return load_detectron2_weights(path, None, options)
    return TorchvisionDetector.from_checkpoint(path, **options)


def load_detectron2_weights(weights: Path, config: Path | None, options: dict) -> Detector:
    """detectron2 weights on the detectron2 engine if importable, else through the import."""
    from .detectron2_engine import Detectron2Detector, detectron2_available

    if detectron2_available():
        return Detectron2Detector(weights, config, **options)
    from .detectron2_checkpoint import import_detectron2_checkpoint
    from .torchvision_maskrcnn import TorchvisionDetector

    header, state_dict = import_detectron2_checkpoint(weights, config)
    return TorchvisionDetector(header, state_dict, **options)
