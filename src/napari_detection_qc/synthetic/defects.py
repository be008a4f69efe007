"""Seeded TEM frames of defects other than cavities, with exact instance masks.

Why: users bring dislocation loops, black dots and precipitates, not only cavities. The bundled
cavity detector is not made for them, and its quality forest must say so (predict low or flag the
frame out of domain); fine-tuning must learn them. Both need frames of these defects whose ground
truth is exact, for development, tests and benchmarks.

Families (``DEFECT_FAMILIES``), each frame drawing its own knobs from its seed:

- ``"dislocation_loops"``: dark elliptical rings of varied inclination (an inclined circular loop
  projects to an ellipse, axis ratio up to 3), 15-150 px along the long axis; the ring's darkness
  varies round it in two lobes set by one diffraction vector per frame (small loops become dark
  "coffee beans"); on mottled backgrounds with bend contours, dislocation lines and sometimes
  tangles. A loop's mask is its filled ellipse out to the ring's outer edge.
- ``"black_dots"``: solid dark blobs 3-10 px across (no bright fringe), 60-400 per 512 x 512 field;
  the mask is the blob.
- ``"precipitates"``: rounded or faceted disks 10-60 px, darker or brighter than the matrix, flat
  (plates) or domed (spheres), with a thin halo of the opposite sign; the mask is the disk.

Everything but the defects is ``synthetic.frames``' machinery (matrix, distractor lines, detector
noise, scan artefacts, burnt-in scale bar and text) and ``synthetic.realistic``'s file formats
(8-bit, JPEG, 16-bit with offset and hot pixels); outlines and placement are those of the cavities
(``_draw_cavities``: faceted or elliptical outlines, spacing, overlap clean-up). Each defect's
contrast is rendered from the final label image, so a drawn defect is always exactly a labelled
one (no object the labels miss, none labelled that is not drawn).
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
from scipy import ndimage

from napari_detection_qc.synthetic.frames import (
    REFERENCE_AREA_PX,
    Domain,
    _burn_in_scale_bar,
    _burn_in_text,
    _clean_labels,
    _detector,
    _distractors,
    _draw_cavities,
    _line_artefacts,
    _matrix,
)
from napari_detection_qc.synthetic.realistic import _as_file, _file_format, _jsonable, _log_uniform, _per_area

__all__ = ["DEFECT_FAMILIES", "defect_frame", "make_defect_frame"]

DEFECT_FAMILIES: tuple[str, ...] = ("dislocation_loops", "black_dots", "precipitates")
"""Defect types other than cavities, for development, tests and the forest's out-of-domain checks."""

LOOP_DIAMETER_PX = (15.0, 150.0)
"""Long axis of a loop's ellipse (the ring's outer edge), px."""
DOT_DIAMETER_PX = (3.0, 10.0)
"""Largest extent of a black dot's mask, px (frame-edge dots may be cut shorter)."""
PRECIPITATE_DIAMETER_PX = (10.0, 60.0)
_MAX_LOOP_ASPECT = 3.0  # long / short axis: a circular loop inclined by up to ~70 degrees
_DOT_ELLIPTICITY = 0.2  # axis ratio of black dots up to 1.2


def _check_family(family: str) -> None:
    if family not in DEFECT_FAMILIES:
        raise ValueError(f"unknown defect family {family!r}; known: {list(DEFECT_FAMILIES)}")


