"""Detector engines: the bundled model, input handling, output contract, checkpoint safety."""

from __future__ import annotations

import copy
import math
import pickle
import re

import numpy as np
import pytest
import torch
from conftest import TINY_ARCHITECTURE
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import roi_align

from napari_detection_qc.detections.matching import boxes_from_labels, match_frame
from napari_detection_qc.engines import (
    DEFAULT_MAX_DETECTIONS,
    DetectorLoadError,
    default_weights_path,
    load_checkpoint,
    load_detector,
)
from napari_detection_qc.engines.detectron2_checkpoint import import_detectron2_checkpoint
from napari_detection_qc.engines.roi_gather import gather_roi_align
from napari_detection_qc.engines.torchvision_maskrcnn import (
    COMPACT_FPN,
    PAPER_R50_FPN,
    FastMaskPredictor,
    TorchvisionDetector,
    build_maskrcnn,
    threaded_roi_align,
    to_model_batch,
)
from napari_detection_qc.synthetic import make_frame

FRAME_SHAPE = (320, 320)
TINY = TINY_ARCHITECTURE


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def detector():
    return load_detector("default", device="cpu")


@pytest.fixture(scope="module")
def frame():
    return make_frame(1_000_321, FRAME_SHAPE, "clean")


def assert_consistent(detections, shape, threshold=0.1):
    """The FrameDetections contract: id = box index + 1, masks inside their boxes, scores >= threshold."""
    assert detections.labels.shape == shape
    assert detections.boxes.shape == (detections.count, 4)
    assert np.all(detections.scores >= threshold) and np.all(detections.scores <= 1)
    assert detections.labels.max(initial=0) <= detections.count
    assert np.all(detections.boxes[:, :2] >= 0)
    assert np.all(detections.boxes[:, 2] <= shape[0]) and np.all(detections.boxes[:, 3] <= shape[1])
    for index, (y0, x0, y1, x1) in enumerate(detections.boxes):
        rows, cols = np.nonzero(detections.labels == index + 1)
        if len(rows):
            assert rows.min() >= math.floor(y0) and rows.max() < math.ceil(y1)
            assert cols.min() >= math.floor(x0) and cols.max() < math.ceil(x1)


def test_default_model_is_bundled_and_finds_cavities(detector, frame):
    image, truth = frame
    assert default_weights_path().stat().st_size < 20e6
    detections = detector.predict(image)
    assert_consistent(detections, FRAME_SHAPE)
    assert detections.count > 0
    assert len(np.unique(detections.labels)) > 1
    truth_boxes = boxes_from_labels(truth)[0]
    assert match_frame(detections.boxes, truth_boxes).recall >= 0.9  # at the paper's 0.1 threshold
    confident = detections.above(0.5)  # low-scoring false positives are what the threshold keeps
    assert match_frame(confident.boxes, truth_boxes).f1 > 0.8


def test_metadata_names_engine_weights_and_threshold(detector):
    meta = detector.metadata()
    assert meta["engine"] == "torchvision"
    # the bundled model carries its own threshold (bench_verifier.py --score-threshold); metadata reports it
    assert (
        meta["score_threshold"] == detector.header["score_threshold"] > 0.1
        and meta["max_detections"] == DEFAULT_MAX_DETECTIONS
    )
    assert re.fullmatch("[0-9a-f]{64}", meta["weights_sha256"])
    assert detector.device.type in ("cpu", "cuda")


@pytest.mark.parametrize(
    "convert",
    [
        lambda im: im.astype(np.uint8),
        lambda im: (im * 250).astype(np.uint16),
        lambda im: im.astype(np.float64) / 255.0,
        lambda im: im.astype(np.int32) - 1000,
        lambda im: np.dstack([im] * 3).astype(np.uint8),
        lambda im: np.dstack([im] * 3 + [np.full(im.shape, 255.0)]).astype(np.float32),
    ],
    ids=["uint8", "uint16", "float64", "int32", "rgb", "rgba"],
)
def test_every_pixel_type_gives_the_same_cavities(detector, frame, convert):
    image, truth = frame
    detections = detector.predict(convert(image))
    assert_consistent(detections, FRAME_SHAPE)
    reference = detector.predict(image)
    assert abs(detections.count - reference.count) <= max(2, 0.1 * reference.count)


