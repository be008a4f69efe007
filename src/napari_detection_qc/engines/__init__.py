"""Detector engines behind one small interface: ``load_detector(spec)`` -> ``Detector``."""

from .base import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD, Detector, load_detector, resolve_device
from .checkpoint import DetectorLoadError, load_checkpoint, save_checkpoint

__all__ = [
    "DEFAULT_MAX_DETECTIONS",
    "DEFAULT_SCORE_THRESHOLD",
    "Detector",
    "DetectorLoadError",
    "load_checkpoint",
    "load_detector",
    "resolve_device",
    "save_checkpoint",
]
