"""The detection verifier: its evidence measures what it says, its trees survive the header, and
a detector with one drops exactly the detections it rejects."""

import json

import numpy as np
import pytest
import torch

from napari_detection_qc.detections.matching import box_iou_matrix, greedy_matches
from napari_detection_qc.engines import default_weights_path, load_checkpoint, load_detector, save_checkpoint
from napari_detection_qc.engines.detection_verifier import (
    EVIDENCE,
    TREE_DEPTH,
    DetectionVerifier,
    detection_evidence,
    kept_detections,
)
from napari_detection_qc.engines.registry import DetectorLoadError
from napari_detection_qc.synthetic import make_frame

COLUMN = {name: index for index, name in enumerate(EVIDENCE)}


def constant_verifier(log_odds: float, min_probability: float = 0.5) -> DetectionVerifier:
    """One leaf: every detection gets the same probability."""
    leaf = {
        key: np.array([value])
        for key, value in {
            "feature": -2,
            "threshold": -2.0,
            "left": -1,
            "right": -1,
            "value": log_odds,
        }.items()
    }
    return DetectionVerifier(len(EVIDENCE), (leaf,), 0.0, 1.0, {"test": True}, min_probability)


def disk_frame() -> tuple[np.ndarray, np.ndarray]:
    """A bright disk with a dark rim at (40, 40) on a noisy flat background, and two boxes: the
    disk's and one of the same size on the flat background."""
    rng = np.random.default_rng(0)
    image = 100 + rng.normal(0, 5, (120, 120))
    yy, xx = np.mgrid[:120, :120]
    radius = np.hypot(yy - 40, xx - 40)
    image[radius < 11] = 200
    image[(radius >= 11) & (radius < 13)] = 40
    boxes = np.array([[27.0, 27.0, 53.0, 53.0], [67.0, 67.0, 93.0, 93.0]])
    return image.astype(np.float32), boxes


def test_evidence_tells_an_object_from_flat_background():
    image, boxes = disk_frame()
    masks = torch.zeros((2, 28, 28))
    masks[:, 4:24, 4:24] = 0.9
    evidence = detection_evidence(image, boxes, np.array([0.9, 0.8]), masks, 22.0)
    assert evidence.shape == (2, len(EVIDENCE))
    disk, flat = evidence
    assert disk[COLUMN["centre"]] > 10 and abs(flat[COLUMN["centre"]]) < 2
    assert disk[COLUMN["edge_gradient"]] > 3 * flat[COLUMN["edge_gradient"]]
    assert disk[COLUMN["log_size"]] == pytest.approx(np.log(26 / 22))
    assert disk[COLUMN["score_rank"]] == 0 and flat[COLUMN["score_rank"]] == 1
    assert disk[COLUMN["mask_fill"]] == pytest.approx(400 / 784)
    assert detection_evidence(image, np.zeros((0, 4)), np.zeros(0), torch.zeros((0, 28, 28)), 22.0).shape == (
        0,
        len(EVIDENCE),
    )


def test_fitted_verifier_scores_as_scikit_learn_does_and_survives_the_header():
    rng = np.random.default_rng(0)
    evidence = rng.normal(size=(400, len(EVIDENCE)))
    true = evidence[:, COLUMN["centre"]] + evidence[:, COLUMN["score"]] > 0
    weight = np.where(evidence[:, 0] > 1, 3.0, 1.0)
    verifier = DetectionVerifier.fit_evidence(evidence, true, {"frames": 40}, 0.3, weight)
    from sklearn.ensemble import GradientBoostingClassifier

    reference = GradientBoostingClassifier(max_depth=TREE_DEPTH, n_estimators=200, random_state=0)
    reference.fit(evidence, true.astype(int), sample_weight=weight)
    np.testing.assert_allclose(
        verifier.probabilities(evidence), reference.predict_proba(evidence)[:, 1], atol=1e-9
    )
    restored = DetectionVerifier.from_model_header({"verifier": json.loads(json.dumps(verifier.to_header()))})
    assert restored.min_probability == 0.3 and restored.fitted_on == {
        "frames": 40,
        "detections": 400,
        "seed": 0,
    }
    np.testing.assert_array_equal(restored.keep(evidence), verifier.probabilities(evidence) >= 0.3)


def test_headers_without_a_verifier_or_with_other_evidence():
    assert DetectionVerifier.from_model_header({}) is None
    header = constant_verifier(1.0).to_header()
    header["evidence"] = header["evidence"][:-1]
    with pytest.raises(ValueError, match="other evidence"):
        DetectionVerifier.from_model_header({"verifier": header})


def test_a_detector_drops_what_its_verifier_rejects_and_nothing_else():
    detector = load_detector("default", device="cpu")
    image = make_frame(1_000_321, (256, 256), "clean")[0]
    kept_by_default = detector.predict(image)
    try:
        detector.verifier = None
        unverified = detector.predict(image)
        detector.verifier = constant_verifier(5.0)
        accepted = detector.predict(image)
        detector.verifier = constant_verifier(-5.0)
        rejected = detector.predict(image)
    finally:
        detector.verifier = load_detector("default", device="cpu").verifier
    assert unverified.count >= kept_by_default.count > 0
    np.testing.assert_array_equal(accepted.boxes, unverified.boxes)
    np.testing.assert_array_equal(accepted.labels, unverified.labels)
    assert rejected.count == 0 and not rejected.labels.any()


def test_the_bundled_detector_carries_its_verifier():
    verifier = load_detector("default", device="cpu").verifier
    assert verifier is not None and verifier.features == len(EVIDENCE)
    assert 0 < verifier.min_probability < 1 and verifier.fitted_on["detections"] > 10_000


def test_the_second_look_can_be_switched_off_and_says_so():
    image = make_frame(1_000_321, (256, 256), "clean")[0]
    with_it, without = (
        load_detector("default", device="cpu"),
        load_detector("default", device="cpu", second_look=False),
    )
    assert with_it.metadata()["second_look"] and not without.metadata()["second_look"]
    assert without.verifier is None
    assert without.predict(image).count >= with_it.predict(image).count


def test_a_malformed_verifier_is_a_load_error(tmp_path):
    header, state = load_checkpoint(default_weights_path())
    header["verifier"] = constant_verifier(1.0).to_header()
    header["verifier"]["trees"][0]["left"] = [0]  # a leaf turned into a node that points at itself
    save_checkpoint(tmp_path / "bad.pt", header, state)
    with pytest.raises(DetectorLoadError, match="malformed checkpoint header"):
        load_detector(str(tmp_path / "bad.pt"), device="cpu")


def test_greedy_matches_name_the_matched_predictions():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    predictions = np.array([[50, 50, 60, 60], [1, 1, 10, 10], [0, 0, 8, 8], [21, 21, 30, 30]])
    matched = greedy_matches(box_iou_matrix(truth, predictions), 0.1)
    np.testing.assert_array_equal(matched, [False, True, False, True])


def test_a_frame_keeps_its_most_probable_detection_unless_even_that_is_unlikely():
    np.testing.assert_array_equal(kept_detections(np.array([0.3, 0.9, 0.1]), 0.5, 0.1), [False, True, False])
    np.testing.assert_array_equal(kept_detections(np.array([0.3, 0.15, 0.1]), 0.5, 0.1), [True, False, False])
    np.testing.assert_array_equal(kept_detections(np.array([0.05, 0.02]), 0.5, 0.1), [False, False])
    assert kept_detections(np.zeros(0), 0.5, 0.1).shape == (0,)
    assert constant_verifier(np.log(0.3 / 0.7)).keep(np.zeros((3, len(EVIDENCE)))).sum() == 1
