"""Results back into napari and out of it: a ``detect`` store reopened as image + masks + boxes with
the detector record, the npe2 writers (ImageJ TIFF labels, COCO), and atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_detection_qc.batch.store.format import Store, assemble, write_frame, write_json
from napari_detection_qc.detections.records import FrameDetections
from napari_detection_qc.io import InputError, describe
from napari_detection_qc.io.atomic import (
    atomic_path,
    process_is_alive,
    remove_stale_temporary_files,
    temporary_path,
)
from napari_detection_qc.io.layer_pair import OBJECT_SIZES_KEY, SIGNALS_KEY
from napari_detection_qc.io.napari_reader import get_reader
from napari_detection_qc.io.writers import write_detections_coco, write_label_tiff, write_labels_tiff

DETECTOR = {"engine": "torchvision", "weights_sha256": "ab" * 32, "score_threshold": 0.1}


def frame_detections(t: int) -> FrameDetections:
    labels = np.zeros((16, 20), np.uint8)
    labels[2:6, 3:8] = 1
    labels[9:14, 10 + t : 15 + t] = 2
    boxes = np.array([[2, 3, 6, 8], [9, 10 + t, 14, 15 + t]], float)
    return FrameDetections(boxes, np.array([0.9, 0.35 + 0.1 * t]), labels, signals={"tta_iou": 0.5 + 0.1 * t})


@pytest.fixture
def store(tmp_path):
    """A finished store of a 2-frame TIFF at 0.4 nm, written as ``detect`` writes one."""
    source = tmp_path / "series.tif"
    image = np.random.default_rng(0).integers(0, 255, (2, 16, 20), dtype=np.uint8)
    tifffile.imwrite(source, image, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"unit": "nm"})
    root = tmp_path / "out" / "series"
    (root / "frames").mkdir(parents=True)
    write_json(
        root / "meta.json",
        {
            "source": str(source),
            "n_frames": 2,
            "image_shape": [16, 20],
            "is_2d": False,
            "pixel_size_nm": 0.4,
            "detector": DETECTOR,
            "score_threshold": 0.1,
        },
    )
    store = Store(root)
    for t in range(2):
        write_frame(store.frame_path(t), frame_detections(t), object_size_px=7.0 + t)
    assemble(store, 2, (16, 20))
    return store


def layers_by_type(layers):
    return {kind: (data, kwargs) for data, kwargs, kind in layers}


def test_store_reopens_as_image_masks_and_boxes_with_the_detector_record(store):
    for path in (store.root, store.root.parent):  # the store itself, or the detect output folder
        reader = get_reader(str(path))
        assert reader is not None
        layers = layers_by_type(reader(str(path)))
        assert set(layers) == {"image", "labels", "shapes"}
    image, image_kwargs = layers["image"]
    masks, mask_kwargs = layers["labels"]
    vertices, box_kwargs = layers["shapes"]
    assert image.shape == (2, 16, 20) and image_kwargs["name"] == "series"
    assert mask_kwargs["name"] == "series masks" and box_kwargs["name"] == "series boxes"
    np.testing.assert_array_equal(masks[1], frame_detections(1).labels)
    masks[0, 0, 0] = 5  # editable in memory (copy on write), the store's file is unchanged
    assert np.load(store.masks_path)[0, 0, 0] == 0
    assert len(vertices) == 4 and np.asarray(vertices[3]).shape == (4, 3)
    np.testing.assert_allclose(np.asarray(vertices[3])[:, 1:].min(0), [9, 11])
    features = box_kwargs["features"]
    assert list(features["frame"]) == [0, 0, 1, 1] and list(features["label"]) == [1, 2, 1, 2]
    np.testing.assert_allclose(features["score"], [0.9, 0.35, 0.9, 0.45])
    record = mask_kwargs["metadata"]["detection_qc"]
    assert record == box_kwargs["metadata"]["detection_qc"]
    assert (
        record["detector"] == DETECTOR
        and record["image_layer"] == "series"
        and record["pixel_size_nm"] == 0.4
    )
    assert record["frames_done"] == [0, 1] and record[OBJECT_SIZES_KEY] == {"0": 7.0, "1": 8.0}
    assert record[SIGNALS_KEY]["1"]["tta_iou"] == pytest.approx(0.6)
    assert mask_kwargs["scale"] == (1.0, 0.4, 0.4) and mask_kwargs["units"] == ("pixel", "nm", "nm")


def test_reopened_layers_are_valid_napari_layers_and_a_pair(store):
    layers_module = pytest.importorskip("napari.layers")
    from napari_detection_qc.io.layer_pair import pair_problem

    made = {
        kind: layers_module.Layer.create(data, kwargs, kind)
        for data, kwargs, kind in get_reader(str(store.root))(str(store.root))
    }
    masks, boxes = made["labels"], made["shapes"]
    assert len(boxes.data) == 4 and list(boxes.features["score"]) == pytest.approx([0.9, 0.35, 0.9, 0.45])
    assert (
        pair_problem(masks.name, masks.data.shape, masks.metadata, boxes.name, boxes.data, boxes.metadata)
        is None
    )


def test_damaged_store_opens_nothing(store):
    store.table_path.write_text("frame,label\n0,1\n")
    with pytest.raises(InputError, match="detections.csv"):
        get_reader(str(store.root))(str(store.root))


def test_store_without_its_image_still_opens_masks_and_boxes(store):
    os.remove(json.loads(store.meta_path.read_text())["source"])
    kinds = [kind for _, _, kind in get_reader(str(store.root))(str(store.root))]
    assert kinds == ["labels", "shapes"]


def test_label_tiff_is_an_imagej_stack_with_calibration(tmp_path):
    labels = np.zeros((3, 16, 20), np.uint32)
    labels[1, 2:5, 2:5] = 300
    path = write_label_tiff(tmp_path / "masks.tif", labels, 0.4)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm" and tif.series[0].axes == "TYX"
        stored = tif.asarray()
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, labels)
    info = describe(path)
    assert info.pixel_size_nm == pytest.approx(0.4) and info.n_frames == 3
    many = np.arange(16 * 20, dtype=np.uint32).reshape(16, 20) * 300  # ids past uint16: float32, exact
    [written] = write_labels_tiff(
        str(tmp_path / "many.tif"), many, {"metadata": {}, "scale": (1, 1), "units": None}
    )
    np.testing.assert_array_equal(tifffile.imread(written).astype(np.uint32), many)
    assert describe(written).pixel_size_nm is None


def test_labels_writer_takes_the_pixel_size_from_the_layer(tmp_path, store):
    layers = layers_by_type(get_reader(str(store.root))(str(store.root)))
    masks, kwargs = layers["labels"]
    [written] = write_labels_tiff(str(tmp_path / "saved.tif"), masks, kwargs)
    assert describe(written).pixel_size_nm == pytest.approx(0.4)


def test_coco_writer_keeps_scores_and_the_detector(tmp_path, store):
    layer_data = get_reader(str(store.root))(str(store.root))
    pair = [(data, kwargs, kind) for data, kwargs, kind in layer_data if kind in ("labels", "shapes")]
    [written] = write_detections_coco(str(tmp_path / "detections.json"), pair)
    document = json.loads(Path(written).read_text())
    assert [image["frame"] for image in document["images"]] == [0, 1]
    assert {image["file_name"] for image in document["images"]} == {"series.tif"}
    assert sorted(a["score"] for a in document["annotations"]) == pytest.approx([0.35, 0.45, 0.9, 0.9])
    assert document["info"]["detector"] == DETECTOR and document["info"]["pixel_size_nm"] == 0.4
    with pytest.raises(ValueError, match="one masks"):
        write_detections_coco(str(tmp_path / "x.json"), pair[:1])


def test_atomic_write_replaces_whole_and_liveness_is_portable(tmp_path):
    target = tmp_path / "table.csv"
    with atomic_path(target) as temporary:
        temporary.write_text("a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n" and not temporary.exists()
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "a,b\n1,2\n"
    assert process_is_alive(os.getpid())
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert not process_is_alive(finished.pid)
    left = temporary_path(target, pid=finished.pid)
    left.write_text("left by a killed writer")
    mine = temporary_path(tmp_path / "other.csv")
    mine.write_text("being written")
    assert remove_stale_temporary_files(tmp_path) == 1 and not left.exists() and mine.exists()


def test_napari_opens_a_store_and_saves_through_the_plugin(make_napari_viewer, store, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(store.root), plugin="napari-detection-qc")
    assert [layer.name for layer in viewer.layers] == ["series", "series masks", "series boxes"]
    masks, boxes = viewer.layers["series masks"], viewer.layers["series boxes"]
    assert list(boxes.features["score"]) == pytest.approx([0.9, 0.35, 0.9, 0.45])
    viewer.layers.selection = {masks}
    [tiff] = viewer.layers.save(
        str(tmp_path / "saved_masks.tif"), selected=True, plugin="napari-detection-qc"
    )
    assert describe(tiff).pixel_size_nm == pytest.approx(0.4)
    viewer.layers.selection = {masks, boxes}
    [coco] = viewer.layers.save(str(tmp_path / "saved.json"), selected=True, plugin="napari-detection-qc")
    assert len(json.loads(Path(coco).read_text())["annotations"]) == 4


def test_coco_detections_reopen_with_image_scores_and_detector(tmp_path, store):
    """What the COCO writer saved opens again: masks, boxes and scores as saved, the detector
    record and pixel size from ``info``, and the image when its file lies beside the JSON."""
    layer_data = get_reader(str(store.root))(str(store.root))
    pair = [(data, kwargs, kind) for data, kwargs, kind in layer_data if kind in ("labels", "shapes")]
    source = json.loads(store.meta_path.read_text())["source"]
    saved = os.path.join(os.path.dirname(source), "detections.json")
    write_detections_coco(saved, pair)
    reader = get_reader(saved)
    assert reader is not None
    layers = layers_by_type(reader(saved))
    assert set(layers) == {"image", "labels", "shapes"}
    masks, mask_kwargs = layers["labels"]
    np.testing.assert_array_equal(masks, np.stack([frame_detections(t).labels for t in range(2)]))
    vertices, box_kwargs = layers["shapes"]
    assert list(box_kwargs["features"]["score"]) == pytest.approx([0.9, 0.35, 0.9, 0.45])
    record = box_kwargs["metadata"]["detection_qc"]
    assert (
        record["detector"] == DETECTOR and record["pixel_size_nm"] == 0.4 and record["frames_done"] == [0, 1]
    )
    assert mask_kwargs["scale"] == (1.0, 0.4, 0.4)
    ground_truth = tmp_path / "truth.json"
    ground_truth.write_text(
        json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}]})
    )
    assert get_reader(str(ground_truth)) is None  # no scores: ground truth, for the Training step
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1, "score": 0.5}]}))
    with pytest.raises(InputError, match="broken.json"):
        get_reader(str(broken))(str(broken))


def test_a_pipe_named_like_a_micrograph_is_refused_not_read(tmp_path):
    """Reading a FIFO would block the viewer forever: the reader takes it, and refuses it at once."""
    from napari_detection_qc.io.napari_reader import get_reader

    pipe = tmp_path / "frame.tif"
    os.mkfifo(pipe)
    reader = get_reader(str(pipe))
    assert reader is not None
    with pytest.raises(ValueError, match="not a regular file"):
        reader(str(pipe))
