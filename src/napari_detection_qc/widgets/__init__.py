"""napari docks over the core: the three steps (detection, quality, training), alone or as the
tabs of one dock, and the results dock under the canvas."""

from napari_detection_qc.widgets import _torch_import  # noqa: F401  (first: see its docstring)
from napari_detection_qc.widgets.detection import DetectionWidget
from napari_detection_qc.widgets.main import DetectionQCWidget
from napari_detection_qc.widgets.quality import QualityWidget
from napari_detection_qc.widgets.training import TrainingWidget

__all__ = ["DetectionQCWidget", "DetectionWidget", "QualityWidget", "TrainingWidget"]