@pytest.mark.parametrize(
    "image", [np.zeros((64, 80)), np.full((64, 80), 7, np.uint16)], ids=["zeros", "constant"]
)
def test_constant_frames_give_no_detections(detector, image):
    detections = detector.predict(image)
    assert detections.count == 0 and detections.labels.shape == (64, 80)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10)), "empty"),
        (np.zeros(100), "2-D"),
        (np.zeros((4, 32, 32)), "2-D"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
        (np.zeros((8, 8), dtype=bool), "integer or float"),
    ],
)
def test_invalid_frames_are_clear_errors(detector, image, message):
    with pytest.raises(ValueError, match=message):
        detector.predict(image)


def test_predict_many_streams_frames_in_order(detector, frame):
    image, _ = frame
    frames = (f for f in [image, np.zeros(FRAME_SHAPE), image[:200, :240]])
    results = detector.predict_many(frames)
    first = next(results)
    assert first.count == detector.predict(image).count
    rest = list(results)
    assert rest[0].count == 0 and rest[1].labels.shape == (200, 240)


def test_score_threshold_and_max_detections_apply(tiny_checkpoint, frame):
    image, _ = frame
    loose = load_detector(tiny_checkpoint, device="cpu", score_threshold=0.0, max_detections=50).predict(
        image
    )
    strict = load_detector(tiny_checkpoint, device="cpu", score_threshold=0.9).predict(image)
    assert loose.count <= 50
    assert np.all(strict.scores >= 0.9)
    assert_consistent(loose, FRAME_SHAPE, threshold=0.0)


def test_checkpoint_round_trip_gives_identical_predictions(tiny_checkpoint, tmp_path, frame):
    image, _ = frame
    original = TorchvisionDetector.from_checkpoint(tiny_checkpoint, device="cpu")
    header = original.save(tmp_path / "copy.pt", training="copied")
    reloaded = load_detector(tmp_path / "copy.pt", device="cpu")
    a, b = original.predict(image), reloaded.predict(image)
    assert a.count > 0
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.labels, b.labels)
    loaded_header, _ = load_checkpoint(tmp_path / "copy.pt")
    assert loaded_header == header
    assert loaded_header["architecture"] == TINY and loaded_header["training"] == "copied"
    assert {"format", "format_version", "sha256", "classes", "input", "architecture"} <= set(loaded_header)


def test_proposals_are_ranked_by_logit_even_where_sigmoid_saturates():
    """Two overlapping proposals with logits 20 and 30 (both sigmoid 1.0 in float32): NMS must keep
    the higher logit, as detectron2 does."""
    rpn = build_maskrcnn(TINY).eval().rpn
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [50.0, 50.0, 60.0, 60.0]]])
    logits = torch.tensor([[20.0], [30.0], [-2.0]])
    boxes, scores = rpn.filter_proposals(proposals, logits, [(100, 100)], [3])
    torch.testing.assert_close(boxes[0], proposals[0, [1, 2]])
    assert scores[0][0] == 1.0


def test_inference_decodes_only_top_anchors_with_the_same_proposals(detector, frame):
    """The RPN's inference path (rank, then decode the chosen anchors) equals torchvision's
    (decode all anchors, then rank) on the bundled model."""
    rpn = detector.model.rpn
    with torch.inference_mode():
        batch, _ = to_model_batch(
            [frame[0].astype(np.float32)], detector.architecture, detector.normalisation, "cpu"
        )
        features = detector.model.backbone(batch.tensors)
        fast, _ = rpn(batch, features)
        reference, _ = RegionProposalNetwork.forward(rpn, batch, features)
    assert len(fast[0]) > 50
    torch.testing.assert_close(fast[0], reference[0])


