"""Predicted quality of stores (with a quality forest), true quality against ground truth, and the
training table for a forest; the formulas are ``features`` and ``scoring``'s, as in the viewer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from napari_detection_qc.batch.run.detect import ErrorHandler, fail
from napari_detection_qc.batch.store.format import Store, boxes_by_frame
from napari_detection_qc.detections.coco import CocoGroundTruth
from napari_detection_qc.detections.matching import PAPER_IOU_THRESHOLD
from napari_detection_qc.io import InputError, read_frames
from napari_detection_qc.labels.ground_truth import label_files_by_stem
from napari_detection_qc.labels.training_set import read_training_csv
from napari_detection_qc.quality.counts import COUNT_COLUMNS, DENSITY_COLUMNS, with_count_estimates
from napari_detection_qc.quality.features import CANDIDATE_FEATURES, PAPER_FEATURES, table_features
from napari_detection_qc.quality.forest import QualityForest
from napari_detection_qc.quality.forest_choice import forest_for_detector, load_forest
from napari_detection_qc.quality.ranking import rank_by_features, ranked_table
from napari_detection_qc.quality.scoring import (
    QUALITY_COLUMNS,
    TRUE_COLUMNS,
    boxes_true_quality,
    quality_table,
)
from napari_detection_qc.quality.signals import SIGNAL_LEVELS, stack_signals
from napari_detection_qc.validation import require_regular_file


def forest_name(choice: str, detector_meta: dict | None) -> str:
    """``auto`` is the forest that belongs to the detector (saved beside its weights, else the
    bundled one for its family); ``default``, ``li2025`` and paths are taken as they are
    (``QualityForest.load`` knows them all)."""
    return forest_for_detector(detector_meta) if choice == "auto" else choice


def store_features(store: Store) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """(meta, detections table, the 18 features of every frame) of a finished store."""
    meta = store.read_meta()
    table = store.read_table(meta["n_frames"])
    return meta, table, table_features(table, meta["n_frames"], meta["image_shape"])


def store_signals(
    store: Store, meta: dict, forest: QualityForest
) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """(TTA signal columns, embeddings) stored with a store's detections for ``forest``; a clear
    error when the forest's features need signals the store was not detected with."""
    stored, needed = meta.get("signals", "none"), forest.required_signals
    if SIGNAL_LEVELS.index(needed) > SIGNAL_LEVELS.index(stored if stored in SIGNAL_LEVELS else "none"):
        raise InputError(
            f"{store.root}: this forest needs detector signals the detections lack (detected with --signals "
            f"{stored}); detect again with --signals {needed}, or score with a forest without signals"
        )
    signals = store.read_signals(meta["n_frames"])
    if signals is None:
        return None, None
    table, embeddings = stack_signals(signals)
    if embeddings is None and forest.uses_novelty and stored != "none":  # every frame empty or constant
        embeddings = np.full((meta["n_frames"], forest.training_embeddings.shape[1]), np.nan)
    return table, embeddings


def score_store(store: Store, forest: QualityForest, warn: ErrorHandler | None = None) -> pd.DataFrame:
    """Predicted F1/precision/recall with intervals, the in-domain flag and the estimated true count
    (with density where the pixel size is known; ``counts``) for every frame, with
    the detector's signals where the store has them (``detect --signals``). A forest with a
    novelty check scores stores without embeddings on its feature rows alone, and says so."""
    meta, _, features = store_features(store)
    table, embeddings = store_signals(store, meta, forest)
    note = forest.scoring_note(detected_with_signals=meta.get("signals", "none") != "none")
    if note and warn is not None:
        warn(note)
    try:
        quality = quality_table(features if table is None else features.join(table), forest, embeddings)
    except ValueError as exc:  # signals of another detector (embeddings of another length)
        raise InputError(f"{store.root}: {exc}") from exc
    quality = with_count_estimates(quality, meta["image_shape"], meta.get("pixel_size_nm"))
    quality.insert(0, "source", meta["source"])
    return quality


def score_stores(
    stores: Sequence[Store], forest_choice: str, *, warn: ErrorHandler, on_error: ErrorHandler | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Score every store (each forest is loaded once per process); warns when a forest was trained for
    another detector than the store's. Returns the joined table and the failures."""
    tables, failures, warned = [], [], set()

    def warn_once(message: str) -> None:
        if message not in warned:
            warned.add(message)
            warn(message)

    for store in stores:
        try:
            detector_meta = store.read_meta()["detector"]
            forest = load_forest(forest_name(forest_choice, detector_meta))
            mismatch = forest.detector_mismatch(detector_meta)
            if mismatch:
                warn_once(mismatch)
            tables.append(score_store(store, forest, warn_once))
        except InputError as exc:
            fail(str(exc), on_error, failures)
    columns = ["source", *QUALITY_COLUMNS, *COUNT_COLUMNS, *DENSITY_COLUMNS]
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)), failures


