"""The randomized realistic families: determinism, exact masks, file formats and each family's range."""

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage
from test_synthetic import interior_minus_surroundings

from napari_detection_qc.synthetic import (
    REALISTIC_FAMILIES,
    Domain,
    make_frame,
    make_realistic_frame,
    realistic_domain,
    realistic_shape,
)
from napari_detection_qc.synthetic.frames import _MIN_AREA_PX

SMALL = (160, 224)


def assert_label_rules(labels):
    """ids 1..N contiguous, each one connected component, none under the minimum area."""
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    for label_id, window in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[window] == label_id)[1] == 1, f"id {label_id} is fragmented"
    assert np.bincount(labels.ravel())[1:].min(initial=_MIN_AREA_PX) >= _MIN_AREA_PX


def test_public_family_names():
    assert REALISTIC_FAMILIES == (
        "realistic",
        "big",
        "tiny_dense",
        "overfocus_rings",
        "speckle_jpeg",
        "large_frames",
    )


@pytest.mark.parametrize("family", REALISTIC_FAMILIES)
def test_same_seed_same_frame_and_other_seeds_differ(family):
    image, labels, info = make_realistic_frame(5, family, SMALL)
    again_image, again_labels, again_info = make_realistic_frame(5, family, SMALL)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    assert info == again_info
    assert not np.array_equal(image, make_realistic_frame(6, family, SMALL)[0])


@pytest.mark.parametrize("family", REALISTIC_FAMILIES)
def test_masks_follow_the_label_rules_and_info_is_json(family):
    for seed in range(3):
        image, labels, info = make_realistic_frame(seed, family, SMALL)
        assert image.shape == labels.shape == SMALL
        assert image.dtype in (np.uint8, np.uint16) and labels.dtype in (np.uint16, np.uint32)
        assert_label_rules(labels)
        assert json.loads(json.dumps(info)) == info
        assert info["family"] == family and info["shape"] == list(SMALL)
        assert info["n_cavities"] == labels.max()
        assert (info["diameter_px"] is None) == (labels.max() == 0)


def test_both_bit_depths_occur_and_16_bit_frames_carry_offset_gain_and_hot_pixels():
    infos = {}
    for seed in range(30):
        image, _, info = make_realistic_frame(seed, "realistic", (64, 64))
        assert image.dtype == (np.uint8 if info["bit_depth"] == 8 else np.uint16)
        infos.setdefault(info["bit_depth"], []).append((image, info))
    assert set(infos) == {8, 16}
    for image, info in infos[16]:
        assert image.min() >= min(info["offset"], 65535)
        assert (image == 65535).sum() >= min(info["hot_pixels"], 1)
    assert any(info["jpeg_quality"] is not None for _, info in infos[8])


def test_some_realistic_frames_hold_no_cavity():
    empty = 0
    for seed in range(300):
        domain = realistic_domain(np.random.default_rng(seed), "realistic", (1024, 1024))
        empty += domain.cavity_count == 0
    assert 2 <= empty <= 30  # a few percent
    for seed in range(200):
        image, labels, info = make_realistic_frame(seed, "realistic", (64, 64))
        if info["domain"]["cavity_count"] == 0:
            assert not labels.any() and info["diameter_px"] is None and image.std() > 0
            return
    pytest.fail("no empty frame in 200 seeds")


def test_big_family_holds_60_to_300_px_cavities():
    for seed in range(4):
        _, labels, info = make_realistic_frame(seed, "big", (384, 384))
        assert labels.max() >= 1
        assert 60 <= info["diameter_px"] <= 300
        low, high = info["domain"]["diameter_px"]
        assert 60 <= low <= high <= 300 + 1e-9


def test_tiny_dense_family_holds_100_to_600_cavities_of_4_to_8_px_per_megapixel():
    for seed in range(4):
        _, labels, info = make_realistic_frame(seed, "tiny_dense", (384, 384))
        per_1024_squared = labels.max() / (384 * 384 / 1024**2)
        assert 90 <= per_1024_squared <= 600
        assert 4 <= info["diameter_px"] <= 8


def test_overfocus_rings_cavities_are_darker_than_their_surroundings_with_a_bright_ring():
    darker = []
    for seed in range(3):
        image, labels, info = make_realistic_frame(seed, "overfocus_rings", (256, 256))
        assert info["domain"]["focus"] == "over" and info["domain"]["ring_strength"] < 0
        darker.append(interior_minus_surroundings(image.astype(float), labels) < 0)
    assert np.mean(np.concatenate(darker)) > 0.8


def test_speckle_jpeg_family_is_512_px_8_bit_jpeg_with_coarse_speckle():
    for seed in range(3):
        image, _, info = make_realistic_frame(seed, "speckle_jpeg")
        assert image.shape == (512, 512) and image.dtype == np.uint8
        assert 30 <= info["jpeg_quality"] <= 60
        assert info["domain"]["speckle"] > 0


def test_drawn_frame_shapes_per_family():
    rng = np.random.default_rng(0)
    large = [realistic_shape(rng, "large_frames") for _ in range(40)]
    assert all(2048 <= max(shape) <= 4096 for shape in large)
    assert any(shape[0] != shape[1] for shape in large)
    assert (2672, 4008) in large
    usual = [realistic_shape(rng, "realistic") for _ in range(200)]
    assert all(min(shape) >= 512 and max(shape) <= 2048 for shape in usual if shape[0] == shape[1])
    assert np.mean([max(shape) <= 1024 for shape in usual]) > 0.7
    assert any(shape[0] != shape[1] for shape in usual) and any(max(shape) > 1024 for shape in usual)


