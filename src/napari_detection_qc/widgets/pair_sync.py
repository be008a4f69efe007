"""Keeps a masks + boxes pair consistent while the user edits it: a mask painted without a box
gets its box (score 1, origin "manual"); deleting boxes removes their masks, as one step of the
masks layer's undo history."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from napari.layers import Labels, Shapes
from qtpy.QtCore import QTimer

from ..ground_truth import painted_frames
from ..layer_pair import frame_box_ids, manual_rows, unboxed_masks, with_origin
from ._common import ViewerSession, labels_data

PAIR_COLUMNS = {"score", "label", "frame"}


class PairSync:
    def __init__(self, session: ViewerSession, masks: Labels, boxes: Shapes, report: Callable[[str], None]):
        self.session, self.masks, self.boxes, self.report = session, masks, boxes, report
        self._busy = False
        masks.events.paint.connect(self._on_paint)
        boxes.events.data.connect(self._on_boxes)

    def disconnect(self) -> None:
        self.masks.events.paint.disconnect(self._on_paint)
        self.boxes.events.data.disconnect(self._on_boxes)

    def _ready(self) -> bool:
        return (not self._busy and not self.session.is_busy(self.masks, self.boxes)
                and PAIR_COLUMNS <= set(self.boxes.features.columns))

    def _on_paint(self, event) -> None:
        """napari announces a paint before it writes the pixels: look once it has."""
        if self._ready():
            frames = painted_frames(event.value, self.masks.ndim)
            QTimer.singleShot(0, lambda: self.add_boxes(frames))

    def add_boxes(self, frames: set[int]) -> None:
        """Add a box for each mask in these frames that has none."""
        if not self._ready():
            return
        data = labels_data(self.masks)
        is_2d = data.ndim == 2
        features = with_origin(self.boxes.features)
        vertices, rows = [], []
        for t in sorted(frames):
            ids, boxes = unboxed_masks(data if is_2d else data[t], frame_box_ids(features, t))
            if ids.size:
                frame_vertices, frame_rows = manual_rows(ids, boxes, t, is_2d)
                vertices += frame_vertices
                rows.append(frame_rows)
        if not vertices:
            return
        self._busy = True
        try:
            self.boxes.add(vertices, shape_type="rectangle")
            self.boxes.features = pd.concat([features, *rows], ignore_index=True)
            self.boxes.refresh_colors()
        finally:
            self._busy = False
        self.report(f"added {len(vertices)} box(es) for the mask(s) you painted (score 1, marked manual)")

    def _on_boxes(self, event) -> None:
        """Before boxes are removed: clear their masks (unless another box keeps the same id)."""
        if str(getattr(event, "action", "")) != "removing" or not self._ready():
            return
        features = self.boxes.features
        removed_index = sorted(int(i) for i in event.data_indices)
        removed = features.iloc[removed_index]
        remaining = features.drop(features.index[removed_index])
        data = labels_data(self.masks)
        pixels = []
        for t, rows in removed.groupby("frame"):
            t = int(t)
            gone = np.setdiff1d(rows["label"].to_numpy(np.int64), frame_box_ids(remaining, t))
            frame = data if data.ndim == 2 else data[t]
            where = np.nonzero(np.isin(frame, gone))
            if where[0].size:
                pixels.append(where if data.ndim == 2 else (np.full(where[0].size, t), *where))
        if not pixels:
            return
        indices = tuple(np.concatenate(axis) for axis in zip(*pixels))
        self._busy = True
        try:
            with self.masks.block_history():
                self.masks.data_setitem(indices, 0)
        finally:
            self._busy = False
        self.report(f"removed the mask(s) of {len(removed)} deleted box(es); undo on '{self.masks.name}' "
                    "brings the masks back")
