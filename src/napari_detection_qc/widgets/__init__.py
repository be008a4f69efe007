"""Thin napari dock widgets over the core: detection, quality and training."""

from . import _torch_import  # noqa: F401  (first: see its docstring)
from .detection import DetectionWidget
from .quality import QualityWidget
from .training import TrainingWidget

__all__ = ["DetectionWidget", "QualityWidget", "TrainingWidget"]
