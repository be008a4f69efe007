"""Structural checks of a loaded forest file before anything predicts with it.

skops refuses untrusted types, but a file made only of allowed types can still hold trees whose
nodes point outside their arrays; scikit-learn's compiled tree walk would then read out of bounds and
crash the process (a napari session with it). Every array a prediction touches is checked here.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor

from napari_detection_qc.quality.features import SCORE_BIN_NAMES
from napari_detection_qc.quality.tree_arrays import tree_problem


def pipeline_problem(pipeline, n_features: int) -> str | None:
    """What is wrong with one target's scaler + forest pipeline, or None."""
    if not isinstance(pipeline, Pipeline) or [name for name, _ in pipeline.steps] != ["scaler", "forest"]:
        return "not a scaler + forest pipeline"
    scaler, forest = pipeline.named_steps["scaler"], pipeline.named_steps["forest"]
    if not isinstance(scaler, StandardScaler) or not isinstance(forest, RandomForestRegressor):
        return "not a StandardScaler + RandomForestRegressor pipeline"
    for name in ("mean_", "scale_"):
        if np.shape(getattr(scaler, name, None)) != (n_features,):
            return f"a scaler {name} of another length than the {n_features} features"
    trees = getattr(forest, "estimators_", None)
    if not trees or getattr(forest, "n_features_in_", None) != n_features:
        return "a forest without trees or of another number of features"
    for tree in trees:
        if not isinstance(tree, DecisionTreeRegressor) or getattr(tree, "tree_", None) is None:
            return "a forest holding something other than fitted regression trees"
        problem = tree_problem(tree.tree_, n_features)
        if problem:
            return problem
    return None


def signal_arrays_problem(state: dict, n_training: int, n_targets: int) -> str | None:
    """What is wrong with a format-2 file's signal arrays (each optional), or None: training
    embeddings (one finite row per training frame, at least 3 for the novelty model, and the
    optional boolean mask of the frames it was fit on), score
    bins (one row of fractions per training frame) and conformal residuals (one row per target;
    NaN where a frame was in every tree's bag, else non-negative)."""
    if "training_embeddings" in state:
        embeddings = np.asarray(state["training_embeddings"], dtype=np.float64)
        if embeddings.ndim != 2 or len(embeddings) != n_training or embeddings.shape[1] < 1:
            return f"training embeddings of shape {embeddings.shape} for {n_training} training frames"
        if n_training < 3 or not np.isfinite(embeddings).all():
            return "non-finite training embeddings, or fewer than 3"
        if "novelty_reference" in state:
            reference = np.asarray(state["novelty_reference"])
            if reference.dtype != bool or reference.shape != (n_training,) or reference.sum() < 3:
                return f"a novelty reference mask of shape {reference.shape} ({reference.dtype}) for {n_training} frames"
    if "training_score_bins" in state:
        bins = np.asarray(state["training_score_bins"], dtype=np.float64)
        if bins.shape != (n_training, len(SCORE_BIN_NAMES)):
            return f"training score bins of shape {bins.shape} for {n_training} training frames"
        if not (np.isfinite(bins).all() and bins.min(initial=0) >= 0 and bins.max(initial=0) <= 1):
            return "training score bins outside [0, 1]"
    if "conformal_residuals" in state:
        residuals = np.asarray(state["conformal_residuals"], dtype=np.float64)
        if residuals.shape != (n_targets, n_training):
            return f"conformal residuals of shape {residuals.shape} for {n_training} training frames"
        stored = residuals[~np.isnan(residuals)]
        if not (np.isfinite(stored).all() and stored.min(initial=0) >= 0):
            return "negative or infinite conformal residuals"
    return None
