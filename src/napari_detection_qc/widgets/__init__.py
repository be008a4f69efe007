"""napari docks over the core: the three steps (detection, quality, training), alone or as the
tabs of one dock, and the results dock under the canvas."""

from . import _torch_import  # noqa: F401  (first: see its docstring)
from .detection import DetectionWidget
from .main import DetectionQCWidget
from .quality import QualityWidget
from .training import TrainingWidget

__all__ = ["DetectionQCWidget", "DetectionWidget", "QualityWidget", "TrainingWidget"]
