"""A learned choice among the automatic size estimate's rungs (``scaling.py``).

The hand-set rule (most confirmed evidence per area wins, few objects in small views discounted)
confuses two kinds of frame that its weights cannot tell apart: tiny cavities beside background
blotches that look like a few big objects at coarse factors, and big particles whose texture
looks like many tiny objects at fine factors; each weight that fixes one breaks the other. A small
gradient-boosted classifier over each rung's evidence (``scaling.rung_evidence``), fitted on
labelled frames to say "this rung's estimate is within 1.3x of the truth", picks the rung it is
surest of (``benchmarks/bench_size_rules.py --write`` fits the bundled model's, and the same
benchmark scores it on frames it never saw).

Its trees live in the detector's ``input.object_size.chooser`` header entry and are evaluated
with NumPy, so detection needs neither scikit-learn nor a file of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..tree_arrays import tree_problem

WITHIN = 1.3
"""A rung is right when the factor its estimate asks for is within this ratio of the truth's.
Choosers fitted with 1.3 left the fewest held-out synthetic frames more than 1.3x off (card and
further frames: 14 and 32; with 1.4: 15 and 33; 1.6: 20 and 38; 2: 25 and 48), EMPS within two
images of the others."""


@dataclass(frozen=True)
class SizeChooser:
    """Depth-limited regression trees whose summed leaves score each rung (higher: surer)."""

    features: int
    trees: tuple[dict[str, np.ndarray], ...]
    offset: float
    learning_rate: float
    fitted_on: dict[str, Any]

    def scores(self, evidence: np.ndarray) -> np.ndarray:
        """Log-odds that each row's rung is within ``WITHIN`` of the truth."""
        evidence = np.asarray(evidence, dtype=np.float64)
        if evidence.ndim != 2 or evidence.shape[1] != self.features:
            raise ValueError(f"the size chooser needs {self.features} features per rung, got {evidence.shape}")
        total = np.full(len(evidence), self.offset)
        rows = np.arange(len(evidence))
        split_on = evidence.astype(np.float32).astype(np.float64)  # scikit-learn's trees split float32 values
        for tree in self.trees:
            node = np.zeros(len(evidence), dtype=np.int64)
            while True:
                inner = tree["left"][node] >= 0
                if not inner.any():
                    break
                go_left = split_on[rows, np.maximum(tree["feature"][node], 0)] <= tree["threshold"][node]
                node = np.where(inner, np.where(go_left, tree["left"][node], tree["right"][node]), node)
            total += self.learning_rate * tree["value"][node]
        return total

    @classmethod
    def fit(cls, evidence: list[np.ndarray], right: list[np.ndarray], fitted_on: dict[str, Any], seed: int = 0):
        """Fit on frames' rung evidence and whether each rung was right (scikit-learn, fitting only)."""
        from sklearn.ensemble import GradientBoostingClassifier

        x, y = np.vstack(evidence), np.concatenate(right).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("the size chooser needs rungs that are right and rungs that are wrong to learn from")
        model = GradientBoostingClassifier(max_depth=2, n_estimators=150, random_state=seed).fit(x, y)
        trees = tuple(
            {
                "feature": estimator.tree_.feature.astype(np.int64),
                "threshold": estimator.tree_.threshold.astype(np.float64),
                "left": estimator.tree_.children_left.astype(np.int64),
                "right": estimator.tree_.children_right.astype(np.int64),
                "value": estimator.tree_.value[:, 0, 0].astype(np.float64),
            }
            for estimator in model.estimators_[:, 0]
        )
        chooser = cls(x.shape[1], trees, 0.0, float(model.learning_rate), dict(fitted_on, rungs=len(y), seed=seed))
        return replace(chooser, offset=float(model.decision_function(x[:1])[0] - chooser.scores(x[:1])[0]))

    def to_header(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "offset": self.offset,
            "learning_rate": self.learning_rate,
            "fitted_on": self.fitted_on,
            "trees": [{key: values.tolist() for key, values in tree.items()} for tree in self.trees],
        }

    @classmethod
    def from_input_header(cls, input_header: dict) -> SizeChooser | None:
        """The chooser in a model's ``input.object_size.chooser``; None when it has none. Its trees
        are checked first (``tree_arrays.py``): a node pointing back would make ``scores`` loop."""
        spec = (input_header.get("object_size") or {}).get("chooser")
        if spec is None:
            return None
        kinds = {"feature": np.int64, "threshold": np.float64, "left": np.int64, "right": np.int64, "value": np.float64}
        trees = tuple({key: np.asarray(tree[key], dtype=kind) for key, kind in kinds.items()} for tree in spec["trees"])
        features = int(spec["features"])
        for tree in trees:
            nodes = SimpleNamespace(
                node_count=len(tree["threshold"]), children_left=tree["left"], children_right=tree["right"],
                feature=tree["feature"], n_features=features, n_outputs=1, value=tree["value"],
            )
            problem = tree_problem(nodes, features)
            if problem:
                raise ValueError(f"the size chooser holds {problem}")
        return cls(features, trees, float(spec["offset"]), float(spec["learning_rate"]), spec["fitted_on"])
