"""Object size, resampling, tiling and robust intensity: results come back on the frame's own
pixel grid, objects on tile seams are kept exactly once, and odd intensities do not matter."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_detection_qc.engines.base import Detector, parse_object_size
from napari_detection_qc.engines.boxmasks import BoxMasks
from napari_detection_qc.engines.cpu_parallel import MAX_WORKERS, cpu_workers, map_on_cores
from napari_detection_qc.engines.intensity import ROBUST_CENTRE, scale_to_255
from napari_detection_qc.engines.scaling import (
    ScaleRule,
    ladder_detections,
    resample,
    rung_evidence,
    size_from_ladder,
)
from napari_detection_qc.engines.tiling import OVERLAP_PX, TILE_PX, detect_in_tiles, tile_spans

ROBUST = {"intensity": "robust"}


def estimate_object_size(image, detect_boxes, rule):
    """What a scale-aware detector's automatic size does, with a stand-in model."""
    return size_from_ladder(ladder_detections(image, detect_boxes, rule), rule)


def threshold_boxes(images, cores=None):
    """A stand-in model: every bright connected blob is a detection with score 0.9 and a full mask."""
    results = []
    for image in images:
        labels, count = ndimage.label(image > 200)  # between matrix (128) and squares (255)
        slices = ndimage.find_objects(labels)
        boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices], float).reshape(
            -1, 4
        )
        results.append(BoxMasks(boxes, np.full(count, 0.9), torch.ones((count, 28, 28))))
    return results


class ThresholdDetector(Detector):
    engine = "test"

    def __init__(self, rule):
        super().__init__(name="threshold", weights_sha256="0" * 64, normalisation=ROBUST, device="cpu")
        self.scale_rule = rule
        self.seen_shapes = []

    def _detect(self, images):
        raise AssertionError("scale-aware detectors use _detect_boxes")

    def _detect_boxes(self, images, min_score=None, masks=True, cores=None):
        self.seen_shapes += [image.shape for image in images]
        return threshold_boxes(images)


def squares_frame(shape, side, spacing, seed=0):
    """Bright squares on a noisy matrix, one straddling every tile seam region; returns frame and boxes."""
    rng = np.random.default_rng(seed)
    frame = rng.normal(100, 5, shape).astype(np.float32)
    boxes = []
    for y in range(spacing // 2, shape[0] - side, spacing):
        for x in range(spacing // 3, shape[1] - side, spacing):
            frame[y : y + side, x : x + side] = 250
            boxes.append([y, x, y + side, x + side])
    return frame, np.array(boxes, float)


@pytest.mark.parametrize("length", [100, 1024, 1025, 3000, 4096, 6144])
def test_tile_cores_partition_the_axis(length):
    spans = tile_spans(length)
    cores = [(s[2], s[3]) for s in spans]
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))
    assert len({s[1] - s[0] for s in spans}) == 1 and spans[0][1] - spans[0][0] <= min(length, TILE_PX)
    assert all(a[1] - b[0] >= OVERLAP_PX for a, b in zip(spans, spans[1:]))
    assert all(s[0] <= s[2] < s[3] <= s[1] for s in spans)


def test_tiles_shrink_to_the_overlap_they_need():
    spans = tile_spans(6144)  # 7 tiles either way; 1024 px ones would overlap by 171 px
    assert len(spans) == 7 and spans[0][1] - spans[0][0] == 992


def test_tiled_detection_keeps_every_object_once_with_exact_boxes():
    frame, truth = squares_frame((2500, 2300), side=40, spacing=97)
    found = detect_in_tiles(frame, threshold_boxes)
    assert len(found) == len(truth)
    order = np.lexsort((found.boxes[:, 1], found.boxes[:, 0]))
    np.testing.assert_allclose(found.boxes[order], truth[np.lexsort((truth[:, 1], truth[:, 0]))])


def test_tiles_on_several_workers_give_the_same_detections_in_the_same_order():
    frame, _ = squares_frame((2500, 2300), side=40, spacing=97)
    sequential = detect_in_tiles(frame, threshold_boxes)
    for workers, batch_size in ((2, 1), (3, 2)):
        parallel = detect_in_tiles(frame, threshold_boxes, batch_size=batch_size, workers=workers)
        np.testing.assert_array_equal(parallel.boxes, sequential.boxes)


def test_work_on_cores_keeps_order_and_the_callers_thread_count_even_when_it_fails():
    previous = torch.get_num_threads()
    assert map_on_cores(lambda item: (item, torch.get_num_threads()), range(5), workers=2) == [
        (i, 1) for i in range(5)
    ]
    assert torch.get_num_threads() == previous

    def fails(item):
        raise ValueError(f"bad item {item}")

    with pytest.raises(ValueError, match="bad item"):
        map_on_cores(fails, [1, 2], workers=2)
    assert torch.get_num_threads() == previous
    assert map_on_cores(str, [1, 2], workers=1) == ["1", "2"]