def test_hopeless_proposals_are_dropped_at_inference_only():
    """The architecture's ``score_thresh_test`` (0.01) removes a proposal of objectness 0.007
    before detection; training still samples from it."""
    rpn = build_maskrcnn(TINY).rpn
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]])
    logits = torch.tensor([[2.0], [-5.0]])
    assert len(rpn.eval().filter_proposals(proposals, logits, [(100, 100)], [2])[0][0]) == 1
    assert len(rpn.train().filter_proposals(proposals, logits, [(100, 100)], [2])[0][0]) == 2
    paper = build_maskrcnn(PAPER_R50_FPN).rpn.eval()  # detectron2 keeps every proposal
    assert len(paper.filter_proposals(proposals, logits, [(100, 100)], [2])[0][0]) == 2


@pytest.mark.parametrize("width", [64, 256])
def test_fast_mask_predictor_computes_torchvisions_numbers(width):
    torch.manual_seed(0)
    reference = MaskRCNNPredictor(width, width, 2)
    fast = FastMaskPredictor(width, width, 2)
    fast.load_state_dict(reference.state_dict())
    pooled = torch.randn(5, width, 14, 14)
    torch.testing.assert_close(fast(pooled), reference(pooled), atol=1e-5, rtol=1e-4)


def test_fast_mask_predictor_trains_on_a_batch_without_regions():
    """A training batch of crops without any cavity (hard negatives) reaches the mask head with no
    region; its backward must not fail (the pixel shuffle's does on an empty batch)."""
    fast = FastMaskPredictor(64, 64, 2)
    pooled = torch.randn(0, 64, 14, 14, requires_grad=True)
    out = fast(pooled)
    assert out.shape == (0, 2, 28, 28)
    (out.sum() * 0).backward()
    assert pooled.grad.shape == pooled.shape


def test_threaded_roi_align_computes_the_same_numbers():
    torch.manual_seed(0)
    feature = torch.randn(1, 8, 64, 64)
    corners = torch.rand(200, 2) * 230
    rois = torch.cat([torch.zeros(200, 1), corners, corners + torch.rand(200, 2) * 30 + 1], dim=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        split = threaded_roi_align(feature, rois, (14, 14), 0.25, 2)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(split, roi_align(feature, rois, (14, 14), 0.25, 2, aligned=True))


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (5, 9)])
def test_gather_roi_align_computes_torchvisions_numbers(aligned, output_size):
    """Boxes inside, across and beyond the map's border, sub-pixel ones, two images in a batch."""
    torch.manual_seed(0)
    feature = torch.randn(2, 8, 40, 52).contiguous(memory_format=torch.channels_last)
    corners = torch.rand(300, 2) * 240 - 20
    sizes = torch.cat([torch.rand(250, 2) * 60 + 1, torch.rand(50, 2) * 0.8])
    rois = torch.cat([torch.randint(0, 2, (300, 1)).float(), corners, corners + sizes], dim=1)
    expected = roi_align(feature, rois, output_size, 0.25, 2, aligned=aligned)
    torch.testing.assert_close(gather_roi_align(feature, rois, output_size, 0.25, 2, aligned), expected)
    contiguous = gather_roi_align(feature.contiguous(), rois, output_size, 0.25, 2, aligned)
    torch.testing.assert_close(contiguous, expected)
    assert gather_roi_align(feature, rois[:0], output_size, 0.25, 2).shape == (0, 8, *output_size)


def test_gather_roi_align_refuses_adaptive_sampling():
    with pytest.raises(ValueError, match="fixed sampling ratio"):
        gather_roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (7, 7), 1.0, 0)


def test_frames_detected_on_two_cores_get_exactly_the_detections_of_one(detector):
    """Tiles and the size estimate's views run concurrently on CPU (``cpu_parallel.py``): the
    same detections, masks and object size as one at a time, and the caller's thread count stays."""
    image = make_frame(1_000_323, (1300, 1200), "dense")[0]
    results = {}
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            at_own_size = detector.predict(image, object_size=22)  # factor 1: 2 x 2 tiles
            auto = detector.predict(image)
            results[threads] = (at_own_size, auto, detector.last_object_sizes[0])
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)
    assert results[1][2] == results[2][2]
    for one, two in zip(results[1][:2], results[2][:2]):
        assert one.count > 20
        np.testing.assert_array_equal(one.boxes, two.boxes)
        np.testing.assert_array_equal(one.scores, two.scores)
        np.testing.assert_array_equal(one.labels, two.labels)


