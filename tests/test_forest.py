import pickle

import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.detections.metrics import regression_metrics, reliability_classification
from napari_detection_qc.quality.features import CANDIDATE_FEATURES, PAPER_FEATURES
from napari_detection_qc.quality.forest import TARGETS, ForestLoadError, QualityForest


def known_function_data(n, seed):
    """Features drawn at random; F1 a smooth known function of two of them, plus noise."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.uniform(0, 1, size=(n, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    x["count"] = rng.integers(0, 40, size=n)
    signal = 0.2 + 0.6 * x["frac_score_0.9"] * (1 - 0.5 * x["mean_size"])
    f1 = np.clip(signal + rng.normal(0, 0.05, n), 0, 1)
    precision = np.clip(f1 + 0.05, 0, 1)
    recall = np.clip(f1 - 0.05, 0, 1)
    y = pd.DataFrame({"f1": f1, "precision": precision, "recall": recall})
    return x, y


@pytest.fixture(scope="module")
def fitted():
    x, y = known_function_data(400, 0)
    return QualityForest().fit(x, y), x, y


def test_metrics_hand_computed():
    m = regression_metrics([0.0, 1.0], [0.5, 0.5])
    assert m["rmse"] == pytest.approx(0.5) and m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(0.0)
    assert m["nrmse"] == pytest.approx(1.0) and m["nmae"] == pytest.approx(1.0)
    c = reliability_classification([0.9, 0.2, 0.7, 0.4], [0.8, 0.6, 0.3, 0.1])
    assert c["precision"] == pytest.approx(0.5) and c["recall"] == pytest.approx(0.5)


def test_predict_columns_and_ranges(fitted):
    forest, x, _ = fitted
    out = forest.predict(x.iloc[:10])
    for target in TARGETS:
        assert (out[f"{target}_low"] <= out[target]).all() and (out[target] <= out[f"{target}_high"]).all()
        assert out[target].between(0, 1).all()
    assert out["in_domain"].dtype == bool
    assert forest.n_training == 400 and forest.features == PAPER_FEATURES


def test_learns_the_known_function_and_intervals_cover(fitted):
    forest, _, _ = fitted
    x_test, y_test = known_function_data(600, 1)
    out = forest.predict(x_test)
    assert regression_metrics(y_test["f1"], out["f1"])["mae"] < 0.08
    covered = ((y_test["f1"] >= out["f1_low"]) & (y_test["f1"] <= out["f1_high"])).mean()
    assert 0.85 <= covered <= 0.97


def test_out_of_domain_frames_are_flagged(fitted):
    forest, x, _ = fitted
    inside = forest.predict(x.iloc[:50])["in_domain"].mean()
    far = x.iloc[:20].copy()
    far["count"] = 900.0
    far["area_ratio"] = 8.0
    assert inside > 0.9
    assert not forest.predict(far)["in_domain"].any()


def test_cross_validate_random_and_grouped():
    x, y = known_function_data(150, 2)
    forest = QualityForest(n_estimators=20)
    cv = forest.cross_validate(x, y, scheme="random", n_splits=5, n_repeats=2)
    assert len(cv.folds) == 5 * 2 * 3
    assert list(cv.summary.index) == list(TARGETS)
    assert set(cv.summary.columns) == {"rmse", "mae", "r2", "nrmse", "nmae"}
    assert len(cv.predictions) == 150 * 2
    groups = np.repeat(["a", "b", "c"], 50)
    cv = forest.cross_validate(x, y, scheme="grouped", groups=groups)
    assert sorted(cv.folds["group"].unique()) == ["a", "b", "c"]
    assert set(cv.predictions["row"]) == set(range(150))
    with pytest.raises(ValueError, match="group"):
        forest.cross_validate(x, y, scheme="grouped")
    with pytest.raises(ValueError, match="scheme"):
        forest.cross_validate(x, y, scheme="bogus")


def test_fit_rejects_bad_input():
    x, y = known_function_data(20, 3)
    with pytest.raises(ValueError, match="lacks columns"):
        QualityForest().fit(x.drop(columns=["count"]), y)
    y_nan = y.copy()
    y_nan.loc[0, "f1"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        QualityForest().fit(x, y_nan)
    with pytest.raises(ValueError, match="unknown features"):
        QualityForest(features=["nope"])
    with pytest.raises(RuntimeError, match="not fitted"):
        QualityForest().predict(x)


def test_save_load_round_trip_is_identical(fitted, tmp_path):
    forest, x, _ = fitted
    forest.detector = {"name": "test-detector", "weights_sha256": "ab" * 32}
    forest.metadata["cv"] = {"f1_mae": 0.1}
    path = forest.save(tmp_path / "forest.skops")
    loaded = QualityForest.load(path)
    pd.testing.assert_frame_equal(loaded.predict(x), forest.predict(x))
    assert loaded.detector == forest.detector and loaded.metadata["cv"] == {"f1_mae": 0.1}
    assert loaded.metadata["package_versions"]["scikit-learn"]
    assert loaded.n_training == 400


def test_detector_mismatch_warning(fitted):
    forest, _, _ = fitted
    forest.detector = {"name": "A", "weights_sha256": "a" * 64}
    assert forest.detector_mismatch({"name": "A", "weights_sha256": "a" * 64}) is None
    assert "trained for detector A" in forest.detector_mismatch({"name": "B", "weights_sha256": "b" * 64})
    # no hash on one side (the authors' forest): compared by detector family
    forest.detector = {"name": "li2025-cavity-maskrcnn-r50fpn", "engine": "detectron2"}
    assert (
        forest.detector_mismatch(
            {"detector": "detectron2:model_final.pth", "engine": "torchvision", "weights_sha256": "c" * 64}
        )
        is None
    )
    assert forest.detector_mismatch({"detector": "default-compact", "engine": "torchvision"}) is not None
    # same weights, other score threshold: the features describe other detections
    forest.detector = {"name": "A", "weights_sha256": "a" * 64, "score_threshold": 0.5}
    assert forest.detector_mismatch({"name": "A", "weights_sha256": "a" * 64, "score_threshold": 0.5}) is None
    assert ">= 0.5" in forest.detector_mismatch(
        {"name": "A", "weights_sha256": "a" * 64, "score_threshold": 0.1}
    )
    # same weights, the second look switched off: more (background) detections than it was fitted on
    forest.detector = {"name": "A", "weights_sha256": "a" * 64, "second_look": True}
    assert forest.detector_mismatch({"name": "A", "weights_sha256": "a" * 64, "second_look": True}) is None
    assert (
        forest.detector_mismatch({"name": "A", "weights_sha256": "a" * 64}) is None
    )  # stored before the switch
    assert "without it" in forest.detector_mismatch(
        {"name": "A", "weights_sha256": "a" * 64, "second_look": False}
    )


class RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-forest-file",))


def test_hostile_pickle_is_rejected_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.skops"
    path.write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(ForestLoadError, match="not a readable forest"):
        QualityForest.load(path)
    assert not (tmp_path / "pwned-by-forest-file").exists()


def test_skops_file_with_untrusted_types_is_rejected(tmp_path):
    import skops.io as sio

    path = tmp_path / "untrusted.skops"
    sio.dump({"metadata_json": "{}", "pipelines": {"f1": eval}}, path)
    with pytest.raises(ForestLoadError, match="not trusted"):
        QualityForest.load(path)


def test_corrupt_and_missing_files(tmp_path, fitted):
    forest, _, _ = fitted
    good = forest.save(tmp_path / "good.skops")
    corrupt = tmp_path / "corrupt.skops"
    corrupt.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ForestLoadError):
        QualityForest.load(corrupt)
    with pytest.raises(ForestLoadError, match="no forest file"):
        QualityForest.load(tmp_path / "missing.skops")
