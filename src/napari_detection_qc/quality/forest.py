"""QualityForest: the seed paper's StandardScaler + RandomForestRegressor(100), for F1, precision
and recall, with calibrated intervals, an out-of-domain flag, the paper's CV metrics and safe files.

- One scaler + forest pipeline per target, so the F1 model is exactly the paper's.
- Intervals: split-conformal on the forests' out-of-bag predictions (no data is held back),
  normalised by the spread of the trees so that hard frames get wider intervals.
- ``in_domain``: the frame's nearest training frame, in the F1 model's scaled feature space, is no
  farther than 99% of training frames are from their own nearest neighbour, and, when the frames
  carry the detector's backbone embeddings (``signals.py``), the frame's novelty against the
  training frames is no higher than 99% of the training frames' own.
- Signals: the detector's TTA agreement can be features; so can two values the forest
  derives itself: ``score_hist_distance`` (to the nearest training frame's score histogram) and
  ``novelty`` (of the embedding against the training frames'). With embeddings, intervals are weighted-conformal by
  novelty: residuals of training frames of similar novelty count most, and a frame more novel
  than the training frames gets a wider interval, up to [0, 1].
- Two kinds of training frames (a novelty reference and others, e.g. synthetic and real): a second
  forest fit on the reference frames alone is blended in by each frame's kind, and frames on which
  the two disagree are not in domain (``forest_committee.py``).
- Files: skops (no pickle execution) holding the pipelines, the training set and the metadata.
  Files from before the signals load and say so (``signals_note``).
"""

from __future__ import annotations

import json
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from napari_detection_qc.detections.metrics import regression_metrics
from napari_detection_qc.io.atomic import atomic_path
from napari_detection_qc.quality.features import CANDIDATE_FEATURES, PAPER_FEATURES, SCORE_BIN_NAMES
from napari_detection_qc.quality.forest_choice import (
    BUNDLED_FORESTS,
    MODELS_DIR,
    detector_family,
)
from napari_detection_qc.quality.forest_committee import FrameKind, combine
from napari_detection_qc.quality.forest_structure import pipeline_problem, signal_arrays_problem
from napari_detection_qc.quality.signals import TTA_SIGNALS, SubspaceNovelty, score_histogram_distance
from napari_detection_qc.validation import (
    DETECTOR_DESCRIPTION,
    MALFORMED_DATA_ERRORS,
    Anything,
    Int,
    Maybe,
    Real,
    Record,
    Seq,
    Text,
    one_line,
    validate,
)

TARGETS = ("f1", "precision", "recall")
FILE_FORMAT = "napari-detection-qc/quality-forest"
FILE_VERSION = 4  # 2: training embeddings, signal features and conformal residuals; 3: subspace novelty;
# 4: the reference-only forest of a forest fit on two kinds of frames (forest_committee.py)
NOVELTY_VERSION = 3
"""Files before it computed ``novelty`` another way; a forest using it as a feature needs a refit."""
DERIVED_FEATURES = ("score_hist_distance", "novelty")
"""Computed by the forest from a frame's score bins / embedding against its training frames."""
FOREST_FEATURES = CANDIDATE_FEATURES + TTA_SIGNALS + DERIVED_FEATURES
NO_SIGNALS_NOTE = (
    "this forest uses none of the detector's signals (fitted without them, or a file from before they "
    "existed): its domain flag looks at the feature rows only and its intervals do not widen with novelty"
)
NO_EMBEDDINGS_NOTE = (
    "these detections lack the detector's embeddings (detected without signals): this forest's in-domain "
    "flag uses the feature rows only, and its intervals do not widen with novelty; detect with signals "
    "'cheap' for its novelty check"
)
MIN_TRAINING_FRAMES = 5

# Types a forest file may contain; anything else in a file is refused before loading.
TRUSTED_TYPES = [
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
    "numpy.float64",
    "numpy.int64",
    "numpy.dtype",
    "numpy.ndarray",
    "builtins.slice",
]


class ForestLoadError(ValueError):
    """A forest file that is missing, corrupt, of another format, or holds untrusted content."""


def package_versions() -> dict[str, str]:
    names = ("napari-detection-qc", "scikit-learn", "numpy", "skops")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _embeddings(embeddings, n: int) -> np.ndarray:
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != n:
        raise ValueError(f"embeddings must be one row per frame ({n}), got shape {vectors.shape}")
    return vectors


