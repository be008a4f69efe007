"""The batch store: one folder of detections per input file, and the plan of what is left to do."""

from napari_detection_qc.batch.store.format import (
    DETECTION_COLUMNS,
    Store,
    boxes_by_frame,
    find_stores,
    store_detections,
    write_csv,
    write_json,
)
from napari_detection_qc.batch.store.planning import FrameTask, InputPlan, plan_input, store_names

__all__ = [
    "DETECTION_COLUMNS",
    "FrameTask",
    "InputPlan",
    "Store",
    "boxes_by_frame",
    "find_stores",
    "plan_input",
    "store_detections",
    "store_names",
    "write_csv",
    "write_json",
]
