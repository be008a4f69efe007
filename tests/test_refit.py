"""The refit decision and the user's-frames CV report, without a viewer."""

import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.detections.metrics import regression_metrics
from napari_detection_qc.labels.refit import RefitMode, cv_report, refit_forest, training_for_refit
from napari_detection_qc.labels.training_set import TrainingSet
from napari_detection_qc.quality.features import CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import QualityForest


def rows(n, seed, prefix):
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.uniform(0, 1, (n, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    f1 = 0.2 + 0.7 * x["frac_score_0.9"]
    y = pd.DataFrame({"f1": f1, "precision": f1, "recall": f1})
    return TrainingSet().add(x, y, [f"{prefix}#{i}" for i in range(n)])


@pytest.fixture(scope="module")
def base():
    earlier = rows(40, 0, "earlier")
    return QualityForest(n_estimators=10).fit(earlier.features, earlier.targets)


def test_add_extends_the_base_forest_frames_and_replace_needs_enough(base):
    mine = rows(3, 1, "mine")
    training = training_for_refit(RefitMode.ADD, mine, None, base)
    assert len(training) == 43 and training.sources[-3:] == mine.sources
    again = training_for_refit(
        RefitMode.ADD, mine, training, base
    )  # same frames again: replaced, not doubled
    assert len(again) == 43
    with pytest.raises(ValueError, match="at least 5"):
        training_for_refit(RefitMode.REPLACE, mine, training, base)
    assert len(training_for_refit(RefitMode.REPLACE, rows(6, 2, "mine"), training, base)) == 6


def test_cv_report_scores_your_frames_from_the_same_out_of_fold_predictions(base):
    mine = rows(8, 3, "mine")
    training = training_for_refit(RefitMode.ADD, mine, None, base)
    forest, cv = refit_forest(training, base, None)
    assert forest.n_training == 48
    report = cv_report(cv, training, set(mine.sources))
    assert report.loc["pooled", "n"] == 48 and report.loc["yours", "n"] == 8
    yours = cv.predictions[[training.sources[r].startswith("mine") for r in cv.predictions["row"]]]
    expected = regression_metrics(yours["true_f1"], yours["f1"])
    assert report.loc["yours", "mae"] == pytest.approx(expected["mae"])
    _, no_cv = refit_forest(rows(6, 4, "few"), base, None)
    assert no_cv is None


def test_a_refit_keeps_the_novelty_check_only_when_every_frame_has_an_embedding(base, tmp_path):
    rng = np.random.default_rng(5)
    earlier = rows(40, 0, "earlier")
    with_novelty = QualityForest(n_estimators=10).fit(
        earlier.features, earlier.targets, embeddings=rng.normal(0, 1, (40, 6))
    )
    mine = rows(4, 6, "mine")
    embedded = TrainingSet().add(mine.features, mine.targets, mine.sources, rng.normal(0, 1, (4, 6)))
    training = training_for_refit(RefitMode.ADD, embedded, None, with_novelty)
    assert training.complete_embeddings.shape == (44, 6)
    forest, _ = refit_forest(training, with_novelty, None)
    assert forest.uses_novelty and forest.training_embeddings.shape == (44, 6)

    # frames detected without signals: the refit forest says it has no novelty check
    plain = training_for_refit(RefitMode.ADD, rows(3, 7, "plain"), training, with_novelty)
    assert np.isnan(plain.embeddings[-3:]).all() and plain.complete_embeddings is None
    forest, _ = refit_forest(plain, with_novelty, None)
    assert not forest.uses_novelty and forest.signals_note

    # the embeddings travel with a saved training set
    path = training.save(tmp_path / "set.csv")
    loaded = TrainingSet.load(path)
    np.testing.assert_array_equal(loaded.embeddings, training.embeddings)
    rows(2, 8, "bare").save(path)  # a set without embeddings drops the stale ones
    assert TrainingSet.load(path).embeddings is None


def test_a_refit_keeps_the_base_forests_novelty_reference(tmp_path):
    """Rows the bundled forest learns from without calling their kind known (its EMPS images) stay
    outside the novelty check through a refit and a saved training set; rows you add are inside."""
    rng = np.random.default_rng(6)
    earlier = rows(40, 0, "earlier")
    reference = np.arange(40) < 30
    base = QualityForest(n_estimators=10).fit(
        earlier.features, earlier.targets, embeddings=rng.normal(0, 1, (40, 6)), novelty_reference=reference
    )
    mine = rows(4, 6, "mine")
    embedded = TrainingSet().add(mine.features, mine.targets, mine.sources, rng.normal(0, 1, (4, 6)))
    training = training_for_refit(RefitMode.ADD, embedded, None, base)
    np.testing.assert_array_equal(training.novelty_reference, np.r_[reference, [True] * 4])
    forest, _ = refit_forest(training, base, None)
    np.testing.assert_array_equal(forest.novelty_reference, training.novelty_reference)
    loaded = TrainingSet.load(training.save(tmp_path / "set.csv"))
    np.testing.assert_array_equal(loaded.novelty_reference, training.novelty_reference)
    relabelled = rows(2, 9, "x")
    relabelled.sources = loaded.sources[35:37]  # two rows outside the reference, labelled again by you
    again = training_for_refit(RefitMode.ADD, relabelled, loaded, base)
    assert len(again) == 44 and again.novelty_reference[-2:].all() and again.novelty_reference.sum() == 36
    assert TrainingSet.load(rows(3, 1, "plain").save(tmp_path / "plain.csv")).novelty_reference is None
