"""The whole workflow in one dock: Detection, Quality and Training as tabs; their plots and tables go to the results dock under the canvas."""

from __future__ import annotations

from qtpy.QtWidgets import QTabWidget

from napari_detection_qc.widgets._common import DOCK_MAX_WIDTH
from napari_detection_qc.widgets.detection import DetectionWidget
from napari_detection_qc.widgets.quality import QualityWidget
from napari_detection_qc.widgets.training import TrainingWidget


class DetectionQCWidget(QTabWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.setMaximumWidth(DOCK_MAX_WIDTH + 30)
        self.detection = DetectionWidget(napari_viewer)
        self.quality = QualityWidget(napari_viewer)
        self.training = TrainingWidget(napari_viewer)
        for title, step in (
            ("Detection", self.detection),
            ("Quality", self.quality),
            ("Training", self.training),
        ):
            self.addTab(step, title)
