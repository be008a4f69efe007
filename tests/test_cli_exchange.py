"""Exchange with the EM ecosystem from the command line: per-image pixel sizes from a table
(``detect --pixel-sizes``), COCO ground truth (``evaluate --ground-truth x.json``) and the COCO
export of detections (``export-coco``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.segmentation import relabel_sequential

from napari_detection_qc.batch.cli import main
from napari_detection_qc.batch.store import Store
from napari_detection_qc.detections.coco import CocoGroundTruth, detections_to_coco, write_coco
from napari_detection_qc.detections.matching import boxes_from_labels
from napari_detection_qc.detections.records import FrameDetections, StackDetections
from napari_detection_qc.io import InputError
from napari_detection_qc.io.pixel_sizes import match_pixel_sizes, read_pixel_size_table
from napari_detection_qc.synthetic import make_stack


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def detected(tmp_path_factory, tiny_checkpoint):
    """Two inputs: a 2-frame .npy stack and a single .tif with its own pixel size (0.4 nm),
    detected with a pixel-size table that names the stack by its stem."""
    root = tmp_path_factory.mktemp("exchange")
    images, truth = make_stack(2, 2, (128, 128), "dense")
    np.save(root / "series.npy", images.astype(np.uint8))
    tifffile.imwrite(
        root / "single.tif",
        images[0].astype(np.uint8),
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={"unit": "nm"},
    )
    (root / "sizes.tsv").write_text("image\tnm_per_pixel\nseries\t0.25\n")
    out = root / "out"
    args = [
        "detect",
        str(root / "series.npy"),
        str(root / "single.tif"),
        "--out",
        str(out),
        "--model",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--max-detections",
        "30",
        "--no-progress",
        "--pixel-sizes",
        str(root / "sizes.tsv"),
    ]
    assert main(args) == 0
    return root, out, truth, args


def test_pixel_size_table_formats_and_errors(tmp_path):
    comma = tmp_path / "a.csv"
    comma.write_text("img_01.tif,0.4\nsub/img_02.tif, 1.5\n\n")
    assert read_pixel_size_table(comma) == {"img_01.tif": 0.4, "img_02.tif": 1.5}
    tab = tmp_path / "b.tsv"
    tab.write_text("name\tnm per pixel\nimg_01\t0.4\n")
    assert read_pixel_size_table(tab) == {"img_01": 0.4}
    for text, message in [
        ("a,0.1\nimg,abc\n", "line 2: 'abc' is not a number"),
        ("name,size\nimg,abc\n", "line 2: 'abc' is not a number"),
        ("img,-1\n", "positive"),
        ("img,0.4\nimg,0.5\n", "listed twice"),
        ("img\n", "expected 'image name, nm per pixel'"),
        ("name,size\n", "no entries"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(InputError, match=message):
            read_pixel_size_table(bad)
    sources = [tmp_path / "img_01.tif", tmp_path / "img_02.png"]
    assert match_pixel_sizes({"img_01.tif": 0.4, "img_02": 2.0}, sources, "t") == {
        sources[0]: 0.4,
        sources[1]: 2.0,
    }
    assert match_pixel_sizes({"img_02.tif": 2.0}, sources, "t") == {sources[1]: 2.0}  # by stem
    with pytest.raises(InputError, match="t: no input image named img_03.tif"):
        match_pixel_sizes({"img_03.tif": 1.0}, sources, "t")


def test_detect_takes_pixel_sizes_from_the_table(detected, capsys):
    root, out, _, args = detected
    assert Store(out / "series").read_meta()["pixel_size_nm"] == pytest.approx(0.25)
    assert Store(out / "single").read_meta()["pixel_size_nm"] == pytest.approx(0.4)  # the file's own
    (root / "typo.csv").write_text("seires.npy,0.25\n")
    bad = [*args[:-1], str(root / "typo.csv")]
    assert main(bad) == 2
    assert "typo.csv: no input image named seires.npy" in capsys.readouterr().err


def truth_as_detections(truth: np.ndarray) -> StackDetections:
    frames = []
    for labels in truth:
        labels, _, _ = relabel_sequential(labels)
        boxes, _ = boxes_from_labels(labels)
        frames.append(FrameDetections(boxes, np.ones(len(boxes)), labels))
    return StackDetections.from_frames(frames)


def test_evaluate_with_coco_ground_truth_equals_labels_file(detected, tmp_path):
    root, out, truth, _ = detected
    np.save(tmp_path / "series.npy", truth)
    coco = write_coco(
        tmp_path / "truth.json", detections_to_coco([("series.png", truth_as_detections(truth))])
    )
    store = str(out / "series")
    assert (
        main(
            [
                "evaluate",
                store,
                "--ground-truth",
                str(tmp_path / "series.npy"),
                "--out",
                str(tmp_path / "a.csv"),
            ]
        )
        == 0
    )
    assert main(["evaluate", store, "--ground-truth", str(coco), "--out", str(tmp_path / "b.csv")]) == 0
    from_labels, from_coco = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert from_labels["n_true"].sum() > 0
    pd.testing.assert_frame_equal(from_coco, from_labels)
    # the whole output folder against one COCO file: the image without annotations is an error
    assert main(["evaluate", str(out), "--ground-truth", str(coco), "--out", str(tmp_path / "c.csv")]) == 2


def test_export_coco_holds_the_stored_detections(detected, tmp_path, capsys):
    _, out, _, _ = detected
    path = tmp_path / "detections.json"
    assert main(["export-coco", str(out), "--out", str(path)]) == 0
    data = json.loads(path.read_text())
    assert [(i["file_name"], i.get("frame")) for i in data["images"]] == [
        ("series.npy", 0),
        ("series.npy", 1),
        ("single.tif", None),
    ]
    table = pd.read_csv(out / "series" / "detections.csv")
    scores = [a["score"] for a in data["annotations"] if a["image_id"] in (1, 2)]
    np.testing.assert_array_equal(scores, table["score"].to_numpy())
    masks = np.load(out / "series" / "masks.npy")
    read_back = CocoGroundTruth.load(path).stack_labels("series.npy", 2, (128, 128))
    np.testing.assert_array_equal(read_back, masks)
    assert "written to" in capsys.readouterr().err


def test_export_coco_and_category_refuse_bad_input_in_one_line(detected, tmp_path, capsys):
    _, out, _, _ = detected
    store = tmp_path / "series"
    shutil.copytree(out / "series", store)
    np.save(store / "masks.npy", np.zeros((1, 128, 128), dtype=np.uint8))  # one frame of two
    assert main(["export-coco", str(store), "--out", str(tmp_path / "d.json")]) == 2
    assert "masks.npy: damaged masks" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()
    truth = tmp_path / "truth.npy"
    np.save(truth, np.zeros((2, 128, 128), dtype=np.uint16))
    assert main(["evaluate", str(out / "series"), "--ground-truth", str(truth), "--category", "cavity"]) == 2
    assert "category can only be chosen in COCO .json" in capsys.readouterr().err