def _background(rng, family: str, shape: tuple[int, int]) -> Domain:
    """The frame's matrix, clutter, noise and artefact knobs (``frames.Domain``), no cavities.

    Noise and texture stay below the defects' contrast (a defect nobody could see would teach a
    detector to hallucinate, as ``realistic._keep_cavities_visible`` says for cavities)."""
    area_scale = shape[0] * shape[1] / REFERENCE_AREA_PX
    loops = family == "dislocation_loops"
    return Domain(
        cavity_count=0,
        dose=None if rng.random() < 0.15 else _log_uniform(rng, 15, 200),
        read_noise=float(rng.uniform(0.005, 0.04)),
        blur_sigma=float(_log_uniform(rng, 0.3, 1.0)),
        # loops sit on mottled backgrounds crossed by bend contours and dislocation lines
        bend_contours=float(rng.uniform(0.2, 0.6)) if rng.random() < (0.85 if loops else 0.5) else 0.0,
        bend_width=_log_uniform(rng, 0.5, 3.0),
        mottle=float(rng.uniform(0.03, 0.08) if loops else rng.uniform(0.02, 0.06)),
        blotchiness=float(rng.uniform(0.05, 0.2)),
        blotch_px=_log_uniform(rng, 20.0, 150.0),
        dislocation_lines=_per_area((2, 8) if loops else (0, 3), area_scale),
        dislocation_loops=(0, 0),  # the labelled loops are this module's
        black_dots=(0, 0),  # the labelled dots are this module's
        tangles=_per_area((1, 2), area_scale) if loops and rng.random() < 0.3 else (0, 0),
        grain_boundary_probability=0.15,
        contrast=float(rng.uniform(0.8, 1.3)),
        brightness=float(rng.uniform(0.35, 0.6)),
        scan_banding=float(rng.uniform(0.0, 0.03)),
        scan_streaks=int(rng.integers(1, 10)) if rng.random() < 0.1 else 0,
        vertical_lines=int(rng.integers(1, 4)) if rng.random() < 0.1 else 0,
        burn_in=bool(rng.random() < 0.4),
        burn_in_text=bool(rng.random() < 0.2),
    )


