"""Small gradient-boosted tree classifiers that live in a detector's header and run with NumPy.

The size chooser (``size_chooser.py``) and the detection verifier (``detection_verifier.py``) are
both a few hundred shallow trees fitted with scikit-learn on labelled frames; storing their node
arrays in the checkpoint header and walking them with NumPy keeps detection free of scikit-learn
and of extra files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from napari_detection_qc.quality.tree_arrays import tree_problem

NODE_ARRAYS = {
    "feature": np.int64,
    "threshold": np.float64,
    "left": np.int64,
    "right": np.int64,
    "value": np.float64,
}


@dataclass(frozen=True)
class BoostedTrees:
    """Depth-limited regression trees whose summed leaves give a log-odds per row."""

    features: int
    trees: tuple[dict[str, np.ndarray], ...]
    offset: float
    learning_rate: float
    fitted_on: dict[str, Any]

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Log-odds of the positive class for each row of ``rows`` (N, features)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.features:
            raise ValueError(
                f"{type(self).__name__} needs {self.features} features per row, got {rows.shape}"
            )
        total = np.full(len(rows), self.offset)
        index = np.arange(len(rows))
        split_on = rows.astype(np.float32).astype(np.float64)  # scikit-learn's trees split float32 values
        for tree in self.trees:
            node = np.zeros(len(rows), dtype=np.int64)
            while True:
                inner = tree["left"][node] >= 0
                if not inner.any():
                    break
                go_left = split_on[index, np.maximum(tree["feature"][node], 0)] <= tree["threshold"][node]
                node = np.where(inner, np.where(go_left, tree["left"][node], tree["right"][node]), node)
            total += self.learning_rate * tree["value"][node]
        return total

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.scores(rows)))

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        fitted_on: dict[str, Any],
        *,
        depth: int,
        trees: int,
        seed: int = 0,
        weight: np.ndarray | None = None,
        **more,
    ):
        """Fit on rows ``x`` and their 0/1 labels ``y`` (scikit-learn, fitting only), each weighing
        ``weight`` (default 1); ``fitted_on`` (what it learned from) gets the seed added; ``more``
        fills a subclass's own fields."""
        from sklearn.ensemble import GradientBoostingClassifier

        x, y = np.asarray(x, dtype=np.float64), np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError(f"{cls.__name__} needs positive and negative examples to learn from")
        model = GradientBoostingClassifier(max_depth=depth, n_estimators=trees, random_state=seed).fit(
            x, y, sample_weight=weight
        )
        node_arrays = tuple(
            {
                "feature": estimator.tree_.feature.astype(np.int64),
                "threshold": estimator.tree_.threshold.astype(np.float64),
                "left": estimator.tree_.children_left.astype(np.int64),
                "right": estimator.tree_.children_right.astype(np.int64),
                "value": estimator.tree_.value[:, 0, 0].astype(np.float64),
            }
            for estimator in model.estimators_[:, 0]
        )
        fitted = cls(
            x.shape[1], node_arrays, 0.0, float(model.learning_rate), dict(fitted_on, seed=seed), **more
        )
        return replace(fitted, offset=float(model.decision_function(x[:1])[0] - fitted.scores(x[:1])[0]))

    def to_header(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "offset": self.offset,
            "learning_rate": self.learning_rate,
            "fitted_on": self.fitted_on,
            "trees": [{key: values.tolist() for key, values in tree.items()} for tree in self.trees],
        }

    @classmethod
    def from_header(cls, spec: dict, **more):
        """Rebuild from ``to_header``'s dict. Trees are checked first (``tree_arrays.py``): a node
        pointing back would make ``scores`` loop forever."""
        trees = tuple(
            {key: np.asarray(tree[key], dtype=kind) for key, kind in NODE_ARRAYS.items()}
            for tree in spec["trees"]
        )
        features = int(spec["features"])
        for tree in trees:
            nodes = SimpleNamespace(
                node_count=len(tree["threshold"]),
                children_left=tree["left"],
                children_right=tree["right"],
                feature=tree["feature"],
                n_features=features,
                n_outputs=1,
                value=tree["value"],
            )
            problem = tree_problem(nodes, features)
            if problem:
                raise ValueError(f"the {cls.__name__} holds {problem}")
        return cls(
            features, trees, float(spec["offset"]), float(spec["learning_rate"]), spec["fitted_on"], **more
        )
