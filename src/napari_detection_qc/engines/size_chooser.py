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
with NumPy (``boosted_trees.py``), so detection needs neither scikit-learn nor a file of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_detection_qc.engines.boosted_trees import BoostedTrees

WITHIN = 1.3
"""A rung is right when the factor its estimate asks for is within this ratio of the truth's.
Choosers fitted with 1.3 left the fewest held-out synthetic frames more than 1.3x off (card and
further frames: 14 and 32; with 1.4: 15 and 33; 1.6: 20 and 38; 2: 25 and 48), EMPS within two
images of the others."""


class SizeChooser(BoostedTrees):
    """Scores each rung's evidence (higher: surer it is within ``WITHIN`` of the truth)."""

    @classmethod
    def fit(
        cls, evidence: list[np.ndarray], right: list[np.ndarray], fitted_on: dict[str, Any], seed: int = 0
    ):
        """Fit on frames' rung evidence and whether each rung was right."""
        x, y = np.vstack(evidence), np.concatenate(right)
        if len(np.unique(y)) < 2:
            raise ValueError(
                "the size chooser needs rungs that are right and rungs that are wrong to learn from"
            )
        return super().fit(x, y, dict(fitted_on, rungs=len(y)), depth=2, trees=150, seed=seed)

    @classmethod
    def from_input_header(cls, input_header: dict) -> SizeChooser | None:
        """The chooser in a model's ``input.object_size.chooser``; None when it has none."""
        spec = (input_header.get("object_size") or {}).get("chooser")
        return None if spec is None else cls.from_header(spec)
