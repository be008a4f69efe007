"""The accumulated (features, true quality) pairs a forest is refit on, kept as a plain CSV.

Each row is one labeled frame, keyed by ``source`` (e.g. ``"stack.tif#12"``), so labeling the same
frame again replaces its row instead of counting it twice. Rows may carry the frame's backbone
embedding (detected with signals), so a refit forest keeps its novelty check; they are kept beside
the CSV in ``<name>.embeddings.npy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from napari_detection_qc.io import InputError
from napari_detection_qc.io.atomic import atomic_path
from napari_detection_qc.quality.features import CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import TARGETS, QualityForest
from napari_detection_qc.validation import one_line, parsing, require_regular_file

REFERENCE_COLUMN = "novelty_reference"
MAX_TABLE_BYTES = 1 << 30


def read_training_csv(path, features: Sequence[str] | None = None) -> pd.DataFrame:
    """A table of labelled frames (feature columns and ``f1, precision, recall``), as written by
    ``evaluate --with-features`` or a saved training set, checked once for the command line and
    the viewer alike: a regular file of plausible size, ``features`` (default: every known
    feature it has) and the targets present as finite numbers, targets fractions in [0, 1] (an
    F1 in percent would teach the forest nonsense). One :class:`InputError` naming the file."""
    path = require_regular_file(path, "training table")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise InputError(f"{path}: a training table over {MAX_TABLE_BYTES} bytes is not plausible")
    with parsing(path, "training table"):
        table = pd.read_csv(path)
        columns = (
            list(features) if features is not None else [c for c in table.columns if c in CANDIDATE_FEATURES]
        )
        missing = [c for c in (*columns, *TARGETS) if c not in table.columns]
        if missing or not columns:
            raise InputError(
                f"{path} is not a training set: the table lacks columns {missing or 'of features'}"
            )
        values = table[[*columns, *TARGETS]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError(f"{path}: the training table holds empty, non-numeric or infinite values")
        targets = values[:, len(columns) :]
        if len(targets) and (targets.min() < 0 or targets.max() > 1):
            raise InputError(
                f"{path}: targets {', '.join(TARGETS)} must lie in [0, 1] (fractions, not percent); "
                f"found {targets.min():g} to {targets.max():g}"
            )
    return table


@dataclass
class TrainingSet:
    features: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CANDIDATE_FEATURES)))
    targets: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(TARGETS)))
    sources: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    """(rows, D) backbone embeddings, NaN rows for frames without one; None when no row has one."""
    novelty_reference: np.ndarray | None = None
    """Rows a refit forest's novelty check is fit on (``QualityForest.fit``); None: all. The bundled
    forest's real EMPS rows stay outside it through a refit; rows you add are inside."""

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def complete_embeddings(self) -> np.ndarray | None:
        """The embeddings when every row has one (what a forest's novelty check is fit on), else None."""
        if self.embeddings is None or not len(self) or not np.isfinite(self.embeddings).all():
            return None
        return self.embeddings

    def add(
        self,
        features: pd.DataFrame,
        targets: pd.DataFrame,
        sources: list[str],
        embeddings: np.ndarray | None = None,
    ) -> TrainingSet:
        """Add rows; a source already present is replaced by its new row."""
        if not (len(features) == len(targets) == len(sources)):
            raise ValueError("features, targets and sources must have one row each per frame")
        if embeddings is not None and len(embeddings) != len(sources):
            raise ValueError("embeddings must have one row per frame")
        keep = [i for i, s in enumerate(self.sources) if s not in set(sources)]
        columns = list(self.features.columns) if len(self) else list(features.columns)
        missing = [c for c in columns if c not in features.columns]
        if missing:
            raise ValueError(f"new rows lack feature columns {missing}")
        self.features = pd.concat(
            [
                self.features.iloc[keep].reset_index(drop=True),
                features.loc[:, columns].reset_index(drop=True),
            ],
            ignore_index=True,
        ).astype(np.float64)
        self.targets = pd.concat(
            [
                self.targets.iloc[keep].reset_index(drop=True),
                targets.loc[:, list(TARGETS)].reset_index(drop=True),
            ],
            ignore_index=True,
        ).astype(np.float64)
        self.embeddings = _stacked_embeddings(self.embeddings, keep, embeddings, len(sources))
        if self.novelty_reference is not None:
            self.novelty_reference = np.r_[self.novelty_reference[keep], np.ones(len(sources), bool)]
        self.sources = [self.sources[i] for i in keep] + [str(s) for s in sources]
        return self

    def copy(self) -> TrainingSet:
        embeddings = None if self.embeddings is None else self.embeddings.copy()
        reference = None if self.novelty_reference is None else self.novelty_reference.copy()
        return TrainingSet(
            self.features.copy(), self.targets.copy(), list(self.sources), embeddings, reference
        )

    @classmethod
    def from_forest(cls, forest: QualityForest) -> TrainingSet:
        """The training frames stored in a fitted forest (its feature columns only)."""
        if forest.training_features is None:
            return cls()
        groups = forest.training_groups or ["bundled"] * forest.n_training
        sources = [f"{forest.metadata.get('name', 'bundled')}:{g}:{i}" for i, g in enumerate(groups)]
        embeddings = None if forest.training_embeddings is None else forest.training_embeddings.copy()
        reference = None if forest.novelty_reference is None else forest.novelty_reference.copy()
        return cls(
            forest.training_features.copy(), forest.training_targets.copy(), sources, embeddings, reference
        )

    def save(self, path) -> Path:
        """CSV with a ``source`` column, the feature columns and ``f1, precision, recall`` (and
        ``novelty_reference``, 1/0, where some rows are outside it)."""
        path = Path(path)
        table = pd.concat([pd.Series(self.sources, name="source"), self.features, self.targets], axis=1)
        if self.novelty_reference is not None:
            table[REFERENCE_COLUMN] = self.novelty_reference.astype(int)
        with atomic_path(path) as temporary:
            table.to_csv(temporary, index=False)
        sidecar = embeddings_path(path)
        if self.embeddings is not None:
            with atomic_path(sidecar) as temporary, open(temporary, "wb") as handle:
                np.save(handle, self.embeddings)
        elif sidecar.exists():
            sidecar.unlink()  # an older set's embeddings no longer match these rows
        return path

    @classmethod
    def load(cls, path) -> TrainingSet:
        table = read_training_csv(path)
        if "source" not in table.columns:
            raise InputError(f"{path} is not a training set: the table lacks columns ['source']")
        feature_columns = [c for c in table.columns if c in CANDIDATE_FEATURES]
        embeddings = None
        sidecar = embeddings_path(path)
        if sidecar.exists():
            try:
                embeddings = np.load(require_regular_file(sidecar, "embeddings"), allow_pickle=False)
                embeddings = embeddings.astype(np.float64)
            except (OSError, ValueError, TypeError, EOFError) as exc:
                raise InputError(
                    f"could not read the embeddings of {path} from {sidecar}: {one_line(exc, 200)}"
                ) from exc
            if embeddings.ndim != 2 or len(embeddings) != len(table):
                raise InputError(f"{sidecar} holds {embeddings.shape} embeddings for {len(table)} rows")
            if np.isinf(embeddings).any():
                raise InputError(f"{sidecar} holds infinite embeddings")
        reference = None
        if REFERENCE_COLUMN in table.columns:
            if not table[REFERENCE_COLUMN].isin([0, 1]).all():
                raise ValueError(f"{path}: column {REFERENCE_COLUMN} must hold 1 or 0 per row")
            reference = table[REFERENCE_COLUMN].to_numpy() == 1
        return cls(
            table[feature_columns].astype(np.float64),
            table[list(TARGETS)].astype(np.float64),
            table["source"].astype(str).tolist(),
            embeddings,
            reference,
        )


def embeddings_path(path) -> Path:
    """Where a training set CSV keeps its rows' embeddings."""
    path = Path(path)
    return path.with_name(f"{path.stem}.embeddings.npy")


def _stacked_embeddings(
    current: np.ndarray | None, keep: list[int], new: np.ndarray | None, n_new: int
) -> np.ndarray | None:
    """The kept rows' embeddings followed by the new rows', NaN where a side has none; None when
    neither has any, or when their lengths differ (embeddings of two detectors do not mix)."""
    if current is None and new is None:
        return None
    width = (current if current is not None else new).shape[1]
    if current is not None and new is not None and new.shape[1] != width:
        return None
    kept = current[keep] if current is not None else np.full((len(keep), width), np.nan)
    added = np.asarray(new, dtype=np.float64) if new is not None else np.full((n_new, width), np.nan)
    return np.concatenate([kept.reshape(len(keep), width), added.reshape(n_new, width)])
