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

TREE_LEAF = -1


def tree_problem(tree, n_features: int) -> str | None:
    """What is wrong with a fitted tree's node arrays, or None. Children must come after their
    parent (as scikit-learn builds them), so every walk ends at a leaf."""
    n_nodes = int(tree.node_count)
    left, right, feature = tree.children_left, tree.children_right, tree.feature
    if n_nodes < 1 or not len(left) == len(right) == len(feature) == n_nodes:
        return "node arrays of inconsistent length"
    if tree.n_features != n_features or tree.n_outputs != 1 or tree.value.shape[0] != n_nodes:
        return "a tree of another shape than the forest"
    leaf = left == TREE_LEAF
    if np.any(leaf != (right == TREE_LEAF)):
        return "a node with one child"
    index = np.arange(n_nodes)
    inner = ~leaf
    if np.any((left[inner] <= index[inner]) | (left[inner] >= n_nodes)):
        return "a node pointing outside its tree"
    if np.any((right[inner] <= index[inner]) | (right[inner] >= n_nodes)):
        return "a node pointing outside its tree"
    if np.any((feature[inner] < 0) | (feature[inner] >= n_features)):
        return "a node splitting on a feature that does not exist"
    return None


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