def _outlines(rng, family: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Instance labels of the frame's defects (placed and outlined as ``frames`` places cavities),
    their nominal diameters and the knobs drawn."""
    area = shape[0] * shape[1]
    if family == "dislocation_loops":
        # ``_draw_cavity`` stretches a circle of diameter d to axes d sqrt(a) x d / sqrt(a), a the
        # axis ratio in [1, 1 + max_ellipticity]: the long axis stays within LOOP_DIAMETER_PX
        stretch = np.sqrt(_MAX_LOOP_ASPECT)
        if rng.random() < 0.5:  # many small loops, or a few large ones
            diameters = (LOOP_DIAMETER_PX[0], 45.0 / stretch)
            count = int(rng.uniform(15, 50) * area / REFERENCE_AREA_PX)
        else:
            diameters = (30.0 / stretch, LOOP_DIAMETER_PX[1] / stretch)
            count = int(rng.uniform(4, 14) * area / REFERENCE_AREA_PX)
        outline = Domain(
            cavity_count=count,
            diameter_px=diameters,
            facet_fraction=0.0,
            max_ellipticity=_MAX_LOOP_ASPECT - 1.0,
            min_separation=1.1,
        )
    elif family == "black_dots":
        stretch = np.sqrt(1.0 + _DOT_ELLIPTICITY)
        diameters = (DOT_DIAMETER_PX[0] * stretch, DOT_DIAMETER_PX[1] / stretch - 0.3)
        count = int(_log_uniform(rng, 60, 400) * area / REFERENCE_AREA_PX)
        outline = Domain(
            cavity_count=count,
            diameter_px=diameters,
            facet_fraction=0.0,
            max_ellipticity=_DOT_ELLIPTICITY,
            min_separation=1.3,
        )
    else:
        median = _log_uniform(rng, 16, 40)
        diameters = (
            max(PRECIPITATE_DIAMETER_PX[0], median / 1.6),
            min(PRECIPITATE_DIAMETER_PX[1], median * 1.5),
        )
        coverage = rng.uniform(0.03, 0.18)
        count = int(round(coverage * area / (np.pi / 4 * median**2)))
        outline = Domain(
            cavity_count=count,
            diameter_px=diameters,
            facet_fraction=float(rng.uniform(0.0, 1.0)),
            max_ellipticity=float(rng.uniform(0.05, 0.3)),
            min_separation=1.15,
        )
    _, labels, _, true_diameters = _draw_cavities(rng, shape, outline, area / REFERENCE_AREA_PX)
    knobs = {"diameter_range_px": list(diameters), "attempted": count}
    return labels, true_diameters, knobs


def _object_values(rng, n: int, low: float, high: float) -> np.ndarray:
    """One value per label id 1..n, index 0 (background) zero."""
    return np.concatenate([[0.0], rng.uniform(low, high, n)]).astype(np.float32)


def _loop_darkness(rng, labels: np.ndarray, knobs: dict) -> np.ndarray:
    """Darkness in [0, 1) of each loop's ring: the band of its mask within ``width`` px of the
    mask's edge, strongest in two lobes facing the frame's diffraction vector."""
    n = int(labels.max())
    width = float(rng.uniform(1.5, 4.0))
    g_angle = rng.uniform(0, np.pi)
    lobe_floor = float(rng.uniform(0.25, 1.0))  # 1: even rings; lower: two dark lobes
    strength = _object_values(rng, n, 0.7, 1.0)
    interior = float(rng.uniform(0.0, 0.12)) if rng.random() < 0.3 else 0.0  # faulted loops' faint fill
    knobs.update(ring_width_px=width, lobe_floor=lobe_floor, interior_darkness=interior)
    ring = np.zeros(labels.shape, dtype=np.float32)
    for label_id, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        mine = np.pad(labels[window] == label_id, 1)
        inside = ndimage.distance_transform_edt(mine)[1:-1, 1:-1]
        mine = mine[1:-1, 1:-1]
        rows, cols = np.nonzero(mine)
        angle = np.arctan2(rows - rows.mean(), cols - cols.mean())
        lobes = lobe_floor + (1 - lobe_floor) * np.cos(angle - g_angle) ** 2
        band = np.where(inside[rows, cols] <= width, lobes, interior)
        ring[window][rows, cols] += strength[label_id] * band
    return 1.0 - np.exp(np.float32(-2.0) * ndimage.gaussian_filter(ring, 0.7))


def _dot_darkness(rng, labels: np.ndarray, knobs: dict) -> np.ndarray:
    """Darkness of solid black dots: each mask filled, softened by a sub-pixel blur, no fringe."""
    strength = _object_values(rng, int(labels.max()), 0.45, 0.85)
    sigma = float(rng.uniform(0.5, 0.8))
    knobs.update(dot_blur_px=sigma)
    return ndimage.gaussian_filter(strength[labels], sigma)


def _precipitate_contrast(rng, labels: np.ndarray, knobs: dict) -> np.ndarray:
    """Relative intensity change of precipitates: interior darker (or brighter) than the matrix,
    flat or domed, and a thin halo of the opposite sign round each."""
    n = int(labels.max())
    sign = -1.0 if rng.random() < 0.7 else 1.0  # mostly darker (denser, diffracting) than the matrix
    interior = sign * _object_values(rng, n, 0.2, 0.5)
    halo = -0.5 * interior * float(rng.uniform(0.3, 1.0))
    halo_px = float(rng.uniform(1.0, 2.5))
    domed = rng.random() < 0.5
    knobs.update(sign=sign, halo_px=halo_px, domed=bool(domed))
    depth = ndimage.distance_transform_edt(labels > 0)
    if domed:  # a sphere's projected thickness: deepest at the centre
        deepest = ndimage.maximum(depth, labels, np.arange(1, n + 1)) if n else np.zeros(0)
        relative = depth / np.concatenate([[1.0], np.maximum(deepest, 1.0)])[labels]
        profile = np.float32(0.5) + np.float32(0.5) * np.sqrt(np.clip(relative, 0, 1))
    else:
        profile = np.ones(labels.shape, dtype=np.float32)
    contrast = interior[labels] * profile
    outside, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    nearest_id = labels[nearest[0], nearest[1]]
    contrast += np.where(labels == 0, halo[nearest_id] * np.exp(-((outside / halo_px) ** 2)), 0)
    return ndimage.gaussian_filter(contrast.astype(np.float32), 0.6)


def _burn_in(rng, image, labels, diameters, domain):
    """Burn in the scale bar and text (in place) and unlabel what they cover: a defect under a
    white bar is not there to find; one mostly covered is dropped (``_clean_labels``' rule)."""
    before = image.copy()
    if domain.burn_in:
        _burn_in_scale_bar(rng, image)
    if domain.burn_in_text:
        _burn_in_text(rng, image)
    covered = image != before
    if not labels[covered].any():
        return labels, diameters
    drawn_area = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    labels[covered] = 0
    labels, kept = _clean_labels(labels, drawn_area)
    return labels, diameters[kept - 1]


def make_defect_frame(
    seed: int, family: str = "dislocation_loops", shape: tuple[int, int] = (512, 512)
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One frame of a defect family: ``(image, labels, info)``.

    image: uint8 or uint16 (Y, X) as a PNG/JPEG or 16-bit TIFF would hold it; labels: uint16
    instance image, ids 1..N contiguous, each one connected component, 0 background; info: the
    knobs drawn (JSON-serialisable) with ``"family"``, ``"seed"``, ``"shape"``, ``"n_objects"`` and
    ``"diameter_px"`` (median nominal diameter of the labelled defects, None without any).
    Deterministic in ``(seed, family, shape)``.
    """
    _check_family(family)
    if len(shape) != 2 or min(int(side) for side in shape) < 8:
        raise ValueError(f"shape must be (Y, X) with both sides >= 8, got {shape}")
    shape = (int(shape[0]), int(shape[1]))
    knob_seed, frame_seed, file_seed = np.random.SeedSequence([seed, zlib.crc32(family.encode())]).spawn(3)
    knob_rng, rng = np.random.default_rng(knob_seed), np.random.default_rng(frame_seed)
    domain = _background(knob_rng, family, shape)
    file_format = _file_format(knob_rng, family)

    labels, diameters, knobs = _outlines(rng, family, shape)
    intensity = _matrix(rng, shape, domain)
    if family == "dislocation_loops":
        intensity *= 1.0 - np.float32(rng.uniform(0.35, 0.6)) * _loop_darkness(rng, labels, knobs)
    elif family == "black_dots":
        intensity *= 1.0 - _dot_darkness(rng, labels, knobs)
    else:
        intensity *= 1.0 + _precipitate_contrast(rng, labels, knobs)
    area_scale = shape[0] * shape[1] / REFERENCE_AREA_PX
    intensity *= 1.0 - np.float32(0.5) * _distractors(rng, shape, domain, area_scale)
    intensity = _detector(rng, intensity, domain)
    if domain.scan_streaks or domain.vertical_lines:
        _line_artefacts(rng, intensity, replace(domain, moire=0.0))
    image = np.clip(255.0 * domain.brightness * (1.0 + domain.contrast * (intensity - 1.0)), 0.0, 255.0)
    if domain.burn_in or domain.burn_in_text:
        labels, diameters = _burn_in(rng, image, labels, diameters, domain)
    pixels = _as_file(np.random.default_rng(file_seed), image.astype(np.float32), file_format)
    info = {
        "family": family,
        "seed": int(seed),
        "shape": list(shape),
        "n_objects": int(labels.max()),
        "diameter_px": float(np.median(diameters)) if len(diameters) else None,
        **knobs,
        **file_format,
    }
    return pixels, labels, _jsonable(info)


def defect_frame(
    family: str, seed: int, shape: tuple[int, int] = (512, 512)
) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of frame ``seed`` of a defect family (``make_defect_frame`` without info)."""
    image, labels, _ = make_defect_frame(seed, family, shape)
    return image, labels
