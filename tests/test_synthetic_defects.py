"""The synthetic defect families (``synthetic.defects``): dislocation loops, black dots and
precipitates, with masks that are the drawn objects. Fast (a few seconds): frames are 512 px or less."""

import numpy as np
import pytest
from scipy import ndimage

from napari_detection_qc.synthetic import DEFECT_FAMILIES, defect_frame, make_defect_frame

SEEDS = (0, 1, 2, 3)


def contrast_bands(image, labels, inner_px, outside_px):
    """Per labelled object (not touching the frame edge): the median of the image in its mask's
    outer band (``inner_px`` deep), and in the annulus ``outside_px`` = (near, far) px outside it
    whose nearest object it is; plus the objects' ids."""
    image = image.astype(np.float64)
    inside_depth = ndimage.distance_transform_edt(np.pad(labels > 0, 1))[1:-1, 1:-1]
    outside_distance, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    nearest_id = labels[nearest[0], nearest[1]]
    band = np.where((labels > 0) & (inside_depth <= inner_px), labels, 0)
    near, far = outside_px
    annulus = np.where((labels == 0) & (outside_distance > near) & (outside_distance <= far), nearest_id, 0)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    ids = np.setdiff1d(np.arange(1, labels.max() + 1), edge)
    ids = ids[np.isin(ids, np.unique(annulus))]
    return (
        np.asarray(ndimage.median(image, band, ids)),
        np.asarray(ndimage.median(image, annulus, ids)),
        ids,
    )


def extents(labels):
    """(height, width) of each object's bounding box and whether it touches the frame edge."""
    rows = []
    for window in ndimage.find_objects(labels):
        touches = window[0].start == 0 or window[1].start == 0
        touches |= window[0].stop == labels.shape[0] or window[1].stop == labels.shape[1]
        rows.append((window[0].stop - window[0].start, window[1].stop - window[1].start, touches))
    return np.array(rows, dtype=int).reshape(-1, 3)


@pytest.mark.parametrize("family", DEFECT_FAMILIES)
def test_frames_are_files_with_exact_instance_labels(family):
    for seed in SEEDS[:2]:
        image, labels, info = make_defect_frame(seed, family)
        assert image.shape == labels.shape == (512, 512)
        assert image.dtype in (np.uint8, np.uint16)
        assert labels.dtype == np.uint16
        n = int(labels.max())
        assert n == info["n_objects"] > 0
        assert set(np.unique(labels)) == set(range(n + 1))  # ids 1..N contiguous
        for label_id, window in enumerate(ndimage.find_objects(labels), start=1):
            assert ndimage.label(labels[window] == label_id)[1] == 1  # one connected piece each
        assert info["family"] == family and info["shape"] == [512, 512]
        assert image.std() > 0


@pytest.mark.parametrize("family", DEFECT_FAMILIES)
def test_frames_are_deterministic_per_seed_family_and_shape(family):
    first = defect_frame(family, 5, (200, 300))
    again = defect_frame(family, 5, (200, 300))
    assert first[0].shape == (200, 300)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other = defect_frame(family, 6, (200, 300))
    assert not np.array_equal(first[1], other[1])
    # families do not share draws: the same seed of another family is another frame
    other_family = next(f for f in DEFECT_FAMILIES if f != family)
    assert not np.array_equal(first[1], defect_frame(other_family, 5, (200, 300))[1])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown defect family"):
        defect_frame("cavities", 0)
    with pytest.raises(ValueError, match="shape"):
        defect_frame("black_dots", 0, (4, 512))