def _table(frame: pd.DataFrame, columns: Sequence[str], what: str) -> np.ndarray:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")
    values = frame.loc[:, list(columns)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN or infinite values in {list(columns)}")
    return values


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The finite-sample split-conformal quantile of nonconformity scores."""
    n = len(scores)
    level = min(1.0, np.ceil((n + 1) * coverage) / n)
    return float(np.quantile(scores, level, method="higher"))


@dataclass
class CVResult:
    """Cross-validation output: per-fold metrics, their mean per target, out-of-fold predictions."""

    folds: pd.DataFrame
    summary: pd.DataFrame
    predictions: pd.DataFrame


CALIBRATION = Maybe(
    Record(
        {
            "interval_scale": Record({target: Real(0.0, 1e12) for target in TARGETS}),
            "domain_radius": Real(0.0, 1e300),
        }
    )
)
FOREST_META = Record(
    {
        "features": Seq(Text(max_length=100), 1, 256),
        "n_estimators": Int(1, 100_000),
        "random_state": Maybe(Int(-(2**63), 2**63 - 1)),
        "coverage": Real(0.0, 1.0),
        "detector": Maybe(DETECTOR_DESCRIPTION),
        "forest_params": Maybe(Record({})),
        "training_groups": Anything(),
        "calibration": CALIBRATION,
        "reference_calibration": CALIBRATION,
    },
    optional=frozenset({"forest_params", "training_groups", "calibration", "reference_calibration"}),
)
"""What a forest file's metadata may hold; the trees themselves are checked by ``forest_structure``."""


class QualityForest:
    """Predicts a detector's per-frame F1, precision and recall from features of its output."""

    def __init__(
        self,
        features: Sequence[str] = PAPER_FEATURES,
        n_estimators: int = 100,
        random_state: int = 0,
        coverage: float = 0.9,
        detector: dict | None = None,
        forest_params: dict | None = None,
    ):
        unknown = [f for f in features if f not in FOREST_FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; choose from {FOREST_FEATURES}")
        if not 0 < coverage < 1:
            raise ValueError("coverage must lie in (0, 1)")
        self.features = tuple(features)
        self.n_estimators = int(n_estimators)
        self.random_state = int(random_state)
        self.coverage = float(coverage)
        self.detector = dict(detector or {})
        self.forest_params = dict(forest_params or {})  # extra RandomForestRegressor settings
        self.metadata: dict = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.training_features: pd.DataFrame | None = None
        self.training_targets: pd.DataFrame | None = None
        self.training_groups: list[str] | None = None
        self._interval_scale: dict[str, float] = {}
        self._neighbours: NearestNeighbors | None = None
        self._domain_radius = 0.0
        self.training_embeddings: np.ndarray | None = None
        self.novelty_model: SubspaceNovelty | None = None
        self.novelty_reference: np.ndarray | None = None
        """Which training frames the novelty check was fit on (None: all)."""
        self._residuals: dict[str, np.ndarray] = {}
        self.signals_note: str | None = None
        self._training_bins: np.ndarray | None = None
        self.reference_forest: QualityForest | None = None
        """Fit on the novelty reference frames alone, when the forest also learns from other kinds."""
        self.frame_kind: FrameKind | None = None

    # -- fitting -----------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return bool(self.pipelines)

    @property
    def n_training(self) -> int:
        return 0 if self.training_features is None else len(self.training_features)

    def _new_pipeline(self) -> Pipeline:
        forest = RandomForestRegressor(
            n_estimators=self.n_estimators,
            random_state=self.random_state,
            n_jobs=1,
            **self.forest_params,
        )
        return Pipeline([("scaler", StandardScaler()), ("forest", forest)])

    @property
    def uses_novelty(self) -> bool:
        return self.novelty_model is not None

    def scoring_note(self, detected_with_signals: bool) -> str:
        """What a user should know about scores from this forest: that its file predates the
        signals, or that the frames were detected without the embeddings its novelty check uses
        (blank frames detected with signals have none either, but are of unknown novelty, not
        "detected without signals"); empty when neither holds."""
        if self.signals_note:
            return self.signals_note
        return NO_EMBEDDINGS_NOTE if self.uses_novelty and not detected_with_signals else ""

    @property
    def required_signals(self) -> str:
        """The least detection-time signals (``SignalOptions.parse`` names) its features need:
        "all" for TTA features, "cheap" for novelty, else "none". A forest that uses novelty only
        for its domain flag and intervals still predicts without embeddings (it then falls back
        to the feature rows' distance and global intervals)."""
        if any(f in TTA_SIGNALS for f in self.features):
            return "all"
        return "cheap" if "novelty" in self.features else "none"

    def fit(
        self,
        features_df: pd.DataFrame,
        targets_df: pd.DataFrame,
        groups=None,
        embeddings=None,
        novelty_reference=None,
        n_jobs: int = 1,
    ) -> QualityForest:
        """Fit one pipeline per target; calibrate intervals and the domain flag on the same data.
        ``embeddings`` (one row per frame, the detector's backbone embedding) enable the novelty
        signal; a forest fitted without them works as the paper's and says so.
        ``novelty_reference`` (a boolean mask, default all rows): the frames whose kind the novelty
        check calls known. The bundled forest learns from real EMPS images without letting them
        make every real image look familiar (measured in RESULTS.md, signals study); it then also
        fits a forest on the reference frames alone, whose predictions are blended in by the
        frame's kind (``forest_committee.py``). ``n_jobs``: threads fitting the targets' forests at
        once (the same forests as on one)."""
        given = features_df
        if len(features_df) < MIN_TRAINING_FRAMES:
            raise ValueError(
                f"a forest needs at least {MIN_TRAINING_FRAMES} labeled frames, got {len(features_df)}"
            )
        self.training_embeddings = None if embeddings is None else _embeddings(embeddings, len(features_df))
        if self.training_embeddings is not None and not np.isfinite(self.training_embeddings).all():
            raise ValueError("training embeddings must be finite (frames without one cannot be used)")
        self.novelty_reference = (
            None
            if novelty_reference is None or embeddings is None
            else (np.asarray(novelty_reference, dtype=bool))
        )
        self.novelty_model = (
            None
            if embeddings is None
            else SubspaceNovelty().fit(self.training_embeddings, self.novelty_reference)
        )
        if "novelty" in self.features and self.novelty_model is None:
            raise ValueError("the feature 'novelty' needs the training frames' embeddings")
        self.signals_note = None if self.novelty_model is not None else NO_SIGNALS_NOTE
        derived = {}
        self._training_bins = None
        if "score_hist_distance" in self.features:
            self._training_bins = _table(features_df, SCORE_BIN_NAMES, "features")
            derived["score_hist_distance"] = score_histogram_distance(
                self._training_bins, self._training_bins, exclude_self=True
            )
        if self.novelty_model is not None:
            derived["novelty"] = self.novelty_model.reference_novelty
        features_df = features_df.assign(**{k: v for k, v in derived.items() if k in self.features})
        x = _table(features_df, self.features, "features")
        y = _table(targets_df, TARGETS, "targets")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} feature rows but {len(y)} target rows")
        if y.min() < 0 or y.max() > 1:
            raise ValueError(
                f"targets {', '.join(TARGETS)} must lie in [0, 1] (fractions, not percent); "
                f"got {y.min():g} to {y.max():g}"
            )
        fitted = in_threads(lambda j: self._new_pipeline().fit(x, y[:, j]), range(len(TARGETS)), n_jobs)
        self.pipelines = dict(zip(TARGETS, fitted, strict=True))
        self.training_features = pd.DataFrame(x, columns=list(self.features))
        self.training_targets = pd.DataFrame(y, columns=list(TARGETS))
        self.training_groups = None if groups is None else [str(g) for g in groups]
        self._calibrate()
        self._fit_reference_forest(given, targets_df, n_jobs)
        return self

    def _reference_rows(self) -> np.ndarray | None:
        """The novelty reference's rows when the training frames are of two kinds, each with
        enough frames for a forest of its own; None otherwise."""
        reference = self.novelty_reference
        if reference is None or min(reference.sum(), (~reference).sum()) < MIN_TRAINING_FRAMES:
            return None
        return np.flatnonzero(reference)

    def _fit_frame_kind(self) -> None:
        self.frame_kind = FrameKind().fit(self.training_embeddings, ~self.novelty_reference)

    def _fit_reference_forest(
        self, features_df: pd.DataFrame, targets_df: pd.DataFrame, n_jobs: int = 1
    ) -> None:
        self.reference_forest, self.frame_kind = None, None
        rows = self._reference_rows()
        if rows is None:
            return
        self.reference_forest = self._clone().fit(
            features_df.iloc[rows],
            targets_df.iloc[rows],
            embeddings=self.training_embeddings[rows],
            n_jobs=n_jobs,
        )
        self._fit_frame_kind()

    def _tree_spread(self, target: str, x: np.ndarray) -> np.ndarray:
        pipeline = self.pipelines[target]
        scaled = pipeline.named_steps["scaler"].transform(x)
        per_tree = np.stack([t.predict(scaled) for t in pipeline.named_steps["forest"].estimators_])
        return per_tree.std(axis=0)

    def _calibrate(self) -> None:
        """Conformal scales from out-of-bag residuals over the trees' out-of-bag spread."""
        x = self.training_features.to_numpy()
        for target in TARGETS:
            pipeline = self.pipelines[target]
            forest = pipeline.named_steps["forest"]
            scaled = pipeline.named_steps["scaler"].transform(x)
            per_tree = np.stack([t.predict(scaled) for t in forest.estimators_])
            in_bag = np.zeros_like(per_tree, dtype=bool)
            for k, sample_idx in enumerate(forest.estimators_samples_):
                in_bag[k, sample_idx] = True
            oob = np.ma.masked_array(per_tree, mask=in_bag)
            seen = (~in_bag).sum(axis=0) > 0
            oob_mean = oob.mean(axis=0).filled(np.nan)
            oob_std = oob.std(axis=0).filled(np.nan)
            truth = self.training_targets[target].to_numpy()
            residual = np.abs(truth - oob_mean) / (oob_std + self._spread_floor)
            self._residuals[target] = residual  # NaN where a frame was in every tree's bag
            self._interval_scale[target] = (
                conformal_quantile(residual[seen], self.coverage) if seen.any() else 1.0
            )
        self._fit_neighbours()
        distances, _ = self._neighbours.kneighbors(n_neighbors=1)  # nearest *other* training frame
        self._domain_radius = float(np.quantile(distances[:, 0], 0.99))

    def _fit_neighbours(self) -> None:
        scaled_f1 = self.pipelines["f1"].named_steps["scaler"].transform(self.training_features.to_numpy())
        self._neighbours = NearestNeighbors(n_neighbors=1).fit(scaled_f1)

    _spread_floor = 0.02

    # -- prediction --------------------------------------------------------------------------------
    def predict(self, features_df: pd.DataFrame, embeddings=None) -> pd.DataFrame:
        """Predicted f1/precision/recall with ``<target>_low``/``_high`` intervals, ``in_domain``,
        ``domain_distance`` and ``novelty`` (0 where unknown: no embedding, or a forest without
        signals; ``novelty_known`` says which). ``embeddings``: one row per frame (NaN rows for
        frames without one), as the detector stored them with the detections."""
        if not self.is_fitted:
            raise RuntimeError("the forest is not fitted; fit it or load a saved one")
        missing = [f for f in self.features if f in TTA_SIGNALS and f not in features_df.columns]
        if missing:
            raise ValueError(
                f"this forest needs the detector signals {missing}, which these detections lack; "
                "detect again with signals on, or use a forest without them"
            )
        if "novelty" in self.features and embeddings is None:
            raise ValueError("this forest needs the detector's backbone embeddings of the frames")
        novelty, known = self._novelty(embeddings, len(features_df))
        x = self._inputs(features_df, novelty, known)
        out = pd.DataFrame(index=features_df.index)
        for target in TARGETS:
            point = np.clip(self.pipelines[target].predict(x), 0.0, 1.0) if len(x) else np.zeros(0)
            scale = self._interval_scales(target, novelty, known)
            half = scale * (self._tree_spread(target, x) + self._spread_floor) if len(x) else np.zeros(0)
            out[target] = point
            out[f"{target}_low"] = np.clip(point - half, 0.0, 1.0)
            out[f"{target}_high"] = np.clip(point + half, 0.0, 1.0)
        distance = self.domain_distance(x) if len(x) else np.zeros(0)
        out["domain_distance"] = distance
        out["novelty"] = novelty
        out["novelty_known"] = known
        novel = known & (novelty > (self.novelty_model.threshold if self.novelty_model else np.inf))
        # a frame whose F1 interval spans all of 0-1 (typically: too novel for any training frame of
        # like novelty to bound its error) is outside what the forest knows, below the novelty
        # threshold too
        uninformative = (out["f1_low"] <= 0.0) & (out["f1_high"] >= 1.0)
        out["in_domain"] = (
            (distance <= self._domain_radius)
            & ~novel
            & ~uninformative
            & (known | ("novelty" not in self.features))
        )
        if self.reference_forest is None:
            return out
        other_kind = np.ones(len(out))  # without an embedding, the forest that learnt from every frame
        if known.any():
            other_kind[known] = self.frame_kind.other_probability(_embeddings(embeddings, len(out))[known])
        return combine(out, self.reference_forest.predict(features_df, embeddings), other_kind, TARGETS)

    def model_inputs(self, features_df: pd.DataFrame, embeddings=None) -> pd.DataFrame:
        """The frames' values of this forest's features, the ones it derives itself included
        (what its trees see, and what SHAP explains)."""
        novelty, known = self._novelty(embeddings, len(features_df))
        x = self._inputs(features_df, novelty, known)
        return pd.DataFrame(x, index=features_df.index, columns=list(self.features))

    def _inputs(self, features_df: pd.DataFrame, novelty: np.ndarray, known: np.ndarray) -> np.ndarray:
        # a frame without an embedding (empty or constant image) gets the typical training novelty
        # as a feature value, and is never called in domain by a forest that relies on novelty
        typical = np.median(self.novelty_model.reference_novelty) if self.novelty_model is not None else 0.0
        derived = {"novelty": np.where(known, novelty, typical)}
        if "score_hist_distance" in self.features:
            bins = _table(features_df, SCORE_BIN_NAMES, "features")
            derived["score_hist_distance"] = score_histogram_distance(bins, self._training_bins)
        return _table(
            features_df.assign(**{k: v for k, v in derived.items() if k in self.features}),
            self.features,
            "features",
        )

    def _novelty(self, embeddings, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Novelty of each frame's embedding and whether it is known (finite, forest has signals)."""
        novelty, known = np.zeros(n), np.zeros(n, dtype=bool)
        if self.novelty_model is None or embeddings is None or n == 0:
            return novelty, known
        vectors = _embeddings(embeddings, n)
        if vectors.shape[1] != self.training_embeddings.shape[1]:
            raise ValueError(
                f"the embeddings have {vectors.shape[1]} values per frame but this forest's training frames "
                f"{self.training_embeddings.shape[1]}: they come from another detector"
            )
        known = np.isfinite(vectors).all(axis=1)
        if known.any():
            novelty[known] = self.novelty_model.novelty(vectors[known])
        return novelty, known

    def _interval_scales(self, target: str, novelty: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Per frame conformal scale: weighted by novelty where known (training frames of similar
        novelty weigh most; a frame unlike all of them gets an unbounded scale), else global."""
        scales = np.full(len(novelty), self._interval_scale[target])
        if self.novelty_model is None or not known.any():
            return scales
        residual = self._residuals[target]
        seen = np.isfinite(residual)
        reference = self.novelty_model.reference_novelty[seen]
        residual = residual[seen]
        order = np.argsort(residual)
        residual, reference = residual[order], reference[order]
        spread = np.subtract(*np.quantile(reference, [0.75, 0.25])) / 1.34 or reference.std() or 1.0
        bandwidth = 1.06 * spread * len(reference) ** -0.2
        for i in np.flatnonzero(known):
            weights = np.exp(-0.5 * ((reference - novelty[i]) / bandwidth) ** 2)
            cumulative = np.cumsum(weights) / (weights.sum() + 1.0)  # the frame itself weighs 1, at +inf
            reached = np.flatnonzero(cumulative >= self.coverage)
            scales[i] = residual[reached[0]] if len(reached) else np.inf
        return scales

    def domain_distance(self, x: np.ndarray) -> np.ndarray:
        """Distance to the nearest training frame, in units of the domain radius' scaled space."""
        scaled = self.pipelines["f1"].named_steps["scaler"].transform(x)
        distances, _ = self._neighbours.kneighbors(scaled, n_neighbors=1)
        return distances[:, 0]

    # -- evaluation --------------------------------------------------------------------------------
    def cross_validate(
        self,
        features_df: pd.DataFrame,
        targets_df: pd.DataFrame,
        scheme: str = "random",
        groups=None,
        n_splits: int = 5,
        n_repeats: int = 10,
        n_jobs: int = 1,
    ) -> CVResult:
        """The paper's evaluation. ``random``: repeated shuffled K-fold; ``grouped``: leave one
        group out (each domain/split held out in turn); ``group_kfold``: K folds that keep each
        group (e.g. one image) on one side. Metrics are computed per fold and averaged.
        ``n_jobs``: folds fitted at once, in threads (the same numbers as on one)."""
        x_frame = features_df.reset_index(drop=True)
        y_frame = targets_df.reset_index(drop=True)
        _table(x_frame, self.features, "features")
        _table(y_frame, TARGETS, "targets")
        splits = list(self._splits(len(x_frame), scheme, groups, n_splits, n_repeats))
        smallest = min(len(train) for _, _, train, _ in splits)
        if smallest < MIN_TRAINING_FRAMES:
            raise ValueError(
                f"{scheme} cross-validation of {len(x_frame)} labeled frames leaves only {smallest} to fit "
                f"a fold's forest; it needs at least {MIN_TRAINING_FRAMES}"
            )
        fold_rows, prediction_frames = [], []
        group_values = None if groups is None else np.asarray(groups)

        def fold_predictions(split) -> pd.DataFrame:
            _, _, train_idx, test_idx = split
            return (
                self._clone()
                .fit(x_frame.iloc[train_idx], y_frame.iloc[train_idx])
                .predict(x_frame.iloc[test_idx])
            )

        for (repeat, fold, _train_idx, test_idx), predicted in zip(
            splits, in_threads(fold_predictions, splits, n_jobs), strict=True
        ):
            for target in TARGETS:
                truth = y_frame[target].to_numpy()[test_idx]
                row = {"repeat": repeat, "fold": fold, "target": target, "n": len(test_idx)}
                if group_values is not None and scheme == "grouped":
                    row["group"] = str(group_values[test_idx][0])
                row.update(regression_metrics(truth, predicted[target].to_numpy()))
                fold_rows.append(row)
            chunk = predicted.copy()
            chunk.insert(0, "row", test_idx)
            chunk.insert(1, "repeat", repeat)
            chunk.insert(2, "fold", fold)
            if group_values is not None:
                chunk.insert(3, "group", group_values[test_idx])
            for target in TARGETS:
                chunk[f"true_{target}"] = y_frame[target].to_numpy()[test_idx]
            prediction_frames.append(chunk.reset_index(drop=True))
        folds = pd.DataFrame(fold_rows)
        metric_columns = ["rmse", "mae", "r2", "nrmse", "nmae"]
        summary = folds.groupby("target")[metric_columns].mean().loc[list(TARGETS)]
        return CVResult(folds, summary, pd.concat(prediction_frames, ignore_index=True))

    def _splits(self, n: int, scheme: str, groups, n_splits: int, n_repeats: int):
        index = np.arange(n)
        if scheme == "random":
            for repeat in range(n_repeats):
                kfold = KFold(n_splits=n_splits, shuffle=True, random_state=self.random_state + repeat)
                for fold, (train, test) in enumerate(kfold.split(index)):
                    yield repeat, fold, train, test
        elif scheme in ("grouped", "group_kfold"):
            if groups is None or len(groups) != n:
                raise ValueError(f"scheme {scheme!r} needs one group label per row")
            groups = np.asarray(groups)
            if len(np.unique(groups)) < 2:
                raise ValueError("grouped cross-validation needs at least two groups")
            if scheme == "grouped":
                for fold, (train, test) in enumerate(LeaveOneGroupOut().split(index, groups=groups)):
                    yield 0, fold, train, test
            else:
                for repeat in range(n_repeats):
                    kfold = GroupKFold(
                        n_splits=n_splits, shuffle=True, random_state=self.random_state + repeat
                    )
                    for fold, (train, test) in enumerate(kfold.split(index, groups=groups)):
                        yield repeat, fold, train, test
        else:
            raise ValueError(f"scheme must be 'random', 'grouped' or 'group_kfold', got {scheme!r}")

    def _clone(self) -> QualityForest:
        return QualityForest(
            self.features,
            self.n_estimators,
            self.random_state,
            self.coverage,
            self.detector,
            self.forest_params,
        )

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write a skops file: the fitted pipelines, the training set and JSON metadata."""
        import skops.io as sio

        if not self.is_fitted:
            raise RuntimeError("only a fitted forest can be saved")
        meta = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "features": list(self.features),
            "n_estimators": self.n_estimators,
            "random_state": self.random_state,
            "coverage": self.coverage,
            "detector": self.detector,
            "forest_params": self.forest_params,
            "n_training": self.n_training,
            "training_groups": self.training_groups,
            "calibration": self._calibration(),
            "package_versions": package_versions(),
            **{k: v for k, v in self.metadata.items() if k not in ("format", "version")},
        }
        if self.reference_forest is not None:
            meta["reference_calibration"] = self.reference_forest._calibration()
        state = {
            "metadata_json": json.dumps(meta),
            "pipelines": self.pipelines,
            "training_features": self.training_features.to_numpy(),
            "training_targets": self.training_targets.to_numpy(),
        }
        if self.training_embeddings is not None:
            state["training_embeddings"] = self.training_embeddings
        if self.novelty_reference is not None:
            state["novelty_reference"] = self.novelty_reference
        if self._training_bins is not None:
            state["training_score_bins"] = self._training_bins
        if self._residuals:
            state["conformal_residuals"] = np.stack([self._residuals[t] for t in TARGETS])
        if self.reference_forest is not None:  # its training rows are the reference rows of ours
            reference = self.reference_forest
            state["reference_pipelines"] = reference.pipelines
            state["reference_training_features"] = reference.training_features.to_numpy()
            state["reference_conformal_residuals"] = np.stack([reference._residuals[t] for t in TARGETS])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            sio.dump(state, temporary, compression=8)  # zipfile.ZIP_DEFLATED
        return path

    @classmethod
    def load(cls, path) -> QualityForest:
        """Load a saved forest, or a bundled one by name (``"default"``, ``"li2025"``). Refuses
        files that are not skops archives or that contain types outside ``TRUSTED_TYPES``."""
        import skops.io as sio

        if isinstance(path, str) and path in BUNDLED_FORESTS:
            path = MODELS_DIR / BUNDLED_FORESTS[path]
            if not path.exists():
                raise ForestLoadError(f"the bundled forest {path.name} is not installed")
        path = Path(path)
        if not path.is_file():
            raise ForestLoadError(f"no forest file at {path}")
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:  # zip, JSON or schema errors from a corrupt or foreign file
            raise ForestLoadError(f"{path} is not a readable forest file (skops archive): {exc}") from exc
        refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
        if refused:
            raise ForestLoadError(f"{path} contains types that are not trusted and was not loaded: {refused}")
        try:
            state = sio.load(path, trusted=untrusted)
            meta = json.loads(state["metadata_json"])
        except Exception as exc:
            raise ForestLoadError(f"{path} could not be loaded as a forest: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
            raise ForestLoadError(f"{path} is a skops file but not a napari-detection-qc forest")
        version = meta.get("version", 0)
        if not isinstance(version, int) or version > FILE_VERSION:
            raise ForestLoadError(f"{path} was written by a newer version (format {version!r})")
        if version < NOVELTY_VERSION and "novelty" in meta.get("features", ()):
            raise ForestLoadError(
                f"{path} uses the 'novelty' feature as computed before format {NOVELTY_VERSION}, which this "
                "version computes differently; refit the forest (Training step) from its labeled frames"
            )
        meta = validate(meta, FOREST_META, path, "forest file", error=ForestLoadError)
        try:
            return cls._from_state(state, meta)
        except MALFORMED_DATA_ERRORS as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else one_line(exc, 200)
            raise ForestLoadError(f"{path} is a damaged forest file ({reason})") from exc

    @classmethod
    def _from_state(cls, state: dict, meta: dict) -> QualityForest:
        """The forest of a loaded file, checked structurally before anything predicts with it."""
        forest = cls(
            meta["features"],
            meta["n_estimators"],
            meta["random_state"],
            meta["coverage"],
            meta["detector"],
            meta.get("forest_params"),
        )
        known = {
            "format",
            "version",
            "features",
            "n_estimators",
            "random_state",
            "coverage",
            "detector",
            "forest_params",
            "n_training",
            "training_groups",
            "calibration",
            "reference_calibration",
        }
        forest.metadata = {k: v for k, v in meta.items() if k not in known}
        forest.pipelines = dict(state["pipelines"])
        if set(forest.pipelines) != set(TARGETS):
            raise ValueError(f"it lacks a model for one of {TARGETS}")
        n_features = len(forest.features)
        for target, pipeline in forest.pipelines.items():
            problem = pipeline_problem(pipeline, n_features)
            if problem:
                raise ValueError(f"its {target} model holds {problem}")
        features, targets = np.asarray(state["training_features"]), np.asarray(state["training_targets"])
        if (
            features.ndim != 2
            or features.shape[1] != n_features
            or targets.shape != (len(features), len(TARGETS))
        ):
            raise ValueError(f"training arrays of shapes {features.shape} and {targets.shape}")
        if len(features) < 1 or not (np.isfinite(features).all() and np.isfinite(targets).all()):
            raise ValueError("empty or non-finite training arrays")
        forest.training_features = pd.DataFrame(features, columns=list(forest.features), dtype=np.float64)
        forest.training_targets = pd.DataFrame(targets, columns=list(TARGETS), dtype=np.float64)
        forest.training_groups = meta.get("training_groups")
        problem = signal_arrays_problem(state, len(features), len(TARGETS))
        if problem:
            raise ValueError(problem)
        bins = state.get("training_score_bins")
        forest._training_bins = None if bins is None else np.asarray(bins, dtype=np.float64)
        if "training_embeddings" in state:
            forest.training_embeddings = np.asarray(state["training_embeddings"], dtype=np.float64)
            reference = state.get("novelty_reference")
            forest.novelty_reference = None if reference is None else np.asarray(reference, dtype=bool)
            forest.novelty_model = SubspaceNovelty().fit(forest.training_embeddings, forest.novelty_reference)
        else:
            forest.signals_note = NO_SIGNALS_NOTE
        needs = [f for f in forest.features if f in DERIVED_FEATURES]
        if ("novelty" in needs and forest.novelty_model is None) or (
            "score_hist_distance" in needs and forest._training_bins is None
        ):
            raise ValueError(f"it uses derived features {needs} but lacks the data to compute them")
        calibration = meta.get("calibration")
        if calibration and (forest.novelty_model is None or "conformal_residuals" in state):
            # stored at save time: loading need not re-run every tree
            forest._restore_calibration(calibration, state.get("conformal_residuals"))
        else:
            forest._calibrate()
        if "reference_pipelines" in state:
            forest._restore_reference_forest(state, meta)
        return forest

    def _calibration(self) -> dict:
        return {"interval_scale": self._interval_scale, "domain_radius": self._domain_radius}

    def _restore_calibration(self, calibration: dict, residuals) -> None:
        self._interval_scale = {k: float(calibration["interval_scale"][k]) for k in TARGETS}
        self._domain_radius = float(calibration["domain_radius"])
        if residuals is not None:
            self._residuals = dict(zip(TARGETS, np.asarray(residuals, dtype=np.float64)))
        self._fit_neighbours()

    def _restore_reference_forest(self, state: dict, meta: dict) -> None:
        """The reference-only forest of a loaded file: its pipelines, feature rows (its derived
        features are its own) and calibration as stored; its targets, embeddings and novelty model
        the reference part of ours (fit on the same rows)."""
        rows = self._reference_rows()
        if rows is None:
            raise ValueError("a reference forest without a reference of two kinds of training frames")
        forest = self._clone()
        forest.pipelines = dict(state["reference_pipelines"])
        if set(forest.pipelines) != set(TARGETS):
            raise ValueError(f"its reference forest lacks a model for one of {TARGETS}")
        for target, pipeline in forest.pipelines.items():
            problem = pipeline_problem(pipeline, len(self.features))
            if problem:
                raise ValueError(f"its reference {target} model holds {problem}")
        residuals = np.asarray(state["reference_conformal_residuals"], dtype=np.float64)
        if residuals.shape != (len(TARGETS), len(rows)):
            raise ValueError(
                f"reference conformal residuals of shape {residuals.shape} for {len(rows)} frames"
            )
        features = np.asarray(state["reference_training_features"], dtype=np.float64)
        if features.shape != (len(rows), len(self.features)) or not np.isfinite(features).all():
            raise ValueError(f"reference training features of shape {features.shape} for {len(rows)} frames")
        forest.training_features = pd.DataFrame(features, columns=list(self.features))
        forest.training_targets = self.training_targets.iloc[rows].reset_index(drop=True)
        forest.training_embeddings = self.training_embeddings[rows]
        forest.novelty_model = self.novelty_model.of_reference_rows()
        forest._training_bins = None if self._training_bins is None else self._training_bins[rows]
        forest._restore_calibration(meta["reference_calibration"], residuals)
        self.reference_forest = forest
        self._fit_frame_kind()

    def detector_mismatch(self, layer_detector: dict | None) -> str | None:
        """A warning when the layers' detector is not the one this forest was trained for:
        compared by weights hash when both sides know it, else by detector family (the authors'
        detectron2 models vs torchvision-engine models)."""
        if not self.detector or not layer_detector:
            return None
        ours, theirs = self.detector.get("weights_sha256"), layer_detector.get("weights_sha256")
        if ours and theirs:
            same = ours == theirs
        else:
            same = detector_family(self.detector) == detector_family(layer_detector)
        if not same:
            return (
                f"this forest was trained for detector {detector_name(self.detector)} but the layers came from "
                f"{detector_name(layer_detector)}; predicted quality may be off"
            )
        fitted_at, used = self.detector.get("score_threshold"), layer_detector.get("score_threshold")
        if fitted_at is not None and used is not None and abs(float(fitted_at) - float(used)) > 1e-6:
            return (
                f"this forest was fitted on detections scoring >= {float(fitted_at):g} but the layers keep scores "
                f">= {float(used):g}; detect at the model's own threshold for calibrated predictions"
            )
        fitted_with, used_with = self.detector.get("second_look"), layer_detector.get("second_look")
        if fitted_with is not None and used_with is not None and bool(fitted_with) != bool(used_with):
            return (
                f"this forest was fitted on detections {'after' if fitted_with else 'without'} the detector's second "
                f"look but the layers were detected {'without' if fitted_with else 'with'} it; predicted quality may be off"
            )
        return None


def in_threads(function, items, n_jobs: int) -> list:
    """``[function(item) for item in items]``, on ``n_jobs`` threads (scikit-learn's tree building
    releases the GIL, so forests fit in parallel this way), in order."""
    items = list(items)
    if n_jobs <= 1 or len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        return list(pool.map(function, items))


def detector_name(description: dict) -> str:
    name = description.get("name") or description.get("detector")
    return str(name or str(description.get("weights_sha256", "unknown"))[:12])
