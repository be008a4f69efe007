"""The learned choice of the automatic size's rung: NumPy trees equal scikit-learn's, survive the
detector header, and overrule the hand-set rule."""

import json

import numpy as np
import pytest
from test_scaling import ROBUST, few_squares_frame, threshold_boxes

from napari_detection_qc.engines import default_weights_path, load_checkpoint, load_detector
from napari_detection_qc.engines.scaling import ScaleRule, ladder_detections, rung_evidence, size_from_ladder
from napari_detection_qc.engines.size_chooser import SizeChooser

RULE = ScaleRule(22, 1 / 16, 1.5)


def few_rung_chooser(features: int = 10) -> SizeChooser:
    """One stump: a rung with few objects in a small view (feature 8) is the sure one."""
    stump = {
        "feature": np.array([8, -2, -2]),
        "threshold": np.array([0.5, -2.0, -2.0]),
        "left": np.array([1, -1, -1]),
        "right": np.array([2, -1, -1]),
        "value": np.array([0.0, -1.0, 1.0]),
    }
    return SizeChooser(features, (stump,), 0.0, 1.0, {"test": True})


def rung_evidence_features() -> np.ndarray:
    """The features of one real rung, to check the bundled chooser's width against."""
    image = few_squares_frame(200, [])
    return rung_evidence(ladder_detections(image, threshold_boxes, RULE), RULE)[0].features


def test_fitted_trees_score_as_scikit_learn_does_and_survive_the_header():
    rng = np.random.default_rng(0)
    evidence = [rng.normal(size=(int(rng.integers(1, 6)), 10)) for _ in range(80)]
    right = [rows[:, 3] + rows[:, 8] > 0.2 for rows in evidence]
    chooser = SizeChooser.fit(evidence, right, {"frames": 80})
    rows = np.vstack(evidence)
    from sklearn.ensemble import GradientBoostingClassifier

    reference = GradientBoostingClassifier(max_depth=2, n_estimators=150, random_state=0)
    reference.fit(rows, np.concatenate(right).astype(int))
    np.testing.assert_allclose(chooser.scores(rows), reference.decision_function(rows), atol=1e-9)
    restored = SizeChooser.from_input_header(
        {"object_size": {"chooser": json.loads(json.dumps(chooser.to_header()))}}
    )
    np.testing.assert_allclose(restored.scores(rows), chooser.scores(rows))
    assert restored.fitted_on == {"frames": 80, "rungs": len(rows), "seed": 0}


def test_fitting_needs_right_and_wrong_rungs():
    with pytest.raises(ValueError, match="right and rungs that are wrong"):
        SizeChooser.fit([np.zeros((3, 10))], [np.ones(3, bool)], {})


def test_a_chooser_overrules_the_hand_set_rule():
    """The rule sizes two 200 px squares and four 10 px ones to the small squares (few objects in
    small views weigh less); a chooser sure of few-object rungs sizes it to the big ones."""
    image = few_squares_frame(200, [(230, 230), (230, 270), (270, 230), (270, 270)])
    ladder = ladder_detections(image, threshold_boxes, RULE)
    assert size_from_ladder(ladder, RULE) == pytest.approx(10, rel=0.1)
    assert size_from_ladder(ladder, RULE, chooser=few_rung_chooser()) == pytest.approx(200, rel=0.1)
    assert any(rung.few for rung in rung_evidence(ladder, RULE))


def test_a_chooser_needs_the_evidence_it_was_fitted_on():
    with pytest.raises(ValueError, match="needs 10 features per row"):
        few_rung_chooser().scores(np.zeros((2, 7)))


def test_a_header_whose_tree_points_back_is_refused_instead_of_looping():
    header = few_rung_chooser().to_header()
    header["trees"][0]["left"] = [1, 0, -1]  # node 1 sends its left walks back to the root
    header["trees"][0]["right"] = [2, 2, -1]
    with pytest.raises(ValueError, match="pointing outside its tree"):
        SizeChooser.from_input_header({"object_size": {"chooser": header}})


def test_models_without_a_chooser_load_and_use_the_rule():
    assert SizeChooser.from_input_header(ROBUST) is None
    assert (
        SizeChooser.from_input_header(
            {"object_size": {"target_px": 22, "min_factor": 0.0625, "max_factor": 1.5}}
        )
        is None
    )


def test_the_bundled_detector_carries_its_chooser():
    header, _ = load_checkpoint(default_weights_path())
    chooser = load_detector("default", device="cpu").size_chooser
    assert chooser is not None and chooser.features == len(rung_evidence_features())
    assert header["input"]["object_size"]["chooser"]["fitted_on"]["rungs"] > 1000