def test_shape_none_draws_the_family_shape():
    image, labels, info = make_realistic_frame(0, "speckle_jpeg", None)
    assert image.shape == labels.shape == tuple(info["shape"]) == (512, 512)


def test_cavities_stay_visible_above_the_clutter():
    """Texture and noise are scaled so a cavity's contrast is at least the clutter's."""
    from napari_detection_qc.synthetic.realistic import _cavity_signal, _clutter

    for seed in range(20):
        for family in ("realistic", "speckle_jpeg", "tiny_dense"):
            domain = realistic_domain(np.random.default_rng(seed), family, (512, 512))
            if domain.cavity_count:
                median = float(np.sqrt(np.prod(domain.diameter_px)))
                assert _cavity_signal(domain, median) >= 0.9 * _clutter(domain)


def test_bad_family_and_bad_shape():
    with pytest.raises(ValueError, match="unknown realistic family 'nope'; known: .*tiny_dense"):
        make_realistic_frame(0, "nope")
    with pytest.raises(ValueError, match="unknown realistic family"):
        realistic_domain(np.random.default_rng(0), "Realistic")
    for shape in ((4, 64), (64,), (64, 64, 3)):
        with pytest.raises(ValueError, match="shape must be"):
            make_realistic_frame(0, "realistic", shape)


# --- the new Domain knobs, one at a time on the in-distribution domain ------------------------


def test_cavity_count_is_exact_and_overrides_the_per_area_range():
    _, labels = make_frame(0, (256, 256), Domain(cavity_count=3, diameter_px=(10.0, 12.0)))
    assert labels.max() == 3
    assert not make_frame(0, (256, 256), Domain(cavity_count=0))[1].any()


def test_bright_segments_and_tangles_add_clutter_but_no_labels():
    base = Domain(cavities_per_frame=(0, 0))
    plain, _ = make_frame(1, (256, 256), base)
    bright, bright_labels = make_frame(1, (256, 256), dataclasses.replace(base, bright_segments=(30, 30)))
    tangled, tangled_labels = make_frame(1, (256, 256), dataclasses.replace(base, tangles=(8, 8)))
    assert not bright_labels.any() and not tangled_labels.any()
    assert (bright > np.percentile(plain, 99.9)).sum() > 3 * (plain > np.percentile(plain, 99.9)).sum()
    assert (tangled < np.percentile(plain, 0.1)).sum() > 3 * (plain < np.percentile(plain, 0.1)).sum()


def test_interior_contrast_and_rings_change_the_cavities_as_named():
    # both sides of each comparison switch the shading on, so they draw the same cavities
    base = Domain(cavity_count=12, diameter_px=(20.0, 24.0), dose=None, read_noise=0.0, mottle=0.0)
    faint, labels = make_frame(2, (256, 256), dataclasses.replace(base, interior_contrast=0.05))
    bright, bright_labels = make_frame(2, (256, 256), dataclasses.replace(base, interior_contrast=0.8))
    np.testing.assert_array_equal(labels, bright_labels)
    assert labels.max() >= 8
    assert (
        np.mean(interior_minus_surroundings(bright, labels))
        > np.mean(interior_minus_surroundings(faint, labels)) + 20
    )

    over = dataclasses.replace(base, focus="over", ring_width_px=3.0)
    no_halo, labels = make_frame(2, (256, 256), dataclasses.replace(over, ring_strength=-0.01))
    halo, halo_labels = make_frame(2, (256, 256), dataclasses.replace(over, ring_strength=-0.8))
    np.testing.assert_array_equal(labels, halo_labels)
    ring = (ndimage.distance_transform_edt(labels == 0) <= 3) & (labels == 0)
    assert halo[ring].mean() > no_halo[ring].mean() + 10


def test_speckle_raises_high_frequency_texture():
    base = Domain(cavities_per_frame=(0, 0))
    plain, _ = make_frame(3, (256, 256), base)
    speckled, _ = make_frame(3, (256, 256), dataclasses.replace(base, speckle=0.3))

    def high_frequency_std(image):
        return (image - ndimage.gaussian_filter(image, 4.0)).std()

    assert high_frequency_std(speckled) > 2 * high_frequency_std(plain)


def test_new_knob_validation():
    with pytest.raises(ValueError, match="cavity_count"):
        Domain(cavity_count=-1)
    with pytest.raises(ValueError, match="rim_sigma_px"):
        Domain(rim_sigma_px=0.0)
    with pytest.raises(ValueError, match="tangles"):
        Domain(tangles=(3, 1))


def test_a_frame_without_cavities_has_the_same_knobs_and_no_cavity():
    """Hard negatives for training: the same drawn look, size and file format, no cavity."""
    seed = next(s for s in range(20) if make_realistic_frame(s, "realistic", SMALL)[2]["n_cavities"] > 0)
    image, labels, info = make_realistic_frame(seed, "realistic", SMALL)
    empty_image, empty_labels, empty_info = make_realistic_frame(
        seed, "realistic", SMALL, without_cavities=True
    )
    assert empty_labels.max() == 0 and empty_info["n_cavities"] == 0 and empty_info["diameter_px"] is None
    assert empty_image.shape == image.shape and empty_image.dtype == image.dtype
    knobs, empty_knobs = dict(info["domain"]), dict(empty_info["domain"])
    assert knobs.pop("cavity_count") > 0 and empty_knobs.pop("cavity_count") == 0
    assert knobs == empty_knobs and empty_info["bit_depth"] == info["bit_depth"]
