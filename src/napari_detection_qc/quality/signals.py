"""Label-free signals of the detector about one frame, taken while it detects.

A failing detector can produce detections whose summary features look ordinary; what it cannot
hide as easily is that it disagrees with itself, and that the frame looks unlike anything it was
fitted for. Two kinds of signal, each one extra pass of the model:

- test-time augmentation (TTA) agreement: the frame is detected again flipped and rotated by 90
  degrees; the views' boxes are mapped back and compared with the frame's own detections
  (``tta_iou``: score-weighted mean best IoU; ``tta_share``: share of detections found, IoU >= 0.5,
  in every view; ``tta_count_change``: mean relative change of the detection count).
- a backbone embedding: per-channel mean and std of the detector's FPN feature maps. Novelty of
  the embedding against the forest's training frames is scored by :class:`SubspaceNovelty`.

Every value is defined for frames without detections (agreement on nothing is full agreement).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from napari_detection_qc.detections.matching import box_iou_matrix

TTA_SIGNALS = ("tta_iou", "tta_share", "tta_count_change")
EMBEDDING = "embedding"
SIGNAL_SECONDS = "signal_seconds"
VIEWS = ("flip_x", "flip_y", "rot90")
MATCH_IOU = 0.5
SIGNAL_LEVELS = ("none", "cheap", "all")
"""What a detection call can ask for, from least to most (``SignalOptions.parse``)."""


@dataclass(frozen=True)
class SignalOptions:
    """Which signals a detection call computes. TTA costs one box-only detection pass per view
    (no mask head: about 0.8x the detection time for the three views on the study frames); the
    embedding one backbone pass (cheap)."""

    tta: bool = True
    embedding: bool = True
    views: tuple[str, ...] = VIEWS

    def __post_init__(self):
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown or not self.views:
            raise ValueError(f"TTA views must be a non-empty subset of {VIEWS}, got {self.views}")

    @classmethod
    def parse(cls, value) -> SignalOptions | None:
        """None/False: no signals; True/"all": all; "cheap": the embedding only."""
        if value is None or value is False or value == "none":
            return None
        if isinstance(value, SignalOptions):
            return value
        if value is True or value == "all":
            return cls()
        if value == "cheap":
            return cls(tta=False)
        raise ValueError(f'signals must be "all", "cheap" or "none", got {value!r}')


# -- test-time augmentation ------------------------------------------------------------------------
def view_image(image: np.ndarray, view: str) -> np.ndarray:
    if view == "flip_x":
        return np.ascontiguousarray(image[:, ::-1])
    if view == "flip_y":
        return np.ascontiguousarray(image[::-1])
    if view == "rot90":
        return np.ascontiguousarray(np.rot90(image))
    raise ValueError(f"unknown view {view!r}")


def boxes_from_view(boxes: np.ndarray, view: str, shape: tuple[int, int]) -> np.ndarray:
    """Boxes (y0, x0, y1, x1) found in ``view_image(image, view)`` in the image's own coordinates."""
    height, width = shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    y0, x0, y1, x1 = boxes.T
    if view == "flip_x":
        return np.stack([y0, width - x1, y1, width - x0], axis=1)
    if view == "flip_y":
        return np.stack([height - y1, x0, height - y0, x1], axis=1)
    if view == "rot90":  # np.rot90: view (r, c) holds image (c, width - r)
        return np.stack([x0, width - y1, x1, width - y0], axis=1)
    raise ValueError(f"unknown view {view!r}")


def tta_agreement(boxes: np.ndarray, scores: np.ndarray, view_boxes: list[np.ndarray]) -> dict[str, float]:
    """Agreement of a frame's detections with the same frame's detections in other views."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not view_boxes:
        raise ValueError("TTA agreement needs at least one view")
    counts = np.array([len(v) for v in view_boxes], dtype=np.float64)
    count_change = float(np.mean(np.abs(counts - len(boxes)) / np.maximum(np.maximum(counts, len(boxes)), 1)))
    if len(boxes) == 0:
        agree = float(np.all(counts == 0))
        return {"tta_iou": agree, "tta_share": agree, "tta_count_change": count_change}
    best = np.stack(
        [box_iou_matrix(boxes, v).max(axis=1) if len(v) else np.zeros(len(boxes)) for v in view_boxes]
    )  # (views, boxes)
    weights = scores if scores.sum() > 0 else np.ones_like(scores)
    return {
        "tta_iou": float(np.average(best.mean(axis=0), weights=weights)),
        "tta_share": float(np.mean(np.all(best >= MATCH_IOU, axis=0))),
        "tta_count_change": count_change,
    }


DetectViewBoxes = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""A 0..255 frame -> (boxes, scores) in that frame's coordinates, at the frame's detection scale."""


