"""The plugin in the napari ecosystem, through a real viewer (under Xvfb): the reader's pixel size
reaches the detection widget and the physical read-outs, the widgets sit in napari's Layers menus,
and detections go out as COCO from the quality widget and come back as ground truth in the
training widget."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_detection_qc.quality.features import CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import QualityForest
from napari_detection_qc.synthetic import make_stack

WORKER_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def micrograph(tmp_path_factory):
    """A 2-frame TIFF stack at 0.4 nm per pixel."""
    images, _ = make_stack(3, 2, shape=(192, 192), domain="clean")
    path = tmp_path_factory.mktemp("tif") / "cavities.tif"
    tifffile.imwrite(
        path,
        np.clip(images, 0, 255).astype(np.uint8),
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={"unit": "nm"},
    )
    return path


@pytest.fixture(scope="module")
def forest_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.uniform(0, 1, size=(60, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    y = pd.DataFrame({"f1": x["mean_score"], "precision": x["mean_score"], "recall": x["mean_score"]})
    return QualityForest(n_estimators=10).fit(x, y).save(tmp_path_factory.mktemp("forest") / "f.skops")


def test_widgets_sit_in_the_layers_menus(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()
    for menu, command in [
        ("napari/layers/segment", "napari-detection-qc.detection_widget"),
        ("napari/layers/measure", "napari-detection-qc.quality_widget"),
        ("napari/layers/annotate", "napari-detection-qc.training_widget"),
    ]:
        ids = [item.command.id for item in app.menus.get_menu(menu) if hasattr(item, "command")]
        assert any(i.startswith(command) for i in ids), (menu, ids)


def test_pixel_size_and_coco_through_the_widgets(
    make_napari_viewer, qtbot, micrograph, forest_path, tmp_path
):
    from napari_detection_qc.widgets import DetectionWidget, QualityWidget, TrainingWidget

    viewer = make_napari_viewer()
    [image] = viewer.open(str(micrograph), plugin="napari-detection-qc")
    assert tuple(image.scale) == pytest.approx((1.0, 0.4, 0.4)) and str(image.units[-1]) == "nanometer"

    detection = DetectionWidget(viewer)
    detection.image.value = image
    assert detection.pixel_size.value == pytest.approx(0.4)  # taken from the layer, not typed
    detection.run()
    qtbot.waitUntil(lambda: detection.worker is None, timeout=WORKER_TIMEOUT_MS)
    masks, boxes = viewer.layers["cavities masks"], viewer.layers["cavities boxes"]
    assert boxes.metadata["detection_qc"]["pixel_size_nm"] == pytest.approx(0.4)

    quality = QualityWidget(viewer)
    quality.auto_update.value = False
    quality.masks.value, quality.boxes.value = masks, boxes
    quality.forest_choice.value = "from file"
    quality.forest_file.value = forest_path
    quality.compute()
    qtbot.waitUntil(lambda: quality.worker is None, timeout=WORKER_TIMEOUT_MS)
    assert "density_per_um2" in quality.table.columns

    path = quality.export_coco(tmp_path / "detections.json")
    assert "wrote" in quality.status.value

    training = TrainingWidget(viewer)
    training.masks.value, training.boxes.value = masks, boxes
    training.load_coco_ground_truth(path)
    qtbot.waitUntil(lambda: training.loader is None, timeout=WORKER_TIMEOUT_MS)  # read in the background
    truth = viewer.layers["cavities ground truth"]
    np.testing.assert_array_equal(truth.data, masks.data)  # the file was written as cavities.tif
    scores = training.score_labeled_frames()
    assert scores["frame"].tolist() == [0, 1]
    training.load_coco_ground_truth(path)
    assert training.loader is None and "exists already" in training.status.value
    training.masks.value = None
    training.load_coco_ground_truth(path)
    assert training.loader is None and "pick the predicted masks" in training.status.value


def test_manifest_is_valid_and_its_python_names_import():
    """What `PYTHONPATH=src npe2 validate src/napari_detection_qc/napari.yaml --imports` checks."""
    from importlib.resources import files

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(files("napari_detection_qc") / "napari.yaml")
    manifest.validate_imports()
    [reader] = manifest.contributions.readers
    assert {"*.dm3", "*.dm4", "*.mrc", "*.emd", "*.ser", "*.tvips", "*.tif", "*.tiff", "*.zarr"} <= set(
        reader.filename_patterns
    )
    assert reader.accepts_directories  # detect --out stores and zarr folders
    assert {w.display_name for w in manifest.contributions.writers} == {
        "ImageJ TIFF label image (calibrated)",
        "COCO detections (masks, boxes, scores)",
    }
    assert set(manifest.contributions.menus) == {
        "napari/layers/segment",
        "napari/layers/measure",
        "napari/layers/annotate",
    }
