"""Which ground-truth frames count as labeled, without a viewer."""

from types import SimpleNamespace

import numpy as np

from napari_detection_qc.labels.ground_truth import (
    GroundTruthRecord,
    labeled_frames,
    painted_frames,
    seeded_name,
)


def test_seeded_layer_counts_only_reviewed_frames():
    data = np.ones((4, 8, 8), np.uint8)
    data[2] = 0
    record = GroundTruthRecord(seeded_from="tem masks", reviewed_frames={2, 3})
    assert [(f.frame, f.n_objects, f.how) for f in labeled_frames(record, data)] == [
        (2, 0, "reviewed"),
        (3, 1, "reviewed"),
    ]


def test_drawn_layer_counts_frames_with_labels_too():
    data = np.zeros((4, 8, 8), np.uint8)
    data[1, 2:4, 2:4] = 1
    data[1, 5:7, 5:7] = 2
    record = GroundTruthRecord(reviewed_frames={3})
    assert [(f.frame, f.n_objects, f.how) for f in labeled_frames(record, data)] == [
        (1, 2, "drawn"),
        (3, 0, "reviewed"),
    ]
    assert [f.frame for f in labeled_frames(GroundTruthRecord(), data[1])] == [0]


def test_record_round_trips_through_metadata_and_keeps_other_keys():
    metadata = {"detection_qc": {"detector": {"name": "x"}}, "other": 1}
    stored = GroundTruthRecord("tem masks", {5, 1}).to_metadata(metadata)
    assert stored["other"] == 1 and stored["detection_qc"]["detector"] == {"name": "x"}
    assert stored["detection_qc"]["reviewed_frames"] == [1, 5]
    assert GroundTruthRecord.from_metadata(stored) == GroundTruthRecord("tem masks", {1, 5})


def test_painted_frames_from_both_kinds_of_history_atoms():
    masked = SimpleNamespace(slice_key=(slice(2, 3), slice(0, 5), slice(0, 5)))
    setitem = ((np.array([4, 4, 6]), np.array([0, 1, 2]), np.array([0, 1, 2])), None, 0)
    assert painted_frames([masked, setitem], ndim=3) == {2, 4, 6}
    assert painted_frames([masked], ndim=2) == {0}


def test_seeded_name():
    assert seeded_name("tem masks") == "tem ground truth"
    assert seeded_name("cells") == "cells ground truth"
