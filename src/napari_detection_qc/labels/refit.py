"""Refitting the quality forest on the user's labeled frames: which rows it is fit on, the fit
itself (run in a worker), and cross-validated metrics on the user's own frames beside the pooled
ones (a pooled score dominated by thousands of earlier frames says little about yours).
No napari imports."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pandas as pd

from napari_detection_qc.detections.metrics import regression_metrics
from napari_detection_qc.detections.records import StackDetections
from napari_detection_qc.labels.refit_mode import RefitMode, refit_problem
from napari_detection_qc.labels.training_set import TrainingSet
from napari_detection_qc.quality.features import stack_features
from napari_detection_qc.quality.forest import TARGETS, CVResult, QualityForest
from napari_detection_qc.quality.scoring import true_quality
from napari_detection_qc.quality.signals import stack_signals

MIN_FRAMES_FOR_CV = 10
REFIT_THREADS = min(4, os.cpu_count() or 1)  # a refit in the viewer uses the machine's cores


def labeled_rows(
    stack: StackDetections,
    truth: np.ndarray,
    frames: Iterable[int],
    iou_threshold: float,
    source: str,
    signals: list[dict] | None = None,
) -> TrainingSet:
    """One training row per labeled frame: its features, true quality and (from the frames'
    stored ``signals``) backbone embedding, keyed ``source#frame`` so labeling a frame again
    replaces its row."""
    frames = sorted(int(t) for t in frames)
    features = stack_features(stack).iloc[frames].reset_index(drop=True)
    targets = true_quality(stack, truth, frames, iou_threshold)[list(TARGETS)]
    embeddings = None
    if signals is not None:
        _, all_embeddings = stack_signals(signals)
        embeddings = None if all_embeddings is None else all_embeddings[frames]
    return TrainingSet().add(features, targets, [f"{source}#{t}" for t in frames], embeddings)


def training_for_refit(
    mode: RefitMode, new_rows: TrainingSet, accumulated: TrainingSet | None, base: QualityForest
) -> TrainingSet:
    """The rows to fit on: the accumulated set (else the base forest's own training frames) plus
    the new rows, or the new rows alone; a clear error when they are too few to replace."""
    if problem := refit_problem(mode, len(new_rows)):
        raise ValueError(problem)
    if mode is RefitMode.REPLACE:
        return new_rows.copy()
    training = (accumulated or TrainingSet.from_forest(base)).copy()
    return training.add(new_rows.features, new_rows.targets, new_rows.sources, new_rows.embeddings)


def refit_forest(training: TrainingSet, base: QualityForest, detector: dict | None):
    """Fit a forest like ``base`` on the training set, cross-validated when there are enough
    frames; returns (forest, CVResult or None). Runs in a worker. The novelty check (domain flag,
    widening intervals) is kept when every frame has an embedding (detected with signals), fit on
    the set's novelty reference rows."""
    forest = QualityForest(
        base.features,
        base.n_estimators,
        base.random_state,
        base.coverage,
        detector or base.detector,
        base.forest_params,
    )
    embeddings = training.complete_embeddings
    forest.fit(
        training.features,
        training.targets,
        embeddings=embeddings,
        novelty_reference=None if embeddings is None else training.novelty_reference,
        n_jobs=REFIT_THREADS,
    )
    cv = None
    if len(training) >= MIN_FRAMES_FOR_CV:
        cv = forest.cross_validate(
            training.features,
            training.targets,
            scheme="random",
            n_splits=5,
            n_repeats=1,
            n_jobs=REFIT_THREADS,
        )
    return forest, cv


def cv_report(cv: CVResult, training: TrainingSet, new_sources: set[str]) -> pd.DataFrame:
    """Cross-validated F1 metrics over all frames ("pooled") and over the user's frames alone
    ("yours", from the same out-of-fold predictions); rows pooled / yours, columns n, mae, rmse, r2."""
    predictions = cv.predictions
    is_new = np.array([training.sources[row] in new_sources for row in predictions["row"]], bool)
    rows = {"pooled": (predictions["true_f1"], predictions["f1"])}
    if is_new.any():
        rows["yours"] = (predictions["true_f1"][is_new], predictions["f1"][is_new])
    report = {}
    for name, (truth, predicted) in rows.items():
        metrics = regression_metrics(truth, predicted)
        report[name] = {"n": len(truth), "mae": metrics["mae"], "rmse": metrics["rmse"], "r2": metrics["r2"]}
    return pd.DataFrame.from_dict(report, orient="index")
