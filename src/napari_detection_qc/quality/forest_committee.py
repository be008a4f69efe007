"""A second opinion for a quality forest that learns from frames of two kinds.

The bundled forest learns from synthetic frames (the detector's own domain, the novelty reference)
and from labelled real images of another kind (EMPS particles). Measured in RESULTS.md (signals
study, default detector e74cd7d2): the real rows teach it failures no synthetic frame shows (EMPS
papers unseen caught 0.77 -> 0.87) but blur what it knows of synthetic frames (random-CV F1 MAE
0.044 -> 0.054; held-out failing frames caught 0.71 -> 0.59). So a
second forest is fit on the reference frames alone, and each frame's prediction blends the two by
the probability that it is of the other kind (a logistic regression on the detector's backbone
embedding); its interval spans both forests' intervals. Where the two forests disagree by more than
``AGREEMENT_F1``, the answer depends on which kind of frame this is, so the frame is not called in
domain; nor is one whose combined F1 interval is ``UNINFORMATIVE_WIDTH`` wide or more (it cannot
tell a good frame from a failing one). Measured on the signals study's frames (RESULTS.md):
held-out synthetic failing frames caught 0.59 -> 1.00 (false alarms 0.06 -> 0.15), random-CV F1
MAE 0.054 -> 0.045, EMPS papers unseen caught 0.87 -> 0.98.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

AGREEMENT_F1 = 0.15
"""Largest F1 difference between the two forests for a frame still called in domain (0.10-0.25
measured; 0.15 caught as many held-out failing frames as 0.10 with fewer false alarms)."""
UNINFORMATIVE_WIDTH = 0.7
"""Widest combined F1 interval still called in domain. The single forest's rule (all of 0-1) left
EMPS frames in domain with MAE 0.131; at 0.7, 0.114 (0.8: 0.124), at 2% more random-CV frames out
of domain and no change on held-out synthetic domains. Chosen on those measurements."""
KIND_COMPONENTS = 16
DISAGREE_COLUMN = "forests_disagree"


class FrameKind:
    """Probability that a frame is of the other kind (not the reference), from its embedding:
    standardised, projected on its first principal axes, logistic regression."""

    def fit(self, embeddings: np.ndarray, other: np.ndarray) -> FrameKind:
        x = np.asarray(embeddings, dtype=np.float64)
        components = max(1, min(KIND_COMPONENTS, len(x) - 1, x.shape[1]))
        self._model = Pipeline(
            [
                ("scaler", StandardScaler()),
                ("pca", PCA(components, random_state=0)),
                ("logistic", LogisticRegression(C=1.0, max_iter=2000)),
            ]
        ).fit(x, np.asarray(other, dtype=bool))
        return self

    def other_probability(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float64)
        return self._model.predict_proba(x)[:, 1] if len(x) else np.zeros(0)


def combine(
    all_kinds: pd.DataFrame,
    reference_only: pd.DataFrame,
    other_probability: np.ndarray,
    targets: Sequence[str],
) -> pd.DataFrame:
    """``all_kinds``' predictions with each target blended with ``reference_only``'s by the frame's
    probability of being of the other kind, intervals spanning both, and ``forests_disagree``."""
    out = all_kinds.copy()
    weight = np.asarray(other_probability, dtype=np.float64)
    for target in targets:
        out[target] = (1 - weight) * reference_only[target].to_numpy() + weight * all_kinds[target].to_numpy()
        out[f"{target}_low"] = np.minimum(all_kinds[f"{target}_low"], reference_only[f"{target}_low"])
        out[f"{target}_high"] = np.maximum(all_kinds[f"{target}_high"], reference_only[f"{target}_high"])
    disagree = np.abs(all_kinds["f1"].to_numpy() - reference_only["f1"].to_numpy()) > AGREEMENT_F1
    out[DISAGREE_COLUMN] = disagree
    too_wide = (out["f1_high"] - out["f1_low"]).to_numpy() >= UNINFORMATIVE_WIDTH - 1e-9
    out["in_domain"] = out["in_domain"].to_numpy() & ~disagree & ~too_wide
    return out
