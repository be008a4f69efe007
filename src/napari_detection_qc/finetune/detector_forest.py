"""Fit the quality forest that belongs to one detector (a forest learns one detector's failures).

After fine-tuning, the new detector runs over the synthetic study frames (quality varying for
known reasons) and over the user's labelled frames, exactly as a user runs it (automatic object
size); each frame's features and true F1/precision/recall (paper matching) train the forest. The
forest is saved beside the model (``model.pt`` -> ``model.forest.skops``), where ``--forest auto``
and the quality widget look for it. Frames are detected with the "cheap" signals, so the forest
gets the same novelty check as the bundled one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from napari_detection_qc.detections.matching import boxes_from_labels, match_frame
from napari_detection_qc.engines.base import Detector
from napari_detection_qc.quality.features import PAPER_FEATURES, detections_features
from napari_detection_qc.quality.forest import TARGETS, QualityForest
from napari_detection_qc.quality.signals import EMBEDDING
from napari_detection_qc.synthetic.study_frames import frame_plan, study_frame

STUDY_FRAMES_PER_DOMAIN = 4
"""13 domains (8 presets, 5 realistic families) x 4 = 52 synthetic frames: minutes on 2 CPU cores."""

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)`` after each frame."""


class ForestFitCancelled(Exception):
    """``cancelled()`` turned true while the forest's frames were being detected."""


def quality_row(detector: Detector, image, labels) -> tuple[dict[str, float], np.ndarray | None]:
    """The 18 features of the detector's output on a frame and its true F1/precision/recall, and
    the frame's backbone embedding (None where the engine or a blank frame gives none)."""
    found = detector.predict(image, signals="cheap")
    truth = match_frame(found.boxes, boxes_from_labels(np.asarray(labels))[0])
    row = {**detections_features(found), "f1": truth.f1, "precision": truth.precision, "recall": truth.recall}
    return row, found.signals.get(EMBEDDING)


def forest_table(
    detector: Detector,
    images: Sequence,
    ground_truth: Sequence,
    *,
    frames_per_domain: int = STUDY_FRAMES_PER_DOMAIN,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """One row per frame (synthetic study frames, then the labelled ones): features, targets and
    ``group`` (``synthetic:<domain>`` or ``labelled``); and the frames' embeddings when every
    frame has one."""
    plan = frame_plan(frames_per_domain)
    total = len(plan) + len(images)
    rows, embeddings = [], []

    def add(result: tuple[dict, np.ndarray | None], group: str) -> None:
        if cancelled is not None and cancelled():
            raise ForestFitCancelled("fitting the forest was cancelled")
        row, embedding = result
        rows.append({**row, "group": group})
        embeddings.append(embedding)
        if progress is not None:
            progress(len(rows), total, group)

    for spec in plan.itertuples(index=False):
        image, labels = study_frame(spec.domain, spec.severity, spec.seed)
        add(quality_row(detector, image, labels), f"synthetic:{spec.domain}")
    for image, labels in zip(images, ground_truth, strict=True):
        add(quality_row(detector, image, labels), "labelled")
    complete = embeddings and all(e is not None for e in embeddings)
    return pd.DataFrame(rows), np.stack(embeddings) if complete else None


def fit_detector_forest(
    detector: Detector,
    images: Sequence,
    ground_truth: Sequence,
    *,
    features: Sequence[str] = PAPER_FEATURES,
    frames_per_domain: int = STUDY_FRAMES_PER_DOMAIN,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> QualityForest:
    """A QualityForest (intervals and domain flag included) fitted for ``detector``."""
    table, embeddings = forest_table(
        detector,
        images,
        ground_truth,
        frames_per_domain=frames_per_domain,
        progress=progress,
        cancelled=cancelled,
    )
    forest = QualityForest(features=features, detector=detector.metadata())
    forest.fit(table, table[list(TARGETS)], groups=table["group"], embeddings=embeddings)
    labelled = int((table["group"] == "labelled").sum())
    forest.metadata.update(
        {
            "name": f"forest for {detector.name}",
            "description": f"fit on {len(table) - labelled} synthetic study frames and {labelled} labelled frames, "
            f"detected by {detector.name}",
            "labelled_frames": labelled,
            "synthetic_frames": len(table) - labelled,
        }
    )
    return forest
