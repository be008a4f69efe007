"""The accumulated (features, true quality) pairs a forest is refit on, kept as a plain CSV.

Each row is one labeled frame, keyed by ``source`` (e.g. ``"stack.tif#12"``), so labeling the same
frame again replaces its row instead of counting it twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .features import CANDIDATE_FEATURES
from .forest import TARGETS, QualityForest


@dataclass
class TrainingSet:
    features: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CANDIDATE_FEATURES)))
    targets: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(TARGETS)))
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sources)

    def add(self, features: pd.DataFrame, targets: pd.DataFrame, sources: list[str]) -> TrainingSet:
        """Add rows; a source already present is replaced by its new row."""
        if not (len(features) == len(targets) == len(sources)):
            raise ValueError("features, targets and sources must have one row each per frame")
        keep = [i for i, s in enumerate(self.sources) if s not in set(sources)]
        columns = [c for c in self.features.columns] if len(self) else list(features.columns)
        missing = [c for c in columns if c not in features.columns]
        if missing:
            raise ValueError(f"new rows lack feature columns {missing}")
        self.features = pd.concat(
            [self.features.iloc[keep].reset_index(drop=True), features.loc[:, columns].reset_index(drop=True)],
            ignore_index=True,
        ).astype(np.float64)
        self.targets = pd.concat(
            [self.targets.iloc[keep].reset_index(drop=True), targets.loc[:, list(TARGETS)].reset_index(drop=True)],
            ignore_index=True,
        ).astype(np.float64)
        self.sources = [self.sources[i] for i in keep] + [str(s) for s in sources]
        return self

    def copy(self) -> TrainingSet:
        return TrainingSet(self.features.copy(), self.targets.copy(), list(self.sources))

    @classmethod
    def from_forest(cls, forest: QualityForest) -> TrainingSet:
        """The training frames stored in a fitted forest (its feature columns only)."""
        if forest.training_features is None:
            return cls()
        groups = forest.training_groups or ["bundled"] * forest.n_training
        sources = [f"{forest.metadata.get('name', 'bundled')}:{g}:{i}" for i, g in enumerate(groups)]
        return cls(forest.training_features.copy(), forest.training_targets.copy(), sources)

    def save(self, path) -> Path:
        """CSV with a ``source`` column, the feature columns and ``f1, precision, recall``."""
        path = Path(path)
        table = pd.concat([pd.Series(self.sources, name="source"), self.features, self.targets], axis=1)
        with atomic_path(path) as temporary:
            table.to_csv(temporary, index=False)
        return path

    @classmethod
    def load(cls, path) -> TrainingSet:
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ValueError(f"could not read a training set from {path}: {exc}") from exc
        missing = [c for c in ("source", *TARGETS) if c not in table.columns]
        feature_columns = [c for c in table.columns if c in CANDIDATE_FEATURES]
        if missing or not feature_columns:
            raise ValueError(f"{path} is not a training set: it lacks {missing or 'feature columns'}")
        values = table[feature_columns + list(TARGETS)].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{path} holds NaN or non-numeric feature/target values")
        return cls(
            table[feature_columns].astype(np.float64),
            table[list(TARGETS)].astype(np.float64),
            table["source"].astype(str).tolist(),
        )
