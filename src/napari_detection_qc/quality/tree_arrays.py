"""Checks of a fitted decision tree's node arrays before anything walks them (no scikit-learn
import: the detector's size chooser and detection verifier walk such trees with NumPy at
detection, ``engines/boosted_trees.py``).

A file made only of allowed types can still hold trees whose nodes point outside their arrays or
back at an earlier node; a walk would then read out of bounds or never end.
"""

from __future__ import annotations

import numpy as np

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
