"""Detector signals: TTA agreement maps views back exactly, every value is defined on
empty and single frames, novelty flags a novel frame, intervals widen with novelty, and forests
from before the signals still load and say so."""

import copy

import numpy as np
import pandas as pd
import pytest
from test_scaling import ThresholdDetector, squares_frame

from napari_detection_qc.detections.records import FrameDetections, StackDetections
from napari_detection_qc.engines import load_detector
from napari_detection_qc.engines.scaling import ScaleRule
from napari_detection_qc.quality.features import CANDIDATE_FEATURES, PAPER_FEATURES
from napari_detection_qc.quality.forest import (
    NO_EMBEDDINGS_NOTE,
    NO_SIGNALS_NOTE,
    TARGETS,
    ForestLoadError,
    QualityForest,
)
from napari_detection_qc.quality.forest_committee import UNINFORMATIVE_WIDTH
from napari_detection_qc.quality.scoring import predicted_quality
from napari_detection_qc.quality.signals import (
    EMBEDDING,
    TTA_SIGNALS,
    VIEWS,
    SignalOptions,
    SubspaceNovelty,
    boxes_from_view,
    frames_lacking,
    signals_from_records,
    signals_to_records,
    tta_agreement,
    view_image,
)

SIGNAL_FEATURES = ("mean_score", "count", "frac_score_0.9") + TTA_SIGNALS + ("score_hist_distance", "novelty")


@pytest.mark.parametrize("view", VIEWS)
def test_boxes_found_in_a_view_map_back_exactly(view):
    frame, truth = squares_frame((300, 200), side=20, spacing=60)
    detector = ThresholdDetector(None)
    found = detector._detect_boxes([view_image(frame, view)])[0]
    back = boxes_from_view(found.boxes, view, frame.shape)
    order = np.lexsort((back[:, 1], back[:, 0]))
    np.testing.assert_allclose(back[order], truth[np.lexsort((truth[:, 1], truth[:, 0]))])


def test_a_consistent_detector_agrees_with_itself_fully_through_the_scaled_path():
    frame, _ = squares_frame((600, 500), side=44, spacing=120)
    result = ThresholdDetector(ScaleRule(22, 1 / 16, 1.5)).predict(frame, object_size=44, signals="all")
    assert result.count > 0
    assert result.signals["tta_iou"] == pytest.approx(1.0)
    assert result.signals["tta_share"] == 1.0 and result.signals["tta_count_change"] == 0.0
    assert EMBEDDING not in result.signals  # this engine exposes no features


def test_agreement_on_empty_frames_is_defined():
    none, box = np.zeros((0, 4)), np.array([[0.0, 0, 10, 10]])
    assert tta_agreement(none, np.zeros(0), [none, none]) == {
        "tta_iou": 1.0,
        "tta_share": 1.0,
        "tta_count_change": 0.0,
    }
    assert tta_agreement(none, np.zeros(0), [box])["tta_iou"] == 0.0
    lost = tta_agreement(box, np.array([0.9]), [none])
    assert lost["tta_iou"] == 0.0 and lost["tta_share"] == 0.0 and lost["tta_count_change"] == 1.0
    with pytest.raises(ValueError, match="signals must be"):
        SignalOptions.parse("some")


def test_tiny_model_signals_are_finite_on_single_empty_and_constant_frames(tiny_checkpoint, one_torch_thread):
    detector = load_detector(tiny_checkpoint, device="cpu")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 80)).astype(np.uint8), np.full((64, 64), 7, np.uint8)]
    noisy, constant = list(detector.predict_many(frames, signals="all"))
    for name in TTA_SIGNALS:
        assert np.isfinite(noisy.signals[name]) and np.isfinite(constant.signals[name])
    assert noisy.signals[EMBEDDING].shape == (2 * 4 * 8,)  # mean and std of 8 channels on P2-P5
    assert np.isfinite(noisy.signals[EMBEDDING]).all()
    assert constant.count == 0 and EMBEDDING not in constant.signals and constant.signals["tta_iou"] == 1.0
    cheap = detector.predict(frames[0], signals="cheap")
    assert set(cheap.signals) == {EMBEDDING, "signal_seconds"}
    assert detector.predict(frames[0]).signals == {}
    restored = signals_from_records(signals_to_records([noisy, constant]))
    np.testing.assert_allclose(restored[0][EMBEDDING], noisy.signals[EMBEDDING])


