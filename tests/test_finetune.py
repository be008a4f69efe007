"""Fine-tuning a detector on labelled frames, its forest, and the finetune CLI, on the tiny model."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_detection_qc.batch import cli
from napari_detection_qc.batch.run.quality import forest_name
from napari_detection_qc.engines import load_detector
from napari_detection_qc.engines.checkpoint import (
    DetectorLoadError,
    load_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)
from napari_detection_qc.engines.finetune import (
    LOSS_NAMES,
    FinetuneCancelled,
    FinetuneError,
    finetune,
    split_frames,
)
from napari_detection_qc.finetune.detector_forest import fit_detector_forest
from napari_detection_qc.finetune.outputs import read_labelled_frames, save_finetuned
from napari_detection_qc.io import InputError
from napari_detection_qc.quality.forest import QualityForest
from napari_detection_qc.quality.forest_choice import companion_forest_path, forest_for_detector
from napari_detection_qc.synthetic import make_frame
from napari_detection_qc.synthetic.study_frames import frame_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frames(n, shape=(128, 128)):
    pairs = [make_frame(seed, shape, "clean") for seed in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="module")
def tuned(tiny_checkpoint, one_torch_thread):
    parent = load_detector(tiny_checkpoint, device="cpu")
    images, truth = frames(3)
    reports = []
    result = finetune(parent, images, truth, steps=3, device="cpu", progress=reports.append)
    return parent, result, reports


def weights_hash(detector):
    return state_dict_sha256(detector.model.state_dict())


def test_finetune_trains_a_copy_and_reports_every_step(tiny_checkpoint, tuned):
    parent, result, reports = tuned
    assert weights_hash(parent) == load_checkpoint(tiny_checkpoint)[0]["sha256"]  # parent untouched
    assert weights_hash(result.detector) != weights_hash(parent)
    assert [r.step for r in reports] == [1, 2, 3] and reports[-1].fraction == 1.0
    assert set(LOSS_NAMES) | {"loss_total"} <= set(reports[0].row)
    assert list(result.history["step"]) == [1, 2, 3]
    assert result.history["val_f1"].notna().iloc[-1]  # held-out metrics, at least at the end
    assert {"val_loss_total", "val_precision", "val_recall"} <= set(result.history.columns)


def test_provenance_header_and_threshold_travel_with_the_file(tuned, tmp_path):
    parent, result, _ = tuned
    provenance = result.header["finetune"]
    assert provenance["parent"] == {"name": parent.name, "weights_sha256": parent.weights_sha256}
    assert provenance["frames"] == 3 and provenance["steps"] == 3 and provenance["minutes"] >= 0
    assert len(provenance["validation_frames"]) == 1 and len(provenance["training_frames"]) == 2
    assert 0 <= provenance["validation_after"]["f1"] <= 1 and provenance["validation_before"] is not None
    assert provenance["score_threshold"] == result.score_threshold == result.header["score_threshold"]
    path = tmp_path / "tuned.pt"
    result.detector.save(path)
    loaded = load_detector(path, device="cpu")
    assert loaded.weights_sha256 == result.detector.weights_sha256
    assert loaded.score_threshold == result.score_threshold  # the model's own threshold by default
    assert load_detector(path, device="cpu", score_threshold=0.3).score_threshold == 0.3
    assert loaded.metadata()["weights_path"] == str(path.resolve())


def test_cancel_stops_within_a_step_and_keeps_the_parent(tiny_checkpoint):
    parent = load_detector(tiny_checkpoint, device="cpu")
    before = weights_hash(parent)
    images, truth = frames(2)
    steps = []
    with pytest.raises(FinetuneCancelled):
        finetune(
            parent,
            images,
            truth,
            steps=50,
            device="cpu",
            progress=lambda r: steps.append(r.step),
            cancelled=lambda: len(steps) >= 1,
        )
    assert steps == [1] and weights_hash(parent) == before


def test_one_labelled_frame_trains_without_validation_and_says_so(tiny_checkpoint):
    parent = load_detector(tiny_checkpoint, device="cpu")
    images, truth = frames(1)
    result = finetune(parent, images, truth, steps=1, device="cpu")
    assert result.validation_frames == [] and result.after is None and result.before is None
    assert result.score_threshold == parent.score_threshold
    assert "one labelled frame" in result.notes[0]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda im, gt: (im, gt[:1]), "2 frames but 1 ground-truth"),
        (lambda im, gt: (im, [g[:50] for g in gt]), "does not match"),
        (lambda im, gt: (im, [np.zeros_like(g) for g in gt]), "no objects"),
        (lambda im, gt: (im, [g.astype(np.int32) - 1 for g in gt]), "negative ids"),
        (lambda im, gt: (im, [g.astype(np.float32) for g in gt]), "integer label image"),
        (lambda im, gt: ([], []), "no labelled frames"),
    ],
)
def test_bad_input_gives_a_clear_error(tiny_checkpoint, change, message):
    parent = load_detector(tiny_checkpoint, device="cpu")
    images, truth = change(*frames(2))
    with pytest.raises(FinetuneError, match=message):
        finetune(parent, images, truth, steps=1, device="cpu")


def test_holes_in_the_ids_are_fine_and_splits_are_checked():
    train, held = split_frames(10, "auto", seed=0)
    assert len(held) == 1 and sorted(train + held) == list(range(10))
    assert split_frames(5, [4], seed=0) == ([0, 1, 2, 3], [4])
    with pytest.raises(FinetuneError, match="keep at least one"):
        split_frames(2, 2, seed=0)
    with pytest.raises(FinetuneError, match="not all among"):
        split_frames(2, [5], seed=0)


def test_out_of_memory_and_unknown_models_are_explained(tiny_checkpoint, monkeypatch, tmp_path):
    from napari_detection_qc.engines import finetune as module

    parent = load_detector(tiny_checkpoint, device="cpu")
    images, truth = frames(2)
    truth[0] = np.where(truth[0] > 0, truth[0] + 100, 0)  # gaps in the ids are fine

    def exhausted(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(module, "batch_losses", exhausted)
    with pytest.raises(FinetuneError, match="out of memory"):
        finetune(parent, images, truth, steps=1, device="cpu")
    with pytest.raises(FinetuneError, match="torchvision-engine"):
        finetune(object(), images, truth, steps=1)
    header, state = load_checkpoint(tiny_checkpoint)
    header["architecture"] = {**header["architecture"], "backbone": {"name": "vit_h"}}
    save_checkpoint(tmp_path / "odd.pt", header, state)
    with pytest.raises(DetectorLoadError, match="unknown backbone"):
        load_detector(tmp_path / "odd.pt", device="cpu")


def test_forest_for_the_new_detector_is_saved_beside_it_and_found_by_auto(tuned, tmp_path):
    _, result, _ = tuned
    images, truth = frames(3)
    seen = []
    forest = fit_detector_forest(
        result.detector,
        images,
        truth,
        frames_per_domain=1,
        progress=lambda done, total, what: seen.append((done, total)),
    )
    total = len(frame_plan(1)) + 3  # one study frame per domain, then the 3 labelled frames
    assert seen[-1] == (total, total) and forest.n_training == total
    assert forest.uses_novelty and forest.training_embeddings.shape[0] == total  # the bundled forest's check
    assert forest.detector["weights_sha256"] == result.detector.weights_sha256
    model = tmp_path / "model.pt"
    written = save_finetuned(result, forest, model)
    assert (
        companion_forest_path(model) == tmp_path / "model.forest.skops"
        and written[1] == tmp_path / "model.forest.skops"
    )
    assert all(p.is_file() for p in written)
    meta = load_detector(model, device="cpu").metadata()
    assert forest_for_detector(meta) == str(tmp_path / "model.forest.skops") == forest_name("auto", meta)
    assert forest_name("default", meta) == "default"
    assert QualityForest.load(forest_for_detector(meta)).detector_mismatch(meta) is None
    assert forest_for_detector({**meta, "weights_path": str(tmp_path / "other.pt")}) == "default"


def test_save_refuses_to_overwrite_the_parent(tuned, tiny_checkpoint, tmp_path):
    _, result, _ = tuned
    parent_copy = tmp_path / "parent.pt"
    parent_copy.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(InputError, match="holds the parent model"):
        save_finetuned(result, None, parent_copy)
    assert parent_copy.read_bytes() == tiny_checkpoint.read_bytes()


def test_cli_finetune_end_to_end(tiny_checkpoint, tmp_path):
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    images, truth = frames(2)
    for i, (image, labels) in enumerate(zip(images, truth)):
        tifffile.imwrite(tmp_path / "images" / f"f{i}.tif", image.astype(np.uint8))
        tifffile.imwrite(tmp_path / "labels" / f"f{i}.tif", labels)
    out = tmp_path / "out" / "model.pt"
    code = cli.main(
        [
            "finetune",
            str(tmp_path / "images"),
            "--ground-truth",
            str(tmp_path / "labels"),
            "--out",
            str(out),
            "--model",
            str(tiny_checkpoint),
            "--steps",
            "2",
            "--synthetic-frames",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    for name in ("model.pt", "model.forest.skops", "model.curves.csv", "model.curves.png"):
        assert (out.parent / name).is_file(), name
    curves = pd.read_csv(out.parent / "model.curves.csv")
    assert list(curves["step"]) == [1, 2] and "loss_mask" in curves
    assert (
        cli.main(
            [
                "finetune",
                str(tmp_path / "images"),
                "--ground-truth",
                str(tmp_path / "nowhere"),
                "--out",
                str(out),
                "--steps",
                "1",
            ]
        )
        == cli.EXIT_ERROR
    )


def test_label_folder_must_name_every_input(tmp_path):
    import tifffile

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.zeros((2, 16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "labels" / "a.tif", np.ones((2, 16, 16), np.uint16))
    labelled = read_labelled_frames(tmp_path / "images", tmp_path / "labels")
    assert labelled.names == ["a#0", "a#1"] and labelled.truths[1].shape == (16, 16)
    tifffile.imwrite(tmp_path / "images" / "b.tif", np.zeros((16, 16), np.uint8))
    with pytest.raises(InputError, match="no label image named b"):
        read_labelled_frames(tmp_path / "images", tmp_path / "labels")


def test_cli_finetune_from_coco_with_boxes_only(tiny_checkpoint, tmp_path, capsys):
    """COCO annotations as CVAT and Label Studio export them, boxes only: the frames train with the
    ellipse inscribed in each box as its mask, and the run says so."""
    import json

    import tifffile

    (tmp_path / "images").mkdir()
    images, truth = frames(2)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "loop"}]}
    for i, (image, labels) in enumerate(zip(images, truth)):
        tifffile.imwrite(tmp_path / "images" / f"f{i}.tif", image.astype(np.uint8))
        coco["images"].append({"id": i + 1, "file_name": f"f{i}.tif", "height": 128, "width": 128})
        for label in range(1, int(labels.max()) + 1):
            ys, xs = np.nonzero(labels == label)
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                }
            )
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    labelled = read_labelled_frames(tmp_path / "images", tmp_path / "boxes.json")
    assert labelled.names == ["f0", "f1"]
    first = labelled.truths[0]
    box = coco["annotations"][0]["bbox"]
    mask = first == 1
    assert mask.sum() < box[2] * box[3]  # an ellipse, not the whole box
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == pytest.approx(
        (box[0], box[1], box[0] + box[2] - 1, box[1] + box[3] - 1), abs=1
    )  # touching the box's sides
    assert "box-only" in labelled.notes[0] and "ellipse" in labelled.notes[0]
    out = tmp_path / "model.pt"
    code = cli.main(
        [
            "finetune",
            str(tmp_path / "images"),
            "--ground-truth",
            str(tmp_path / "boxes.json"),
            "--out",
            str(out),
            "--model",
            str(tiny_checkpoint),
            "--steps",
            "2",
            "--synthetic-frames",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0 and out.is_file()
    assert "ellipse inscribed" in capsys.readouterr().err  # messages go to stderr
    coco["images"][1]["file_name"] = "other.tif"  # annotations of an image that is not an input
    (tmp_path / "boxes.json").write_text(json.dumps(coco))
    assert (
        cli.main(
            [
                "finetune",
                str(tmp_path / "images"),
                "--ground-truth",
                str(tmp_path / "boxes.json"),
                "--out",
                str(out),
                "--steps",
                "1",
            ]
        )
        == cli.EXIT_ERROR
    )
    assert "no image named f1.tif" in capsys.readouterr().err


def test_detectron2_weights_imported_into_torchvision_fine_tune(tmp_path):
    """detectron2 weights (no detectron2 installed) fine-tune at their own resize rule and save as
    a torchvision-engine checkpoint."""
    import copy

    from test_engines import as_detectron2_state

    from napari_detection_qc.engines.detectron2_engine import detectron2_available
    from napari_detection_qc.engines.torchvision_maskrcnn import PAPER_R50_FPN, build_maskrcnn

    if detectron2_available():
        pytest.skip("detectron2 is installed: its weights run on detectron2, which is not fine-tuned here")
    arch = copy.deepcopy(PAPER_R50_FPN)
    arch["backbone"] = {"name": "resnet18", "stride_in_1x1": False, "norm": "frozen_bn"}
    arch["fpn_channels"] = 16
    arch["roi"].update(box_head_dim=32, mask_head_widths=[16, 16])
    torch.manual_seed(1)
    torch.save(
        {"model": as_detectron2_state(build_maskrcnn(arch).state_dict())}, tmp_path / "model_final.pth"
    )
    (tmp_path / "config.yaml").write_text(
        "MODEL:\n  RESNETS: {DEPTH: 18, STRIDE_IN_1X1: false, RES2_OUT_CHANNELS: 64}\n  FPN: {OUT_CHANNELS: 16}\n"
        "  ROI_BOX_HEAD: {FC_DIM: 32}\n  ROI_MASK_HEAD: {CONV_DIM: 16, NUM_CONV: 2}\n"
        "INPUT: {MIN_SIZE_TEST: 160, MAX_SIZE_TEST: 200}\n"
    )
    parent = load_detector((tmp_path / "config.yaml", tmp_path / "model_final.pth"), device="cpu")
    images, truth = frames(2)
    result = finetune(parent, [im.astype(np.uint8) for im in images], truth, steps=1, device="cpu")
    assert weights_hash(result.detector) != weights_hash(parent)
    assert result.detector.architecture["resize"]["shortest_edge"] == 160  # inference keeps its rule
    result.detector.save(tmp_path / "tuned.pt")
    assert load_detector(tmp_path / "tuned.pt", device="cpu").engine == "torchvision"


def test_models_with_an_object_size_rule_train_at_the_scale_inference_uses(tmp_path):
    from conftest import TINY_ARCHITECTURE, TINY_NORMALISATION

    from napari_detection_qc.engines.finetune import prepare
    from napari_detection_qc.engines.torchvision_maskrcnn import (
        build_maskrcnn,
        new_checkpoint_header,
        save_model,
    )
    from napari_detection_qc.engines.training import typical_diameter

    rule = {"target_px": 22.0, "min_factor": 0.25, "max_factor": 1.5}
    normalisation = {**TINY_NORMALISATION, "intensity": "robust", "object_size": rule}
    torch.manual_seed(0)
    header = new_checkpoint_header(
        TINY_ARCHITECTURE, name="tiny-sized", normalisation=normalisation, training="-"
    )
    save_model(tmp_path / "sized.pt", build_maskrcnn(TINY_ARCHITECTURE).eval(), header)
    parent = load_detector(tmp_path / "sized.pt", device="cpu")
    images, truth = frames(2, shape=(160, 160))
    frame = prepare(parent, images[0], truth[0].astype(np.int64))
    factor = parent.scale_rule.factor_for(typical_diameter(truth[0]))
    assert frame.image.shape == tuple(round(s * factor) for s in images[0].shape) and factor != 1
    result = finetune(parent, images, truth, steps=1, device="cpu")
    assert result.detector.scale_rule == parent.scale_rule and result.history["val_f1"].notna().all()


def test_a_moved_model_file_still_owns_its_stores():
    """``weights_path`` finds the forest beside the weights; the weights hash is the identity."""
    from napari_detection_qc.batch.store.planning import same_detector

    here = {"detector": "tuned", "weights_sha256": "ab", "weights_path": "/old/tuned.pt"}
    assert same_detector(here, {**here, "weights_path": "/new/tuned.pt"})
    assert not same_detector(here, {**here, "weights_sha256": "cd"})
