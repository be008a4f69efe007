import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.quality.explain import feature_ranking, frame_contributions, strongest_negative
from napari_detection_qc.quality.features import CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import QualityForest


@pytest.fixture(scope="module")
def forest_and_data():
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.uniform(0, 1, size=(150, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    f1 = np.clip(0.1 + 0.8 * x["frac_score_0.9"], 0, 1)  # only one feature matters
    y = pd.DataFrame({"f1": f1, "precision": f1, "recall": f1})
    return QualityForest(n_estimators=30).fit(x, y), x


def test_contributions_add_up_to_the_prediction(forest_and_data):
    forest, x = forest_and_data
    contributions = frame_contributions(forest, x.iloc[:5])
    assert list(contributions.columns) == list(forest.features)
    total = contributions.sum(axis=1) + contributions.attrs["base_value"]
    expected = forest.pipelines["f1"].predict(x.iloc[:5][list(forest.features)].to_numpy())
    np.testing.assert_allclose(total.to_numpy(), expected, atol=1e-6)


def test_ranking_puts_the_informative_feature_first(forest_and_data):
    forest, _ = forest_and_data
    ranking = feature_ranking(forest)
    assert ranking.index[0] == "frac_score_0.9"
    assert ranking.is_monotonic_decreasing


def test_strongest_negative():
    series = pd.Series({"a": 0.2, "b": -0.3, "c": -0.1, "d": -0.5})
    assert strongest_negative(series, 2) == [("d", -0.5), ("b", -0.3)]
    assert strongest_negative(pd.Series({"a": 0.1})) == []


def test_missing_shap_says_what_to_install(forest_and_data, monkeypatch):
    import sys

    from napari_detection_qc.quality.explain import ExplanationUnavailable, _explainers

    forest, x = forest_and_data
    _explainers.clear()
    monkeypatch.setitem(sys.modules, "shap", None)  # import shap now raises ImportError
    with pytest.raises(ExplanationUnavailable, match=r"pip install .*\[explain\]"):
        frame_contributions(forest, x.iloc[:1])