def frame_signals(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    options: SignalOptions,
    detect_view: DetectViewBoxes,
    embed: Callable[[np.ndarray], np.ndarray | None] | None,
) -> dict:
    """The signals of one frame whose detections (at the detection scale) are ``boxes, scores``."""
    start = time.perf_counter()
    signals: dict = {}
    if options.tta:
        views = [boxes_from_view(detect_view(view_image(image, v))[0], v, image.shape) for v in options.views]
        signals.update(tta_agreement(boxes, scores, views))
    if options.embedding and embed is not None:
        vector = embed(image)
        if vector is not None:
            signals[EMBEDDING] = np.asarray(vector, dtype=np.float32)
    signals[SIGNAL_SECONDS] = time.perf_counter() - start
    return signals


def blank_frame_signals(options: SignalOptions) -> dict:
    """Signals of a frame with nothing to detect on (empty or constant): full agreement, no
    embedding (novelty is then unknown for that frame)."""
    signals: dict = {SIGNAL_SECONDS: 0.0}
    if options.tta:
        signals.update(tta_agreement(np.zeros((0, 4)), np.zeros(0), [np.zeros((0, 4))]))
    return signals


# -- score histogram -------------------------------------------------------------------------------
def score_histogram_distance(
    histograms: np.ndarray, reference: np.ndarray, exclude_self: bool = False
) -> np.ndarray:
    """Earth mover's distance (in score units) from each row's score-bin fractions to the nearest
    reference row's. A frame without detections has all fractions 0, which is far from any frame
    with detections, and at distance 0 from other empty frames."""
    histograms = np.asarray(histograms, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if len(histograms) == 0 or len(reference) == 0:
        return np.zeros(len(histograms))
    cumulative_a, cumulative_b = np.cumsum(histograms, axis=1), np.cumsum(reference, axis=1)
    distances = 0.1 * np.abs(cumulative_a[:, None, :] - cumulative_b[None, :, :]).sum(axis=2)
    if exclude_self:
        if len(reference) < 2:
            return np.zeros(len(histograms))
        np.fill_diagonal(distances, np.inf)
    return distances.min(axis=1)


# -- novelty of backbone embeddings -------------------------------------------------------------
class SubspaceNovelty:
    """Novelty of frame embeddings against reference (in-domain) frames, without labels: how far
    each embedding lies off the principal subspace of the reference frames, and from its nearest
    reference frames within that subspace.

    Embeddings are standardised on the reference and projected on its first ``n_components``
    principal axes. Two distances: the squared residual of the projection, and the mean distance
    to the ``k`` nearest reference frames in the projection. Each is divided by the 99% quantile of
    the reference frames' own values computed out of fold (each frame scored by a model fitted
    without it, as a new frame is); the novelty is the larger of the two, so ``threshold`` is 1.

    Chosen by measurement (``benchmarks/signals_study.py``, RESULTS.md) over seed 002's typicality
    (a Gaussian mixture on k-NN distance statistics): telling the real EMPS particle images from
    leave-one-out synthetic cavity domains, AUROC 0.94 against 0.81, flagging 54% of EMPS against
    17%, while flagging 1.7% of the held-out synthetic frames against 1.1%. The k-NN term
    covers what the residual cannot see: frames unlike the reference inside its subspace.
    """

    def __init__(self, n_components: int = 16, k: int = 5, folds: int = 5, random_state: int = 0):
        self.n_components = n_components
        self.k = k
        self.folds = folds
        self.random_state = random_state
        self.threshold = 1.0

    def fit(self, embeddings: np.ndarray, reference: np.ndarray | None = None) -> SubspaceNovelty:
        """Fit on the ``reference`` rows (a boolean mask; all rows when None). ``reference_novelty``
        has one value per row: out of fold for reference rows, as a new frame's for the others
        (frames a forest learns from without calling their kind "in domain")."""
        from sklearn.model_selection import KFold

        x = np.asarray(embeddings, dtype=np.float64)
        chosen = np.ones(len(x), bool) if reference is None else np.asarray(reference, dtype=bool)
        if x.ndim != 2 or chosen.shape != (len(x),) or chosen.sum() < 3:
            raise ValueError(
                f"novelty needs at least 3 reference embeddings, got shape {x.shape} "
                f"with {int(chosen.sum())} reference rows"
            )
        inside = x[chosen]
        self._reference = chosen
        self._model = _SubspaceModel(inside, self.n_components, self.k)
        out_of_fold = np.zeros((len(inside), 2))
        folds = KFold(min(self.folds, len(inside)), shuffle=True, random_state=self.random_state)
        for train, test in folds.split(inside):
            out_of_fold[test] = _SubspaceModel(inside[train], self.n_components, self.k).distances(
                inside[test]
            )
        self._scale = np.maximum(np.quantile(out_of_fold, 0.99, axis=0), 1e-12)
        self.reference_novelty = np.zeros(len(x))
        self.reference_novelty[chosen] = (out_of_fold / self._scale).max(axis=1)
        self.reference_novelty[~chosen] = self.novelty(x[~chosen])
        return self

    def of_reference_rows(self) -> SubspaceNovelty:
        """This model as fit on its reference rows alone (the same fit: only those rows are
        modelled, and their out-of-fold novelty is computed among them)."""
        copy = SubspaceNovelty(self.n_components, self.k, self.folds, self.random_state)
        copy.threshold, copy._model, copy._scale = self.threshold, self._model, self._scale
        copy.reference_novelty = self.reference_novelty[self._reference]
        return copy

    def novelty(self, embeddings: np.ndarray) -> np.ndarray:
        """In units of the threshold (higher = more novel)."""
        x = np.asarray(embeddings, dtype=np.float64)
        if len(x) == 0:
            return np.zeros(0)
        return (self._model.distances(x) / self._scale).max(axis=1)


class _SubspaceModel:
    """Standardisation, principal axes (fewer than the rows) and nearest neighbours of reference rows."""

    def __init__(self, x: np.ndarray, n_components: int, k: int):
        from sklearn.neighbors import NearestNeighbors

        self.mean, self.scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        z = (x - self.mean) / self.scale
        _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
        self.axes = vt[: min(n_components, len(x) - 1)]
        self.neighbours = NearestNeighbors(n_neighbors=min(k, len(x))).fit(z @ self.axes.T)

    def distances(self, x: np.ndarray) -> np.ndarray:
        """(N, 2): squared residual off the subspace per dimension, mean k-NN distance within it."""
        z = (x - self.mean) / self.scale
        projected = z @ self.axes.T
        residual = ((z - projected @ self.axes) ** 2).mean(axis=1)
        nearest, _ = self.neighbours.kneighbors(projected)
        return np.column_stack([residual, nearest.mean(axis=1)])


# -- signals of a stack, and their JSON form (layer metadata, stores) ------------------------------
def stack_signals(frames) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Per frame: a table of the TTA signals (columns only where every frame has them) and the
    embeddings (NaN rows for frames without one; None when no frame has one)."""
    frames = list(getattr(frames, "frames", frames))
    signals = [getattr(f, "signals", f) or {} for f in frames]
    columns = {
        name: [s[name] for s in signals]
        for name in TTA_SIGNALS
        if signals and all(name in s for s in signals)
    }
    table = pd.DataFrame(columns, index=pd.RangeIndex(len(frames), name="frame"))
    sizes = {len(s[EMBEDDING]) for s in signals if EMBEDDING in s}
    if len(sizes) != 1:
        return table, None
    embeddings = np.full((len(frames), sizes.pop()), np.nan)
    for row, s in zip(embeddings, signals):
        if EMBEDDING in s:
            row[:] = s[EMBEDDING]
    return table, embeddings


def frames_lacking(required: str, signals) -> list[int]:
    """Frames whose signals fall short of what a forest needs (``QualityForest.required_signals``):
    "all" needs the TTA agreement, "cheap" a signals pass of any kind (a blank frame detected with
    signals has no embedding, and a forest treats it as of unknown novelty)."""
    if required not in SIGNAL_LEVELS:
        raise ValueError(f"required signals must be one of {SIGNAL_LEVELS}, got {required!r}")
    if required == "all":
        return [t for t, s in enumerate(signals) if not all(name in s for name in TTA_SIGNALS)]
    if required == "cheap":
        return [t for t, s in enumerate(signals) if not s]
    return []


def signals_to_records(frames) -> list[dict]:
    """JSON-ready signals of each frame (for napari layer metadata or a store's JSON)."""
    records = []
    for frame in getattr(frames, "frames", frames):
        record = {}
        for key, value in (frame.signals or {}).items():
            record[key] = np.asarray(value).tolist() if key == EMBEDDING else float(value)
        records.append(record)
    return records


def signals_from_records(records) -> list[dict]:
    """Inverse of :func:`signals_to_records`."""
    return [
        {
            key: np.asarray(value, dtype=np.float32) if key == EMBEDDING else float(value)
            for key, value in r.items()
        }
        for r in records or []
    ]
