"""SHAP explanations of a QualityForest: a global feature ranking (the paper's Figure 4 uses it to
choose features) and, per frame, which features pushed the predicted quality up or down.

The scaler is a per-feature affine map, so SHAP values of the forest on scaled inputs belong to the
original feature names one to one. shap is an optional dependency (the ``explain`` extra): it is
imported only here, when an explanation is asked for.
"""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd

from napari_detection_qc.quality.forest import TARGETS, QualityForest

# building a TreeExplainer walks every tree; keep one per fitted forest (the quality widget asks
# again each time the user moves to another frame)
_explainers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

SHAP_MISSING = 'explanations need shap: pip install "napari-detection-qc[explain]"'


class ExplanationUnavailable(ImportError):
    """shap is not installed; the message says what to install."""


def _explainer(forest: QualityForest, target: str):
    try:
        import shap
    except ImportError as exc:
        raise ExplanationUnavailable(SHAP_MISSING) from exc

    if not forest.is_fitted:
        raise RuntimeError("the forest is not fitted")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    model = forest.pipelines[target].named_steps["forest"]
    if model not in _explainers:
        _explainers[model] = shap.TreeExplainer(model)
    return _explainers[model]


def frame_contributions(forest: QualityForest, features_df: pd.DataFrame, target: str = "f1") -> pd.DataFrame:
    """SHAP value of each feature for each frame (rows as ``features_df``). A row plus the
    explainer's base value sums to the forest's prediction for that frame."""
    explainer = _explainer(forest, target)
    x = features_df.loc[:, list(forest.features)].to_numpy(dtype=np.float64)
    scaled = forest.pipelines[target].named_steps["scaler"].transform(x)
    values = np.asarray(explainer.shap_values(scaled, check_additivity=False))
    table = pd.DataFrame(values, index=features_df.index, columns=list(forest.features))
    table.attrs["base_value"] = float(np.ravel(explainer.expected_value)[0])
    return table


def feature_ranking(
    forest: QualityForest, features_df: pd.DataFrame | None = None, target: str = "f1"
) -> pd.Series:
    """Mean |SHAP| per feature over ``features_df`` (default: the training set), largest first."""
    data = forest.training_features if features_df is None else features_df
    contributions = frame_contributions(forest, data, target)
    return contributions.abs().mean().sort_values(ascending=False).rename("mean_abs_shap")


def strongest_negative(contributions: pd.Series, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` features that pushed one frame's prediction down most (most negative first)."""
    negative = contributions[contributions < 0].sort_values()
    return [(name, float(value)) for name, value in negative.head(n).items()]
