"""Randomized "realistic" TEM cavity frames: every knob drawn per frame, written as a file would hold it.

Why: a detector trained on one narrow synthetic look fails on real micrographs. Real
cavity images span 4-300 px cavities, under/over/near focus, crisp to haloed rims, blotchy and
cluttered backgrounds, speckle, JPEG blocks, scan artefacts, 8-bit and 16-bit files of 512-4096 px.
Each frame here draws its own ``Domain`` (the knobs of ``synthetic.frames``) and file format from
its seed; the named sub-families narrow the draw to one hard regime each.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import asdict, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_detection_qc.synthetic.frames import REFERENCE_AREA_PX, Domain, render_frame

__all__ = ["EMPTY_FRAME_FAMILIES", "REALISTIC_FAMILIES", "make_realistic_frame", "realistic_domain"]

REALISTIC_FAMILIES: tuple[str, ...] = (
    "realistic",
    "big",
    "tiny_dense",
    "overfocus_rings",
    "speckle_jpeg",
    "large_frames",
)
""""realistic" draws everything; the others narrow it to one regime (see ``realistic_domain``)."""

EMPTY_FRAME_FAMILIES: tuple[str, ...] = ("realistic", "overfocus_rings", "speckle_jpeg", "tiny_dense")
"""Families whose frames, rendered ``without_cavities``, are the default detector's hard negatives
in training and its frames-without-cavities benchmark (8-bit to 16-bit, 512-2048 px)."""

EMPTY_FRAME_PROBABILITY = 0.04
_CONTRAST_TO_CLUTTER = (1.0, 3.0)
"""Range of the drawn ratio of a cavity's RMS contrast to the frame's texture and noise."""
_PSF_NOISE_FACTOR = 0.47  # the detector's 0.6 px point spread keeps about this share of pixel noise
_CAVITY_LOOK = (
    "focus",
    "defocus",
    "facet_fraction",
    "truncated_square_fraction",
    "max_ellipticity",
    "rim_sigma_px",
    "ring_strength",
    "ring_width_px",
    "interior_contrast",
    "interior_shading",
    "blur_sigma",
)
_MAX_CAVITIES = 2000  # keeps placement and drawing bounded on the largest dense frames
_MAX_CAVITIES_PER_MPX = 700  # per 1024 x 1024: "several hundred" at most, as in real dense fields


def _check_family(family: str) -> None:
    if family not in REALISTIC_FAMILIES:
        raise ValueError(f"unknown realistic family {family!r}; known: {list(REALISTIC_FAMILIES)}")


def _log_uniform(rng, low, high):
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def realistic_shape(rng: np.random.Generator, family: str = "realistic") -> tuple[int, int]:
    """A frame shape (Y, X) as real micrographs come: mostly 512-1024, some large or non-square."""
    _check_family(family)
    if family == "speckle_jpeg":
        return (512, 512)
    if family == "large_frames":
        if rng.random() < 0.3:
            return (2672, 4008)
        long_side = int(rng.integers(2048, 4097))
        if rng.random() < 0.5:
            return (long_side, long_side)
        return (int(long_side / rng.uniform(1.2, 1.6)), long_side)
    if family == "big":
        side = int(rng.integers(768, 1537))
    elif family == "tiny_dense":
        side = int(rng.integers(512, 1025))
    else:
        choice = rng.random()
        side = int(rng.integers(512, 1025)) if choice < 0.85 else int(rng.integers(1024, 2049))
    if rng.random() < 0.25:
        short = int(side / rng.uniform(1.2, 1.6))
        return (short, side) if rng.random() < 0.8 else (side, short)
    return (side, side)


def _cavity_size(rng, family, shape):
    """Median diameter (px) and the factor between the largest and smallest cavity of the frame."""
    mix = rng.uniform(1.3, 3.0)
    if family == "big":
        return _log_uniform(rng, 60 * np.sqrt(mix), 300 / np.sqrt(mix)) if mix < 2.2 else 130.0, mix
    if family == "tiny_dense":
        return rng.uniform(5.0, 7.0), rng.uniform(1.2, 1.6)
    if family == "large_frames":
        return _log_uniform(rng, 8, 200), mix
    regime = rng.random()
    if regime < 0.15:
        return rng.uniform(4.5, 8.0), rng.uniform(1.2, 1.8)
    if regime < 0.5:
        return _log_uniform(rng, 8, 25), mix
    if regime < 0.8:
        return _log_uniform(rng, 25, 60), mix
    return _log_uniform(rng, 60, min(300, max(60, max(shape) / 3))), mix


def _cavity_count(rng, family, shape, median_diameter):
    """Cavities attempted: a covered share of the frame, or a dense field of tiny ones."""
    area = shape[0] * shape[1]
    empty = family != "big" and rng.random() < EMPTY_FRAME_PROBABILITY
    if empty and family != "tiny_dense":  # that family holds 100-600 per 1024 x 1024 by definition
        return 0
    if family == "tiny_dense" or median_diameter < 8.5 and rng.random() < 0.6:
        return int(rng.uniform(100, 600) * area / 1024**2)
    coverage = _log_uniform(rng, 0.02, 0.3)
    count = coverage * area / (np.pi / 4 * median_diameter**2)
    if family == "big":
        count = max(count, 1.0)
    return int(min(round(count), _MAX_CAVITIES, _MAX_CAVITIES_PER_MPX * area / 1024**2))


def realistic_domain(
    rng: np.random.Generator, family: str = "realistic", shape: tuple[int, int] = (1024, 1024)
) -> Domain:
    """Draw the imaging knobs of one frame of ``family`` (of size ``shape``).

    Families: "realistic" draws everything; "big" 60-300 px cavities; "tiny_dense" 4-8 px cavities,
    100-600 per 1024 x 1024; "overfocus_rings" over focus with bright outer rings; "speckle_jpeg"
    coarse speckle (JPEG is chosen with the file format); "large_frames" as "realistic" with the
    sizes of 2048-4096 px frames.
    """
    _check_family(family)
    area_scale = shape[0] * shape[1] / REFERENCE_AREA_PX
    median, mix = _cavity_size(rng, family, shape)
    diameter = (max(4.0, median / np.sqrt(mix)), max(4.5, median * np.sqrt(mix)))
    count = _cavity_count(rng, family, shape, median)

    if family == "overfocus_rings":
        focus = "over"
    elif median < 10:  # tiny cavities near focus are invisible in real frames too
        focus = str(rng.choice(("under", "over"), p=(0.65, 0.35)))
    else:
        focus = str(rng.choice(("under", "over", "near"), p=(0.55, 0.3, 0.15)))
    near = focus == "near"
    defocus = rng.uniform(0.05, 0.2) if near else _log_uniform(rng, 0.4, 2.5)
    rim_sigma = None
    if not near and rng.random() < 0.35:  # soft halo instead of a crisp rim
        rim_sigma = min(rng.uniform(2.0, 6.0), max(diameter[0] / 3, 0.8))
    ring_strength, ring_width = 0.0, 3.0
    # over focus: a bright ring nearly always, and always on small cavities that would otherwise
    # look like the (unlabelled) black dots
    if focus == "over" and (family == "overfocus_rings" or median < 12 or rng.random() < 0.85):
        ring_strength, ring_width = -rng.uniform(0.25, 0.8), rng.uniform(1.5, max(2.0, min(8.0, median / 4)))
    elif focus == "under" and rng.random() < 0.35:  # a thick dark band round bright interiors
        ring_strength, ring_width = rng.uniform(0.15, 0.5), rng.uniform(1.5, max(2.0, min(10.0, median / 3)))
    if focus == "under":
        interior = rng.choice((rng.uniform(0.0, 0.25), rng.uniform(0.25, 1.6)))
    elif focus == "over":
        interior = -rng.uniform(0.0, 0.5)
    else:
        interior = rng.uniform(0.15, 0.4)
    shading = rng.uniform(0.05, 0.35) if rng.random() < 0.4 else 0.0
    mottle = rng.uniform(0.02, 0.12)
    speckle = rng.uniform(0.15, 0.3) if family == "speckle_jpeg" else _speckle(rng)
    dose = None if rng.random() < 0.15 else _log_uniform(rng, 3, 150)
    read_noise = rng.uniform(0.005, 0.08)
    blur = min(_log_uniform(rng, 0.3, 2.2), max(0.3, median / 6))  # blur beyond that erases them

    elongated = rng.random() < 0.2
    busy = rng.random()
    domain = Domain(
        focus="over" if focus == "over" else "under",
        defocus=float(defocus),
        diameter_px=(float(diameter[0]), float(diameter[1])),
        cavity_count=count,
        min_separation=float(rng.uniform(0.6, 1.0)),
        facet_fraction=float(rng.uniform(0.0, 1.0)),
        truncated_square_fraction=float(rng.uniform(0.2, 0.8)) if rng.random() < 0.3 else 0.0,
        max_ellipticity=float(rng.uniform(0.5, 1.5) if elongated else rng.uniform(0.05, 0.3)),
        rim_sigma_px=None if rim_sigma is None else float(rim_sigma),
        ring_strength=float(ring_strength),
        ring_width_px=float(ring_width),
        interior_contrast=float(interior),
        interior_shading=float(shading),
        dose=dose,
        read_noise=float(read_noise),
        blur_sigma=float(blur),
        bend_contours=float(rng.uniform(0.0, 0.7)) if rng.random() < 0.6 else 0.0,
        bend_width=_log_uniform(rng, 0.4, 3.0),
        mottle=float(mottle),
        blotchiness=float(rng.uniform(0.1, 0.3)) if rng.random() < 0.8 else float(rng.uniform(0.03, 0.1)),
        blotch_px=_log_uniform(rng, max(12.0, 1.5 * median), max(120.0, 3 * median)),
        dark_regions=float(rng.uniform(0.5, 0.8)) if rng.random() < 0.2 else 0.0,
        dislocation_lines=_per_area((0, 2) if busy < 0.5 else (2, 6), area_scale),
        dislocation_loops=_per_area((0, 2) if busy < 0.5 else (1, 5), area_scale),
        tangles=_per_area((1, 2), area_scale) if rng.random() < 0.3 else (0, 0),
        black_dots=_per_area((0, 15) if busy < 0.5 or median < 12 else (10, 60), area_scale),
        bright_segments=_per_area((3, 25), area_scale) if rng.random() < 0.35 else (0, 0),
        grain_boundary_probability=0.3,
        speckle=float(speckle),
        speckle_px=float(rng.uniform(1.0, 2.5)),
        contrast=float(rng.uniform(0.7, 1.4)),
        brightness=float(rng.uniform(0.3, 0.6)),
        scan_banding=float(rng.uniform(0.0, 0.04)),
        scan_streaks=int(rng.integers(1, 20)) if rng.random() < 0.2 else 0,
        vertical_lines=int(rng.integers(1, 6)) if rng.random() < 0.15 else 0,
        moire=float(rng.uniform(0.05, 0.2)) if rng.random() < 0.1 else 0.0,
        burn_in=bool(rng.random() < 0.4),
        burn_in_text=bool(rng.random() < 0.25),
    )
    return _keep_cavities_visible(domain, median, rng.uniform(*_CONTRAST_TO_CLUTTER))


def _cavity_signal(domain: Domain, diameter: float) -> float:
    """RMS contrast (fraction of the matrix level) of one cavity of this diameter and its rim,
    rendered without any background, noise or artefact."""
    side = int(2 * diameter + 48)
    probe = replace(
        Domain(),
        **{name: getattr(domain, name) for name in _CAVITY_LOOK},
        diameter_px=(diameter, diameter),
        cavity_count=1,
        dose=None,
        read_noise=0.0,
        bend_contours=0.0,
        mottle=0.0,
        dislocation_lines=(0, 0),
        dislocation_loops=(0, 0),
        black_dots=(0, 0),
        grain_boundary_probability=0.0,
        scan_banding=0.0,
        brightness=0.5,
        contrast=1.0,
    )
    image, labels, _ = render_frame(0, (side, side), probe)
    near = ndimage.distance_transform_edt(labels == 0) <= 4
    return float(np.sqrt(np.mean((image[near] / 127.5 - 1.0) ** 2)))


def _clutter(domain: Domain) -> float:
    """RMS of the texture and noise at the scale of cavities (blotches count 30%: mostly larger)."""
    noise = _PSF_NOISE_FACTOR * np.sqrt(domain.read_noise**2 + (1.0 / domain.dose if domain.dose else 0.0))
    return float(np.sqrt(domain.mottle**2 + domain.speckle**2 + noise**2 + (0.3 * domain.blotchiness) ** 2))


def _keep_cavities_visible(domain: Domain, diameter: float, ratio: float) -> Domain:
    """Scale texture and noise down until the cavities' contrast is ``ratio`` times the clutter.

    Why: a labelled cavity that nobody could see teaches a detector to hallucinate; real frames
    are noisy and cluttered, but their cavities are visible to whoever counted them.
    """
    if domain.cavity_count == 0:
        return domain
    scale = min(1.0, _cavity_signal(domain, diameter) / (ratio * max(_clutter(domain), 1e-9)))
    if scale == 1.0:
        return domain
    return replace(
        domain,
        mottle=domain.mottle * scale,
        speckle=domain.speckle * scale,
        blotchiness=domain.blotchiness * scale,
        read_noise=domain.read_noise * scale,
        dose=None if domain.dose is None else domain.dose / scale**2,
    )


def _speckle(rng):
    return rng.uniform(0.05, 0.3) if rng.random() < 0.5 else 0.0


def _per_area(count_range, area_scale):
    """Counts per 512 x 512 field, thinned on large frames where real clutter is no denser per
    cavity (and strokes would dominate the generator's time)."""
    thinning = min(1.0, 4.0 / max(area_scale, 1e-9)) ** 0.5
    return (
        int(count_range[0] * thinning),
        max(int(round(count_range[1] * thinning)), int(count_range[0] * thinning)),
    )


def _file_format(rng, family):
    """How the frame is stored: 8-bit (maybe JPEG-compressed) or 16-bit with offset, gain, hot pixels."""
    if family == "speckle_jpeg":
        return {"bit_depth": 8, "jpeg_quality": int(rng.integers(30, 61))}
    if rng.random() < 0.3:
        return {
            "bit_depth": 16,
            "offset": int(rng.integers(0, 4000)),
            "gain": _log_uniform(rng, 2.0, 200.0),
            "hot_pixels": int(rng.integers(0, 12)),
        }
    return {"bit_depth": 8, "jpeg_quality": int(rng.integers(30, 91)) if rng.random() < 0.5 else None}


def _as_file(rng, image, file_format):
    """The float [0, 255] frame as the stored file's pixels (uint8 or uint16)."""
    if file_format["bit_depth"] == 8:
        pixels = np.round(image).astype(np.uint8)
        if file_format["jpeg_quality"] is not None:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=file_format["jpeg_quality"])
            pixels = np.asarray(Image.open(buffer), dtype=np.uint8)
        return pixels
    scaled = file_format["offset"] + file_format["gain"] * image.astype(np.float64)
    pixels = np.round(np.clip(scaled, 0, 65535)).astype(np.uint16)
    hot = rng.integers(0, pixels.size, file_format["hot_pixels"])
    pixels.ravel()[hot] = 65535
    return pixels


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def make_realistic_frame(
    seed: int, family: str = "realistic", shape: tuple[int, int] | None = None, without_cavities: bool = False
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One randomized realistic frame: ``(image, labels, info)``.

    image: uint8 or uint16 (Y, X), as a PNG/JPEG or 16-bit TIFF would hold it; labels: uint16
    (uint32 beyond 65535 cavities) instance image as ``make_frame``'s; info: the knobs drawn (JSON-
    serialisable), with ``"family"``, ``"shape"``, ``"n_cavities"`` and ``"diameter_px"``, the median
    true diameter of the labelled cavities (None without any). ``shape=None`` draws it from the family.
    ``without_cavities`` renders a frame of the same drawn knobs (background, clutter, artefacts,
    file format) with no cavity: hard negatives for training, everything that may look like a
    cavity and nothing that is one.
    """
    _check_family(family)
    if shape is not None:
        if len(shape) != 2 or min(int(side) for side in shape) < 8:
            raise ValueError(f"shape must be (Y, X) with both sides >= 8, got {shape}")
        shape = (int(shape[0]), int(shape[1]))
    knob_seed, frame_seed_, file_seed = np.random.SeedSequence([seed, zlib.crc32(family.encode())]).spawn(3)
    knob_rng = np.random.default_rng(knob_seed)
    if shape is None:
        shape = realistic_shape(knob_rng, family)
    domain = realistic_domain(knob_rng, family, shape)
    if without_cavities:
        domain = replace(domain, cavity_count=0)
    file_format = _file_format(knob_rng, family)
    frame_seed_value = int(frame_seed_.generate_state(1)[0])
    image, labels, diameters = render_frame(frame_seed_value, shape, domain)
    pixels = _as_file(np.random.default_rng(file_seed), image, file_format)
    info = {
        "family": family,
        "seed": int(seed),
        "shape": list(shape),
        "n_cavities": int(labels.max()),
        "diameter_px": float(np.median(diameters)) if len(diameters) else None,
        "domain": asdict(domain),
        **file_format,
    }
    return pixels, labels, _jsonable(info)


def family_frame(source: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of frame ``seed`` of a realistic family or of an older named preset (512 px):
    the sources the default detector is trained, tuned and benchmarked on."""
    from napari_detection_qc.synthetic.frames import PRESETS, make_frame

    if source in REALISTIC_FAMILIES:
        image, labels, _ = make_realistic_frame(seed, source)
        return image, labels
    if source not in PRESETS:
        raise ValueError(
            f"unknown frame source {source!r}; known: {', '.join((*REALISTIC_FAMILIES, *PRESETS))}"
        )
    return make_frame(seed, (512, 512), PRESETS[source])
