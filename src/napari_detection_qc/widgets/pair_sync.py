"""Keeps a masks + boxes pair consistent while the user edits it, undo included: a mask painted
without a box gets its box (score 1, origin "manual"); deleting boxes removes their masks, as one
step of the masks layer's undo history. After any change to the masks (paint, undo, redo) the
frame is checked again: a mask brought back by undo gets its box back (with its score, when the box
was deleted here), and a manual box whose mask is gone (a paint undone) goes."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from napari.layers import Labels, Shapes
from qtpy.QtCore import QTimer

from napari_detection_qc.io.layer_pair import (
    ORIGIN_MANUAL,
    frame_box_ids,
    manual_rows,
    unboxed_masks,
    with_origin,
)
from napari_detection_qc.labels.ground_truth import painted_frames
from napari_detection_qc.widgets._common import BackgroundWork, ViewerSession, labels_data

PAIR_COLUMNS = {"score", "label", "frame"}
SETTLE_MS = 150  # napari announces an edit before it writes the pixels; look after they settle


class PairSync:
    def __init__(
        self,
        session: ViewerSession,
        masks: Labels,
        boxes: Shapes,
        report: Callable[[str], None],
        current_frame: Callable[[], int],
        owner: BackgroundWork,
    ):
        """``owner``: the background work of the widget that shows the reports; the pair is left
        alone once that widget is gone."""
        self.session, self.masks, self.boxes, self.report = session, masks, boxes, report
        self.current_frame, self.owner = current_frame, owner
        self._busy = False
        self._frames: set[int] = set()
        self._deleted: dict[
            tuple[int, int], pd.Series
        ] = {}  # boxes deleted with their masks, by (frame, label)
        self._settle = QTimer(owner)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self._check_frames)
        masks.events.paint.connect(self._on_paint)
        masks.events.thumbnail.connect(self._on_masks_changed)
        boxes.events.data.connect(self._on_boxes)

    def disconnect(self) -> None:
        if not self.owner.closed:
            self._settle.stop()
        self.masks.events.paint.disconnect(self._on_paint)
        self.masks.events.thumbnail.disconnect(self._on_masks_changed)
        self.boxes.events.data.disconnect(self._on_boxes)

    def _ready(self) -> bool:
        return (
            not self.owner.closed
            and not self._busy
            and not self.session.is_busy(self.masks, self.boxes)
            and set(self.boxes.features.columns) >= PAIR_COLUMNS
        )

    def _on_paint(self, event) -> None:
        if self._ready():
            self._frames |= painted_frames(event.value, self.masks.ndim)
            self._settle.start()

    def _on_masks_changed(self, _event=None) -> None:
        """The masks were redrawn (undo and redo announce nothing else): check the frame in view."""
        if self._ready():
            self._frames.add(0 if self.masks.ndim == 2 else int(self.current_frame()))
            self._settle.start()

    def _check_frames(self) -> None:
        frames, self._frames = self._frames, set()
        self.reconcile(frames)

    def reconcile(self, frames: set[int]) -> None:
        """In these frames, give every mask without a box its box and drop manual boxes whose mask
        is gone."""
        if not self._ready():
            return
        data, features = labels_data(self.masks), self.boxes.features
        frames = {
            t
            for t in frames
            if (data.ndim == 2 or 0 <= t < data.shape[0])
            and not np.array_equal(
                present_labels(data if data.ndim == 2 else data[t]), np.unique(frame_box_ids(features, t))
            )
        }
        if frames:
            self._drop_orphan_manual_boxes(frames)
            self.add_boxes(frames)

    def add_boxes(self, frames: set[int]) -> None:
        """Add a box for each mask in these frames that has none: the box deleted here with that
        mask if there was one (its score and origin), else a manual one."""
        if not self._ready():
            return
        data = labels_data(self.masks)
        is_2d = data.ndim == 2
        features = with_origin(self.boxes.features)
        vertices, rows = [], []
        for t in sorted(frames):
            if not is_2d and not 0 <= t < data.shape[0]:
                continue
            ids, boxes = unboxed_masks(data if is_2d else data[t], frame_box_ids(features, t))
            if ids.size:
                frame_vertices, frame_rows = manual_rows(ids, boxes, t, is_2d)
                for r, label in enumerate(ids):
                    earlier = self._deleted.pop((t, int(label)), None)
                    if earlier is not None:
                        frame_rows.loc[r, ["score", "origin"]] = [earlier["score"], earlier["origin"]]
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
        restored = sum((r["origin"] != ORIGIN_MANUAL).sum() for r in rows)
        added = len(vertices) - restored
        parts = (
            [f"added {added} box(es) for the mask(s) you painted (score 1, marked manual)"] if added else []
        ) + ([f"restored {restored} box(es) with their masks"] if restored else [])
        self.report("; ".join(parts))

    def _drop_orphan_manual_boxes(self, frames: set[int]) -> None:
        """Manual boxes whose mask no longer exists (the paint that made it was undone)."""
        features = with_origin(self.boxes.features)
        if not len(features):
            return
        data = labels_data(self.masks)
        orphans = []
        for t in frames:
            rows = np.flatnonzero(
                (features["frame"].to_numpy() == t) & (features["origin"].to_numpy() == ORIGIN_MANUAL)
            )
            if not rows.size or (data.ndim == 3 and not 0 <= t < data.shape[0]):
                continue
            frame = data if data.ndim == 2 else data[t]
            present = np.isin(features["label"].to_numpy()[rows], present_labels(frame))
            orphans += rows[~present].tolist()
        if not orphans:
            return
        self._busy = True
        try:
            self.boxes.selected_data = set(orphans)
            self.boxes.remove_selected()
        finally:
            self._busy = False
        self.report(f"removed {len(orphans)} manual box(es) whose mask was undone")

    def _on_boxes(self, event) -> None:
        """Before boxes are removed: clear their masks (unless another box keeps the same id), and
        remember the boxes so that undoing the masks' removal brings them back."""
        if str(getattr(event, "action", "")) != "removing" or not self._ready():
            return
        features = with_origin(self.boxes.features)
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
                for _, row in rows[rows["label"].isin(gone)].iterrows():
                    self._deleted[(t, int(row["label"]))] = row
        if not pixels:
            return
        indices = tuple(np.concatenate(axis) for axis in zip(*pixels))
        self._busy = True
        try:
            with self.masks.block_history():
                self.masks.data_setitem(indices, 0)
        finally:
            self._busy = False
        self.report(
            f"removed the mask(s) of {len(removed)} deleted box(es); undo on '{self.masks.name}' "
            "brings the masks back with their boxes"
        )


def present_labels(frame: np.ndarray) -> np.ndarray:
    """The sorted ids (> 0) in a labels frame; a count per id instead of a sort where ids are small
    (a 4000 px frame in tens of ms, as the user scrolls)."""
    frame = np.asarray(frame)
    if frame.dtype.kind == "u" or (frame.dtype.kind == "i" and frame.size and frame.min() >= 0):
        top = int(frame.max()) if frame.size else 0
        if top < 1 << 20:
            counts = np.bincount(frame.ravel(), minlength=top + 1)
            return np.flatnonzero(counts[1:]) + 1
    ids = np.unique(frame)
    return ids[ids > 0].astype(np.int64)
