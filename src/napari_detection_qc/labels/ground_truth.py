"""Ground-truth bookkeeping: which frames of a ground-truth Labels layer count as labeled.

A layer seeded from the predictions holds the detector's masks on every frame, so only frames
the user reviewed (painted on, confirmed as shown, or checked empty) count. In a layer drawn from
scratch every frame holding a label counts too. The record lives in the layer's metadata (a plain
dict, so it is saved with the layer); no napari imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from napari_detection_qc.io import InputError
from napari_detection_qc.io.layer_pair import METADATA_KEY
from napari_detection_qc.validation import list_regular_inputs

MASKS_SUFFIX = " masks"


def label_files_by_stem(folder) -> dict[str, Path]:
    """A ground-truth folder's label files by stem (they are matched to inputs by stem). Two
    files of one stem (``f0.tif`` beside ``f0.tiff``) are refused: either could be the truth."""
    by_stem: dict[str, Path] = {}
    for path in list_regular_inputs(folder):
        if path.stem in by_stem:
            raise InputError(
                f"{folder}: {by_stem[path.stem].name} and {path.name} both claim stem {path.stem}; keep one"
            )
        by_stem[path.stem] = path
    return by_stem


@dataclass
class GroundTruthRecord:
    seeded_from: str | None = None
    reviewed_frames: set[int] = field(default_factory=set)

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> GroundTruthRecord:
        record = (metadata or {}).get(METADATA_KEY, {})
        return cls(record.get("seeded_from"), {int(t) for t in record.get("reviewed_frames", ())})

    def to_metadata(self, metadata: dict | None) -> dict:
        """``metadata`` with this record stored in it (other keys kept)."""
        metadata = dict(metadata or {})
        metadata[METADATA_KEY] = {
            **metadata.get(METADATA_KEY, {}),
            "seeded_from": self.seeded_from,
            "reviewed_frames": sorted(self.reviewed_frames),
        }
        return metadata


class LabeledFrame(NamedTuple):
    frame: int
    n_objects: int
    how: str  # "reviewed" (the user edited or confirmed it) or "drawn" (labels in a layer drawn from scratch)


def as_frames(data) -> np.ndarray:
    """A (T, Y, X) view of (Y, X) or (T, Y, X) label data."""
    data = np.asarray(data)
    return data[None] if data.ndim == 2 else data


def labeled_frames(record: GroundTruthRecord, data) -> list[LabeledFrame]:
    """The frames that count as labeled, with their object count, in frame order."""
    stack = as_frames(data)
    drawn = set()
    if record.seeded_from is None:
        drawn = {int(t) for t in np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1))}
    frames = sorted((record.reviewed_frames | drawn) & set(range(len(stack))))
    return [
        LabeledFrame(t, count_objects(stack[t]), "reviewed" if t in record.reviewed_frames else "drawn")
        for t in frames
    ]


def count_objects(labels_frame: np.ndarray) -> int:
    ids = np.unique(labels_frame)
    return int((ids > 0).sum())


def seeded_name(masks_name: str) -> str:
    """``"<image> ground truth"`` for a masks layer named ``"<image> masks"``."""
    base = masks_name[: -len(MASKS_SUFFIX)] if masks_name.endswith(MASKS_SUFFIX) else masks_name
    return f"{base} ground truth"


def painted_frames(atoms: Iterable, ndim: int) -> set[int]:
    """Frames touched by one napari paint-history item (frame 0 for a 2-D layer). An atom is
    either a masked edit with a ``slice_key`` or an ``(indices, old, new)`` tuple."""
    if ndim == 2:
        return {0}
    frames: set[int] = set()
    for atom in atoms:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            first = key[0]
            frames |= set(range(first.start, first.stop)) if isinstance(first, slice) else {int(first)}
        elif len(atom[0]) and np.size(atom[0][0]):
            frames |= {int(t) for t in np.unique(atom[0][0])}
    return frames