def test_cores_keep_only_centred_detections_with_the_same_masks(detector):
    """Masks are computed only for detections a tile keeps, and equal those computed for all."""
    image = make_frame(1_000_322, (512, 512), "dense")[0].astype(np.float32)
    image = image / image.max() * 255
    everything = detector._detect_boxes([image])[0]
    core = (100, 400, 50, 300)
    kept = detector._detect_boxes([image], cores=[core])[0]
    centres = (everything.boxes[:, :2] + everything.boxes[:, 2:]) / 2
    inside = (centres[:, 0] >= 100) & (centres[:, 0] < 400) & (centres[:, 1] >= 50) & (centres[:, 1] < 300)
    assert 0 < inside.sum() < len(everything)
    np.testing.assert_allclose(kept.boxes, everything.boxes[inside], atol=1e-4)
    torch.testing.assert_close(
        kept.mask_probs, everything.mask_probs[torch.from_numpy(inside)], atol=1e-5, rtol=1e-4
    )


class RunsCode:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


def write_bad_files(tmp_path, tiny_checkpoint):
    good = tiny_checkpoint.read_bytes()
    header, state = load_checkpoint(tiny_checkpoint)
    tampered = {name: tensor.clone() for name, tensor in state.items()}
    tampered["roi_heads.box_predictor.cls_score.bias"] += 1
    files = {
        "random_bytes.pt": np.random.default_rng(0).bytes(4096),
        "truncated.pt": good[: len(good) // 2],
        "text.pt": b"not a model at all\n",
        "hostile_pickle.pt": pickle.dumps(RunsCode()),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    torch.save({"header": header, "state_dict": tampered}, tmp_path / "tampered.pt")
    torch.save(
        {"header": {**header, "format": "something-else"}, "state_dict": state}, tmp_path / "other_format.pt"
    )
    return [*files, "foreign.pt", "tampered.pt", "other_format.pt", "missing.pt"]


def test_bad_weight_files_give_a_clear_error(tmp_path, tiny_checkpoint):
    for name in write_bad_files(tmp_path, tiny_checkpoint):
        with pytest.raises(DetectorLoadError):
            load_detector(tmp_path / name, device="cpu")


def test_weights_that_do_not_fit_their_architecture_are_rejected(tmp_path, tiny_checkpoint):
    header, state = load_checkpoint(tiny_checkpoint)
    header = {k: v for k, v in header.items() if k not in ("sha256", "format", "format_version")}
    header["architecture"] = COMPACT_FPN
    from napari_detection_qc.engines.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "mismatch.pt", header, state)
    with pytest.raises(DetectorLoadError, match="do not fit"):
        load_detector(tmp_path / "mismatch.pt", device="cpu")


# -- detectron2 import -----------------------------------------------------------------------------
# An independent statement of detectron2's names, written from the torchvision side.
TO_DETECTRON2 = [
    (r"backbone\.body\.conv1\.weight", lambda m: "backbone.bottom_up.stem.conv1.weight"),
    (r"backbone\.body\.bn1\.(\w+)", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    (
        r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)",
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
    (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(\w+)", lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}"),
    (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(\w+)", lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}"),
    (r"rpn\.head\.conv\.0\.0\.(\w+)", lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
    (r"rpn\.head\.cls_logits\.(\w+)", lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}"),
    (r"rpn\.head\.bbox_pred\.(\w+)", lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}"),
    (r"roi_heads\.box_head\.fc6\.(\w+)", lambda m: f"roi_heads.box_head.fc1.{m[1]}"),
    (r"roi_heads\.box_head\.fc7\.(\w+)", lambda m: f"roi_heads.box_head.fc2.{m[1]}"),
    (
        r"roi_heads\.mask_head\.(\d)\.0\.(\w+)",
        lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}",
    ),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(\w+)", lambda m: f"roi_heads.mask_head.deconv.{m[1]}"),
    (r"roi_heads\.box_predictor\.cls_score\.(\w+)", lambda m: f"roi_heads.box_predictor.cls_score.{m[1]}"),
    (r"roi_heads\.box_predictor\.bbox_pred\.(\w+)", lambda m: f"roi_heads.box_predictor.bbox_pred.{m[1]}"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(\w+)", lambda m: f"roi_heads.mask_head.predictor.{m[1]}"),
]


def as_detectron2_state(state: dict) -> dict:
    """A torchvision one-class state dict under detectron2's names and class order."""
    d2_state = {}
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        renamed = [rename(m) for pattern, rename in TO_DETECTRON2 if (m := re.fullmatch(pattern, name))]
        assert len(renamed) == 1, f"no single detectron2 name for {name}"
        if "cls_score" in name:
            tensor = tensor[[1, 0]]  # detectron2: background last
        elif "bbox_pred" in name and name.startswith("roi_heads"):
            tensor = tensor[4:]  # detectron2: no background deltas
        elif "mask_fcn_logits" in name:
            tensor = tensor[1:]  # detectron2: no background mask
        d2_state[renamed[0]] = tensor
    return d2_state


def test_detectron2_checkpoint_import_maps_every_parameter(tmp_path, frame):
    """A torchvision model written out under detectron2's names and class order imports back exactly."""
    arch = copy.deepcopy(PAPER_R50_FPN)
    arch["backbone"] = {"name": "resnet18", "stride_in_1x1": False, "norm": "frozen_bn"}
    arch["fpn_channels"] = 16
    arch["roi"].update(box_head_dim=32, mask_head_widths=[16, 16])
    arch["resize"].update(shortest_edge=320, max_size=400)
    torch.manual_seed(1)
    model = build_maskrcnn(arch).eval()
    with torch.no_grad():  # background deltas and masks are never used; detectron2 has none
        model.roi_heads.box_predictor.bbox_pred.weight[:4] = 0
        model.roi_heads.box_predictor.bbox_pred.bias[:4] = 0
        model.roi_heads.mask_predictor.mask_fcn_logits.weight[:1] = 0
        model.roi_heads.mask_predictor.mask_fcn_logits.bias[:1] = 0
    state = model.state_dict()
    d2_state = as_detectron2_state(state)
    torch.save({"model": d2_state, "iteration": 9}, tmp_path / "model_final.pth")
    (tmp_path / "config.yaml").write_text(
        "MODEL:\n  RESNETS: {DEPTH: 18, STRIDE_IN_1X1: false, RES2_OUT_CHANNELS: 64}\n  FPN: {OUT_CHANNELS: 16}\n"
        "  ROI_BOX_HEAD: {FC_DIM: 32}\n  ROI_MASK_HEAD: {CONV_DIM: 16, NUM_CONV: 2}\n"
        "INPUT: {MIN_SIZE_TEST: 320, MAX_SIZE_TEST: 400}\n"
    )
    header, imported = import_detectron2_checkpoint(tmp_path / "model_final.pth", tmp_path / "config.yaml")
    assert header["architecture"]["anchor_sizes"] == [[4, 8, 16, 32, 64, 128, 256, 512]] * 5
    assert header["input"]["channel_order"] == "BGR" and header["input"]["intensity"] == "raw8"
    assert set(imported) == {name for name in state if not name.endswith("num_batches_tracked")}
    for name, tensor in imported.items():
        torch.testing.assert_close(tensor, state[name], msg=name)
    detector = load_detector((tmp_path / "config.yaml", tmp_path / "model_final.pth"), device="cpu")
    assert detector.engine in ("torchvision", "detectron2")
    assert_consistent(detector.predict(frame[0].astype(np.uint8)), FRAME_SHAPE)


def test_detectron2_file_that_is_not_a_maskrcnn_is_rejected(tmp_path):
    torch.save(
        {"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1), "head.x": torch.zeros(1)}},
        tmp_path / "odd.pth",
    )
    with pytest.raises(DetectorLoadError, match="unrecognised|lacks"):
        import_detectron2_checkpoint(tmp_path / "odd.pth")
    with pytest.raises(DetectorLoadError):
        load_detector(tmp_path / "absent.pth", device="cpu")
