"""Detector engines behind one small interface: ``load_detector(spec)`` -> ``Detector``."""

from napari_detection_qc.engines.base import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_SCORE_THRESHOLD,
    Detector,
    parse_object_size,
)
from napari_detection_qc.engines.checkpoint import DetectorLoadError, load_checkpoint, save_checkpoint
from napari_detection_qc.engines.devices import (
    DeviceChoice,
    available_devices,
    resolve_device,
    torch_build_description,
)
from napari_detection_qc.engines.registry import default_weights_path, load_detector

__all__ = [
    "DEFAULT_MAX_DETECTIONS",
    "DEFAULT_SCORE_THRESHOLD",
    "Detector",
    "DetectorLoadError",
    "DeviceChoice",
    "available_devices",
    "default_weights_path",
    "load_checkpoint",
    "load_detector",
    "parse_object_size",
    "resolve_device",
    "save_checkpoint",
    "torch_build_description",
]