def rank_stores(
    stores: Sequence[Store],
    forest_choice: str,
    *,
    warn: ErrorHandler,
    on_error: ErrorHandler | None = None,
    limit: int | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The label-next list over every frame of the stores (``ranking``: low predicted F1, wide
    interval, out of domain, spread over the frames' variety in the paper's 8 features), best
    first, as ``rank`` writes it; and the failures."""
    quality, failures = score_stores(stores, forest_choice, warn=warn, on_error=on_error)
    features = []
    for source in dict.fromkeys(quality["source"]):
        store = next(s for s in stores if s.read_meta()["source"] == source)
        features.append(store_features(store)[2])
    features = (
        pd.concat(features, ignore_index=True) if features else pd.DataFrame(columns=list(PAPER_FEATURES))
    )
    return ranked_table(rank_by_features(quality, features, limit=limit)), failures


def ground_truth_file(store: Store, ground_truth: Path, by_stem: dict[str, Path] | None) -> Path:
    """The store's ground truth: the given file, or the file of a folder (``by_stem``) whose stem
    is the stem of the store's input."""
    if by_stem is None:
        return ground_truth
    stem = Path(store.read_meta()["source"]).stem
    if stem not in by_stem:
        raise InputError(f"{ground_truth}: no ground truth named {stem}.* for {store.root}")
    return by_stem[stem]


def read_ground_truth(truth: Path | CocoGroundTruth, meta: dict, sole_input: bool) -> np.ndarray:
    """A store's ground truth: a Labels file, or the images of the store's input in a COCO file."""
    if isinstance(truth, CocoGroundTruth):
        name = Path(meta["source"]).name
        return truth.stack_labels(name, meta["n_frames"], meta["image_shape"], sole_input)
    return read_frames(require_regular_file(truth, "ground truth"))[0]


def evaluate_store(
    store: Store,
    truth: Path | CocoGroundTruth,
    iou_threshold: float = PAPER_IOU_THRESHOLD,
    with_features: bool = False,
    sole_input: bool = True,
) -> pd.DataFrame:
    """The paper's TP/FP/FN, precision, recall and F1 of every frame (``scoring``'s numbers, from
    the stored boxes joined by frame), optionally next to the frame's 18 features for fit-forest.
    ``sole_input``: the ground truth is about this store's input only (see ``coco``)."""
    meta, table, features = store_features(store)
    n_frames, image_shape = meta["n_frames"], tuple(meta["image_shape"])
    try:
        ground_truth = read_ground_truth(truth, meta, sole_input)
        quality = boxes_true_quality(
            boxes_by_frame(table, n_frames), image_shape, ground_truth, None, iou_threshold
        )
    except InputError:
        raise
    except ValueError as exc:  # not a Labels stack, or not one of this many frames or this shape
        raise InputError(f"{getattr(truth, 'path', truth)}: {exc}") from exc
    if with_features:
        quality = pd.concat([quality, features.reset_index(drop=True)], axis=1)
    quality.insert(0, "source", meta["source"])
    return quality


def evaluate_stores(
    stores: Sequence[Store],
    ground_truth,
    *,
    iou_threshold: float = PAPER_IOU_THRESHOLD,
    with_features: bool = False,
    on_error: ErrorHandler | None = None,
    category: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Evaluate each store against its ground truth: a Labels file, a folder of them named like
    the inputs, or a COCO JSON file (``category`` picks one of its categories). Returns the
    joined table and the failures."""
    ground_truth = Path(ground_truth)
    coco = CocoGroundTruth.load(ground_truth, category) if ground_truth.suffix.lower() == ".json" else None
    if category is not None and coco is None:
        raise InputError(f"{ground_truth}: a category can only be chosen in COCO .json ground truth")
    by_stem = label_files_by_stem(ground_truth) if ground_truth.is_dir() else None
    if coco is None and by_stem is None and len(stores) != 1:
        raise InputError(f"{ground_truth}: one ground-truth file for {len(stores)} inputs; pass a folder")
    failures: list[str] = []
    tables = []
    for store in stores:
        try:
            truth = coco or ground_truth_file(store, ground_truth, by_stem)
            tables.append(evaluate_store(store, truth, iou_threshold, with_features, len(stores) == 1))
        except InputError as exc:
            fail(str(exc), on_error, failures)
    columns = ["source", *TRUE_COLUMNS, *(CANDIDATE_FEATURES if with_features else ())]
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)), failures


def feature_selection(choice: str) -> tuple[str, ...]:
    """``paper`` (the paper's final 8), ``all`` (the 18 candidates) or a comma-separated list."""
    if choice == "paper":
        return PAPER_FEATURES
    if choice == "all":
        return CANDIDATE_FEATURES
    names = tuple(name.strip() for name in choice.split(",") if name.strip())
    unknown = [name for name in names if name not in CANDIDATE_FEATURES]
    if unknown or not names:
        raise ValueError(
            f"unknown features {unknown or choice!r}; choose from {', '.join(CANDIDATE_FEATURES)}"
        )
    return names


def read_training_table(path, features: Sequence[str]) -> pd.DataFrame:
    """A training CSV (feature columns + f1, precision, recall), e.g. ``evaluate --with-features``;
    checked by ``training_set.read_training_csv``, as the viewer's training sets are."""
    return read_training_csv(path, features)