def test_workers_share_the_threads_and_are_capped_on_many_cores():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert cpu_workers(torch.device("cpu")) == MAX_WORKERS
        assert set(map_on_cores(lambda _: torch.get_num_threads(), range(8), workers=4)) == {2}
        assert cpu_workers(torch.device("cuda")) == 1
        torch.set_num_threads(1)
        assert cpu_workers(torch.device("cpu")) == 1
    finally:
        torch.set_num_threads(previous)


def test_predictions_come_back_on_the_native_grid():
    frame, truth = squares_frame((1800, 1500), side=44, spacing=120)
    detector = ThresholdDetector(ScaleRule(22, 1 / 16, 1.5))
    result = detector.predict(frame, object_size=44)
    assert max(shape[0] for shape in detector.seen_shapes) <= TILE_PX  # resampled by 0.5: 900 px, one tile
    assert result.labels.shape == frame.shape
    assert result.count == len(truth)
    nearest = np.abs(result.boxes[:, None, :] - truth[None, :, :]).max(axis=2).min(axis=0)
    assert nearest.max() <= 2.5  # every true box has a detection within 2.5 px on every side
    covered = np.isin(result.labels, np.arange(1, result.count + 1))
    assert abs(covered.sum() - len(truth) * 44**2) < 0.1 * len(truth) * 44**2


def test_auto_object_size_finds_the_squares_size():
    frame, _ = squares_frame((1200, 1200), side=30, spacing=70)
    image = scale_to_255(frame, ROBUST)
    size = estimate_object_size(image, threshold_boxes, ScaleRule(22, 1 / 16, 1.5))
    assert size == pytest.approx(30, rel=0.1)
    detector = ThresholdDetector(ScaleRule(22, 1 / 16, 1.5))
    detector.predict(frame)
    assert detector.last_object_sizes[0] == pytest.approx(30, rel=0.1)


def few_squares_frame(big_side, small_corners, small_side=10):
    """A 512 px noisy matrix with two bright ``big_side`` squares and small squares at ``small_corners``."""
    frame = np.random.default_rng(0).normal(100, 5, (512, 512)).astype(np.float32)
    for y, x in [(10, 10), (512 - 10 - big_side, 512 - 10 - big_side)]:
        frame[y : y + big_side, x : x + big_side] = 250
    for y, x in small_corners:
        frame[y : y + small_side, x : x + small_side] = 250
    return scale_to_255(frame, ROBUST)


def test_auto_object_size_finds_objects_spanning_a_third_of_the_frame():
    image = few_squares_frame(200, [])
    assert estimate_object_size(image, threshold_boxes, ScaleRule(22, 1 / 16, 1.5)) == pytest.approx(
        200, rel=0.1
    )


def test_a_few_objects_filling_a_small_view_weigh_less_than_small_objects():
    """Two 200 px squares, comfortably sized only in views under 112 px, lose against four 10 px
    squares that a 384 px view sees, though their score x diameter per area is larger (as blotches
    of background would in a frame of small cavities)."""
    image = few_squares_frame(200, [(230, 230), (230, 270), (270, 230), (270, 270)])
    assert estimate_object_size(image, threshold_boxes, ScaleRule(22, 1 / 16, 1.5)) == pytest.approx(
        10, rel=0.1
    )


def test_the_rung_above_the_largest_factor_only_confirms():
    """4 px squares are comfortably sized only at twice the largest factor (12 px there, 6 px at
    1.5), where frames are never resampled: the rule finds no size."""
    frame, _ = squares_frame((600, 600), side=4, spacing=12)
    rule = ScaleRule(22, 1 / 16, 1.5)
    ladder = ladder_detections(scale_to_255(frame, ROBUST), threshold_boxes, rule)
    assert ladder[0][0] == 3.0
    assert size_from_ladder(ladder, rule) is None
    assert rung_evidence(ladder, rule) == []


def test_auto_object_size_is_none_when_nothing_is_found():
    flat = np.random.default_rng(0).normal(100, 5, (600, 600)).astype(np.float32)
    assert (
        estimate_object_size(scale_to_255(flat, ROBUST), threshold_boxes, ScaleRule(22, 1 / 16, 1.5)) is None
    )