def test_loops_are_dark_rings_of_varied_inclination_and_size():
    ring_minus_outside, aspects, long_axes = [], [], []
    for seed in SEEDS:
        image, labels, info = make_defect_frame(seed, "dislocation_loops")
        ring, outside, _ = contrast_bands(image, labels, inner_px=info["ring_width_px"], outside_px=(2, 6))
        ring_minus_outside.append((ring - outside) / max(float(np.median(outside)), 1.0))
        for height, width, touches in extents(labels):
            if not touches:
                long_axes.append(max(height, width))
        moments = [np.linalg.eigvalsh(np.cov(np.nonzero(labels == i))) for i in range(1, labels.max() + 1)]
        aspects += [np.sqrt(high / low) for low, high in moments if low > 0]
    relative = np.concatenate(ring_minus_outside)
    assert np.mean(relative < 0) > 0.9  # rings darker than the matrix right round them
    assert np.median(relative) < -0.1
    assert min(long_axes) >= 14 and max(long_axes) <= 152
    assert max(long_axes) >= 40  # small and large loops both occur
    assert max(aspects) > 2.0 and min(aspects) < 1.3  # edge-inclined and nearly face-on loops


def test_loop_ring_is_darker_than_its_own_interior():
    """A loop is a ring, not a disk: the mask's centre is lighter than its rim."""
    darker_rim = []
    for seed in SEEDS:
        image, labels, info = make_defect_frame(seed, "dislocation_loops")
        depth = ndimage.distance_transform_edt(np.pad(labels > 0, 1))[1:-1, 1:-1].astype(np.float64)
        for label_id in range(1, labels.max() + 1):
            mine = labels == label_id
            if depth[mine].max() < info["ring_width_px"] + 3:  # too thin to have an inside
                continue
            rim = image[mine & (depth <= info["ring_width_px"])]
            core = image[mine & (depth > info["ring_width_px"] + 2)]
            darker_rim.append(np.median(rim) < np.median(core))
    assert len(darker_rim) > 10 and np.mean(darker_rim) > 0.85


def test_black_dots_are_many_small_solid_dark_blobs_without_a_bright_fringe():
    counts = []
    for seed in SEEDS:
        image, labels, info = make_defect_frame(seed, "black_dots")
        counts.append(int(labels.max()))
        sizes = extents(labels)
        inside = sizes[sizes[:, 2] == 0]
        assert inside[:, :2].max() <= 10 and inside[:, :2].max(axis=1).min() >= 3
        dot, near, ids = contrast_bands(image, labels, inner_px=10, outside_px=(0, 2))
        _, far, far_ids = contrast_bands(image, labels, inner_px=10, outside_px=(4, 8))
        assert np.mean(dot < near) > 0.9  # solid and dark
        near = near[np.isin(ids, far_ids)]
        far = far[np.isin(far_ids, ids)]
        scale = max(float(np.median(far)), 1.0)
        assert np.median((near - far) / scale) < 0.02  # no bright fringe round them
    assert max(counts) >= 150  # often hundreds per frame


def test_precipitates_are_darker_or_brighter_disks_of_10_to_60_px():
    signs = set()
    for seed in range(8):  # seeds 6 and 7 draw brighter precipitates
        image, labels, info = make_defect_frame(seed, "precipitates")
        sizes = extents(labels)
        inside = sizes[sizes[:, 2] == 0]
        assert inside[:, :2].max() <= 70 and inside[:, :2].max(axis=1).min() >= 8
        core, outside, _ = contrast_bands(image, labels, inner_px=100, outside_px=(3, 8))
        sign = info["sign"]
        signs.add(sign)
        assert np.mean(sign * (core - outside) > 0) > 0.85
    assert signs == {-1.0, 1.0}


def test_masks_hold_every_drawn_defect():
    """Everything drawn is labelled: away from the masks the frame is as dark as a frame of the
    same background without defects (the darkest pixels of a dot frame all lie in dots)."""
    image, labels, _ = make_defect_frame(2, "black_dots")
    image = image.astype(np.float64)
    smooth = ndimage.uniform_filter(image, 3)
    darkest = smooth < np.percentile(smooth, 0.5)
    near_dot = ndimage.binary_dilation(labels > 0, iterations=2)
    assert np.mean(near_dot[darkest]) > 0.9