# -- forests with signals --------------------------------------------------------------------------
def study(n=120, seed=0, shift=0.0):
    """Feature rows whose F1 follows the TTA agreement, and embeddings of an in-domain cloud."""
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(rng.uniform(0, 1, (n, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    features[list(TTA_SIGNALS)] = rng.uniform(0, 1, (n, 3))
    f1 = np.clip(features["tta_iou"] + rng.normal(0, 0.05, n), 0, 1)
    targets = pd.DataFrame({"f1": f1, "precision": f1, "recall": f1})
    embeddings = rng.normal(shift, 1, (n, 12))
    return features, targets, embeddings


@pytest.fixture(scope="module")
def signal_forest():
    features, targets, embeddings = study()
    return QualityForest(features=SIGNAL_FEATURES, n_estimators=30).fit(
        features, targets, embeddings=embeddings
    )


def test_novel_frames_are_flagged_even_when_their_features_look_ordinary(signal_forest):
    features, _, embeddings = study(20, seed=1)
    far = embeddings.copy()
    far[:10] += 25.0
    predicted = signal_forest.predict(features, far)
    assert not predicted["in_domain"][:10].any()
    assert predicted["in_domain"][10:].mean() >= 0.8
    assert predicted["novelty_known"].all()
    assert predicted["novelty"][:10].min() > predicted["novelty"][10:].max()


def test_intervals_widen_with_novelty(signal_forest):
    features, _, embeddings = study(1, seed=2)
    features = pd.concat([features] * 4, ignore_index=True)
    shifted = np.repeat(embeddings, 4, axis=0) + np.array([0.0, 2.0, 5.0, 50.0])[:, None]
    predicted = signal_forest.predict(features, shifted)
    width = (predicted["f1_high"] - predicted["f1_low"]).to_numpy()
    assert np.all(np.diff(width) >= -1e-12) and width[-1] > width[0]
    assert predicted["f1_low"].iloc[-1] == 0.0 and predicted["f1_high"].iloc[-1] == 1.0


def test_frames_whose_error_no_training_frame_bounds_are_not_in_domain(signal_forest):
    """A frame whose weighted-conformal interval is unbounded (no training frame of like novelty),
    so its F1 interval is all of 0-1, is out of domain by that alone: here the novelty threshold
    is lifted out of the way."""
    forest = copy.deepcopy(signal_forest)
    forest.novelty_model.threshold = np.inf
    features, _, embeddings = study(1, seed=3)
    shifts = np.linspace(0.0, 3.0, 13)
    features = pd.concat([features] * len(shifts), ignore_index=True)
    predicted = forest.predict(features, np.repeat(embeddings, len(shifts), axis=0) + shifts[:, None])
    unbounded = ~np.isfinite(
        forest._interval_scales("f1", predicted["novelty"].to_numpy(), np.ones(len(shifts), bool))
    )
    near = (predicted["domain_distance"] <= forest._domain_radius).to_numpy()
    assert predicted["in_domain"].iloc[0] and (unbounded & near).any()
    assert not predicted["in_domain"][unbounded].any()


def test_empty_single_and_all_failing_inputs_give_defined_values(signal_forest):
    features, _, embeddings = study(3, seed=3)
    empty = signal_forest.predict(features.iloc[:0], embeddings[:0])
    assert len(empty) == 0 and "novelty" in empty
    one = signal_forest.predict(features.iloc[:1], embeddings[:1])
    failing = features.copy()
    failing[list(CANDIDATE_FEATURES)] = 0.0  # frames without detections
    failing[list(TTA_SIGNALS)] = [0.0, 0.0, 1.0]
    unknown = embeddings.copy()
    unknown[1] = np.nan  # a frame whose embedding is missing
    for predicted in (one, signal_forest.predict(failing, unknown)):
        assert np.isfinite(predicted.drop(columns=["in_domain", "novelty_known"]).to_numpy(float)).all()
    assert not signal_forest.predict(failing, unknown)["novelty_known"].iloc[1]


def test_missing_signals_are_a_clear_error(signal_forest):
    features, _, embeddings = study(3, seed=4)
    with pytest.raises(ValueError, match="needs the detector signals"):
        signal_forest.predict(features.drop(columns=["tta_iou"]), embeddings)
    with pytest.raises(ValueError, match="backbone embeddings"):
        signal_forest.predict(features)
    with pytest.raises(ValueError, match="another detector"):
        signal_forest.predict(features, embeddings[:, :5])


def test_signal_forest_round_trips_through_its_file(signal_forest, tmp_path):
    features, _, embeddings = study(10, seed=5)
    loaded = QualityForest.load(signal_forest.save(tmp_path / "signals.skops"))
    assert loaded.signals_note is None and loaded.uses_novelty
    pd.testing.assert_frame_equal(
        loaded.predict(features, embeddings), signal_forest.predict(features, embeddings)
    )


@pytest.mark.parametrize(
    "attribute, damage",
    [
        ("training_embeddings", lambda e: e[:-1]),  # one row short
        ("training_embeddings", lambda e: np.where(np.arange(e.shape[1]) == 0, np.inf, e)),
        ("_training_bins", lambda b: b * 3.0),  # fractions above 1
        ("_residuals", lambda r: {t: -np.abs(v) - 1 for t, v in r.items()}),
    ],
)
def test_damaged_signal_arrays_in_a_forest_file_are_refused(signal_forest, tmp_path, attribute, damage):
    damaged = copy.copy(signal_forest)
    setattr(damaged, attribute, damage(getattr(signal_forest, attribute)))
    with pytest.raises(ForestLoadError, match="damaged forest file"):
        QualityForest.load(damaged.save(tmp_path / "damaged.skops"))


def test_forest_files_from_before_the_signals_load_and_say_so():
    forest = QualityForest.load("li2025")  # a file from before the detector signals
    assert forest.signals_note == NO_SIGNALS_NOTE and not forest.uses_novelty
    features, _, embeddings = study(4, seed=6)
    predicted = forest.predict(features, embeddings)
    assert not predicted["novelty_known"].any() and (predicted["novelty"] == 0).all()


def test_scoring_note_names_what_the_scores_lack(signal_forest):
    assert signal_forest.scoring_note(detected_with_signals=True) == ""
    assert signal_forest.scoring_note(detected_with_signals=False) == NO_EMBEDDINGS_NOTE
    old = QualityForest.load("li2025")
    assert (
        old.scoring_note(detected_with_signals=True)
        == old.scoring_note(detected_with_signals=False)
        == NO_SIGNALS_NOTE
    )


def test_li2025_is_the_papers_forest_unchanged():
    forest = QualityForest.load("li2025")
    assert forest.features == PAPER_FEATURES and forest.signals_note == NO_SIGNALS_NOTE
    rows = pd.DataFrame(np.zeros((2, len(PAPER_FEATURES))), columns=list(PAPER_FEATURES))
    assert set(TARGETS) <= set(forest.predict(rows).columns)  # the paper's 8 columns suffice


def test_novelty_flags_points_off_the_reference_subspace():
    rng = np.random.default_rng(7)
    basis = rng.normal(0, 1, (3, 30))
    on_subspace = lambda n: rng.normal(0, 1, (n, 3)) @ basis + rng.normal(0, 0.05, (n, 30))  # noqa: E731
    model = SubspaceNovelty(n_components=3).fit(on_subspace(200))
    assert (model.reference_novelty > model.threshold).mean() <= 0.02
    assert (model.novelty(on_subspace(100)) > model.threshold).mean() <= 0.1
    assert (model.novelty(rng.normal(0, 1, (20, 30))) > model.threshold).all()
    assert np.isfinite(
        SubspaceNovelty().fit(rng.normal(0, 1, (3, 6))).novelty(rng.normal(0, 1, (2, 6)))
    ).all()


def test_frames_outside_the_novelty_reference_stay_novel():
    """The bundled forest learns from real frames without letting them define "in domain"."""
    rng = np.random.default_rng(9)
    basis = rng.normal(0, 1, (3, 30))
    known = rng.normal(0, 1, (150, 3)) @ basis + rng.normal(0, 0.05, (150, 30))
    other = rng.normal(0, 1, (50, 30))
    everything = np.vstack([known, other])
    reference = np.arange(len(everything)) < len(known)
    union = SubspaceNovelty(n_components=3).fit(everything)
    masked = SubspaceNovelty(n_components=3).fit(everything, reference)
    unseen = rng.normal(0, 1, (20, 30))
    assert (masked.novelty(unseen) > masked.threshold).all()
    assert (union.novelty(unseen) > union.threshold).mean() < 0.5  # the union calls such frames known
    assert (masked.reference_novelty[~reference] > masked.threshold).all()
    with pytest.raises(ValueError, match="3 reference"):
        SubspaceNovelty().fit(everything, np.arange(len(everything)) < 2)


def test_a_forests_novelty_reference_survives_its_file(tmp_path):
    features, targets, embeddings = study(60, seed=10)
    embeddings[40:] += 25.0  # frames learnt from, not called known
    reference = np.arange(60) < 40
    forest = QualityForest(features=SIGNAL_FEATURES, n_estimators=20).fit(
        features, targets, embeddings=embeddings, novelty_reference=reference
    )
    loaded = QualityForest.load(forest.save(tmp_path / "masked.skops"))
    np.testing.assert_array_equal(loaded.novelty_reference, reference)
    new_features, _, new_embeddings = study(6, seed=11)
    new_embeddings[:3] += 25.0
    predicted = loaded.predict(new_features, new_embeddings)
    pd.testing.assert_frame_equal(predicted, forest.predict(new_features, new_embeddings))
    assert not predicted["in_domain"][:3].any()
    damaged = copy.copy(forest)
    damaged.novelty_reference = reference[:-1]
    with pytest.raises(ForestLoadError, match="novelty reference"):
        QualityForest.load(damaged.save(tmp_path / "damaged.skops"))


def two_kinds(n_reference, n_other, seed):
    """Reference frames whose F1 follows the TTA agreement, and frames of another kind (shifted
    embeddings) whose F1 goes the other way: the same feature rows mean opposite things."""
    features, targets, embeddings = study(n_reference + n_other, seed=seed)
    other = np.arange(len(features)) >= n_reference
    embeddings[other] += 25.0
    targets.loc[other, list(TARGETS)] = 1.0 - targets.loc[other, list(TARGETS)].to_numpy()
    return features, targets, embeddings, ~other


def test_a_forest_of_two_kinds_answers_each_kind_and_flags_frames_where_kind_decides(tmp_path):
    features, targets, embeddings, reference = two_kinds(80, 80, seed=12)
    kind_blind = (
        "mean_score",
        "count",
    ) + TTA_SIGNALS  # as the bundled forest: no feature tells the kinds apart
    forest = QualityForest(features=kind_blind, n_estimators=30).fit(
        features, targets, embeddings=embeddings, novelty_reference=reference
    )
    assert forest.reference_forest is not None and forest.reference_forest.n_training == 80
    new_features, _, new_embeddings = study(40, seed=13)
    new_features["tta_iou"] = np.linspace(0, 1, 40)
    other_embeddings = new_embeddings + 25.0
    as_reference = forest.predict(new_features, new_embeddings)
    as_other = forest.predict(new_features, other_embeddings)
    reference_only = forest.reference_forest.predict(new_features, new_embeddings)
    np.testing.assert_allclose(as_reference["f1"], reference_only["f1"], atol=0.02)
    assert np.corrcoef(as_reference["f1"], new_features["tta_iou"])[0, 1] > 0.9
    every_frame = QualityForest(features=kind_blind, n_estimators=30).fit(
        features, targets, embeddings=embeddings
    )
    np.testing.assert_allclose(
        as_other["f1"], every_frame.predict(new_features, other_embeddings)["f1"], atol=0.02
    )
    for predicted in (as_reference, as_other):  # the interval spans both forests' answers
        assert (predicted["f1_low"] <= reference_only["f1_low"]).all()
        assert (predicted["f1_high"] >= reference_only["f1_high"]).all()
        assert ((predicted["f1"] >= predicted["f1_low"]) & (predicted["f1"] <= predicted["f1_high"])).all()
    extreme = (new_features["tta_iou"] < 0.1) | (new_features["tta_iou"] > 0.9)
    middle = (new_features["tta_iou"] > 0.4) & (new_features["tta_iou"] < 0.6)
    assert (
        as_reference["forests_disagree"][extreme].all()
        and as_reference["forests_disagree"][middle].mean() < 0.5
    )
    for predicted in (as_reference, as_other):
        too_wide = predicted["f1_high"] - predicted["f1_low"] >= UNINFORMATIVE_WIDTH
        assert not predicted["in_domain"][predicted["forests_disagree"] | too_wide].any()
    loaded = QualityForest.load(forest.save(tmp_path / "two_kinds.skops"))
    pd.testing.assert_frame_equal(loaded.predict(new_features, new_embeddings), as_reference)
    without = forest.predict(new_features)  # no embeddings: the forest of every frame, still checked
    assert "forests_disagree" in without and not without["in_domain"][without["forests_disagree"]].any()


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: setattr(
            f.reference_forest, "_residuals", {t: v[:-1] for t, v in f.reference_forest._residuals.items()}
        ),
        lambda f: setattr(
            f.reference_forest, "training_features", f.reference_forest.training_features.iloc[:-1]
        ),
        lambda f: setattr(
            f, "novelty_reference", np.ones_like(f.novelty_reference)
        ),  # no frame of another kind left
    ],
)
def test_a_damaged_reference_forest_in_a_file_is_refused(tmp_path, damage):
    features, targets, embeddings, reference = two_kinds(30, 30, seed=15)
    damaged = QualityForest(features=("mean_score", "count"), n_estimators=5).fit(
        features, targets, embeddings=embeddings, novelty_reference=reference
    )
    damaged.reference_forest = copy.copy(damaged.reference_forest)
    damage(damaged)
    with pytest.raises(ForestLoadError, match="damaged forest file"):
        QualityForest.load(damaged.save(tmp_path / "damaged.skops"))


def test_a_forest_of_one_kind_has_no_second_forest():
    features, targets, embeddings = study(40, seed=14)
    forest = QualityForest(features=SIGNAL_FEATURES, n_estimators=10).fit(
        features, targets, embeddings=embeddings
    )
    assert forest.reference_forest is None and "forests_disagree" not in forest.predict(features, embeddings)


def test_predicted_quality_reads_the_signals_stored_with_the_detections(signal_forest):
    features, _, embeddings = study(2, seed=8)
    frames = []
    for row, embedding in zip(features.itertuples(), embeddings):
        signals = {name: getattr(row, name) for name in TTA_SIGNALS}
        frames.append(
            FrameDetections.empty((32, 32)).__class__(
                np.zeros((0, 4)), np.zeros(0), np.zeros((32, 32), np.uint8), {**signals, EMBEDDING: embedding}
            )
        )
    stack = StackDetections.from_frames(frames)
    table, used = predicted_quality(stack, signal_forest)
    assert list(used["tta_iou"]) == list(features["tta_iou"])
    records = signals_from_records(signals_to_records(stack))
    bare = StackDetections.from_frames([FrameDetections.empty((32, 32))] * 2)
    again, _ = predicted_quality(bare, signal_forest, records)
    np.testing.assert_allclose(again["f1"], table["f1"])


def test_frames_lacking_the_signals_a_forest_needs():
    tta = dict.fromkeys(TTA_SIGNALS, 1.0)
    signals = [{**tta, EMBEDDING: np.zeros(4), "signal_seconds": 0.1}, {"signal_seconds": 0.0}, {}, {**tta}]
    assert frames_lacking("all", signals) == [1, 2]
    assert frames_lacking("cheap", signals) == [
        2
    ]  # frame 1 was asked for signals (a blank frame has no embedding)
    assert frames_lacking("none", signals) == []
    with pytest.raises(ValueError, match="required signals"):
        frames_lacking("some", signals)


def test_explanations_see_the_values_the_forest_derives(signal_forest):
    from napari_detection_qc.quality.explain import frame_contributions

    features, _, embeddings = study(3, seed=9)
    frames = [FrameDetections.empty((32, 32))] * 3
    records = [
        {**{name: getattr(row, name) for name in TTA_SIGNALS}, EMBEDDING: e}
        for row, e in zip(features.itertuples(), embeddings)
    ]
    table, used = predicted_quality(StackDetections.from_frames(frames), signal_forest, records)
    expected = signal_forest.predict(used.drop(columns=["novelty", "score_hist_distance"]), embeddings)
    np.testing.assert_allclose(used["novelty"], expected["novelty"])
    contributions = frame_contributions(signal_forest, used)
    base = contributions.attrs["base_value"]
    np.testing.assert_allclose(contributions.sum(axis=1) + base, table["f1"], atol=1e-6)