def test_scale_rule_clips_the_factor():
    rule = ScaleRule(22, 1 / 16, 1.5)
    assert rule.factor_for(44) == 0.5
    assert rule.factor_for(2) == 1.5
    assert rule.factor_for(1000) == 1 / 16
    assert rule.factor_for(None) == 1.0
    with pytest.raises(ValueError, match="positive"):
        rule.factor_for(-3)


@pytest.mark.parametrize("value", ["big", -1, 0, float("nan"), [3]])
def test_bad_object_sizes_are_clear_errors(value):
    with pytest.raises(ValueError, match="object size"):
        parse_object_size(value)


def test_object_size_accepts_auto_and_numbers():
    assert parse_object_size("auto") is None and parse_object_size(None) is None
    assert parse_object_size("12.5") == 12.5


def test_resample_keeps_mean_and_shape():
    image = np.random.default_rng(0).uniform(0, 255, (301, 203)).astype(np.float32)
    small = resample(image, 0.5)
    assert small.shape == (150, 102)
    assert abs(small.mean() - image.mean()) < 1


def test_robust_intensity_ignores_dark_corners_hot_pixels_and_bit_depth():
    rng = np.random.default_rng(0)
    matrix = rng.normal(120, 10, (400, 400))
    with_artefacts = matrix.copy()
    with_artefacts[:120, :120] = 0  # a black corner (9% of the frame)
    with_artefacts[200, 200] = 1e6  # a hot pixel
    plain = scale_to_255(matrix.astype(np.float32), ROBUST)
    odd = scale_to_255(with_artefacts.astype(np.float32), ROBUST)
    body = (slice(200, 400), slice(0, 400))
    assert abs(np.median(plain) - ROBUST_CENTRE) < 1
    assert np.abs(plain[body] - odd[body]).mean() < 4  # the matrix keeps its grey levels
    as16 = (matrix * 37 + 5000).clip(0, 65535).astype(np.uint16)
    np.testing.assert_allclose(scale_to_255(as16, ROBUST), plain, atol=1.5)


def test_robust_intensity_of_a_constant_frame_is_none():
    assert scale_to_255(np.full((50, 50), 7, np.uint16), ROBUST) is None
    hot = np.zeros((50, 50), np.uint16)
    hot[3, 3] = 60000
    assert scale_to_255(hot, ROBUST) is not None


@pytest.fixture(scope="module")
def tiny_scaled_detector(tmp_path_factory, one_torch_thread):
    """A tiny random model whose header carries a trained object size (the bundled model's kind)."""
    from conftest import TINY_ARCHITECTURE

    from napari_detection_qc.engines import load_detector
    from napari_detection_qc.engines.torchvision_maskrcnn import (
        build_maskrcnn,
        new_checkpoint_header,
        save_model,
    )

    torch.manual_seed(0)
    normalisation = {
        "intensity": "robust",
        "channel_order": "gray3",
        "pixel_mean": [128.0] * 3,
        "pixel_std": [64.0] * 3,
        "object_size": ScaleRule(22, 1 / 16, 1.5).to_header(),
    }
    header = new_checkpoint_header(
        TINY_ARCHITECTURE, name="tiny-scaled", normalisation=normalisation, training="random"
    )
    path = tmp_path_factory.mktemp("scaled") / "tiny.pt"
    save_model(path, build_maskrcnn(TINY_ARCHITECTURE).eval(), header)
    return load_detector(path, device="cpu", score_threshold=0.0, max_detections=50)


def odd_frames():
    rng = np.random.default_rng(1)
    hot16 = rng.normal(3000, 40, (300, 260)).clip(0, 65535).astype(np.uint16)
    hot16[5, 5] = hot16[100, 7] = 65535
    rgba = rng.integers(0, 255, (120, 90, 4), dtype=np.uint8)
    return {
        "one pixel": np.array([[7]], np.uint8),
        "two pixels": np.array([[0, 255]], np.uint8),
        "one colour": np.full((64, 64), 9, np.uint8),
        "16-bit hot pixels": hot16,
        "RGBA": rgba,
        "non-square large": rng.normal(100, 20, (2672, 4008)).astype(np.float32),
    }


@pytest.mark.parametrize("name", list(odd_frames()))
def test_odd_frames_give_detections_on_their_own_grid(tiny_scaled_detector, name):
    frame = odd_frames()[name]
    result = tiny_scaled_detector.predict(frame, object_size=22 if name == "non-square large" else "auto")
    assert result.labels.shape == frame.shape[:2]
    assert np.all(result.boxes[:, [2, 3]] <= np.array(frame.shape[:2]))
    assert result.count <= 50


def test_nan_pixels_are_a_clear_error(tiny_scaled_detector):
    frame = np.ones((40, 40), np.float32)
    frame[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tiny_scaled_detector.predict(frame)
