"""Seeded TEM-like cavity micrographs with exact instance masks, under named domain shifts.

Why: the quality forest needs frames whose detection quality varies for known reasons (focus,
dose, size, background clutter), and tests need images whose ground truth is exact. Pure
numpy/scipy/scikit-image; no Qt, no torch.

Image model, in units of the matrix's mean transmitted intensity (1.0):

- cavities are voids, i.e. a projected-thickness deficit ``D`` inside a faceted (6 or 8 facets)
  or elliptical outline: a shallow dome times a steep edge, ``2 r (1 - (|p| / 1.3)^2)
  min(1, (1 - rho) / 0.3)^0.5`` (``p`` the position in the cavity's frame, ``rho`` the outline's
  gauge, 1 on the outline); their Fresnel contrast follows the transport-of-intensity equation,
  ``I = 1 + s k defocus (-Laplacian(G_sigma * D))`` with ``s = +1`` under focus (bright interior,
  thin dark rim) and ``-1`` over focus (dark interior, bright rim); ``sigma`` grows with defocus,
  so rims widen; a small focus-independent absorption term shades the interior slightly;
- the matrix carries dark bend contours (level sets of a smooth random field), mottle
  (band-passed noise), uneven illumination, optional grain boundary with thickness fringes;
- distractors are dark dislocation lines, dislocation loops and black dots;
- the detector adds horizontal scan banding, blur, shot noise at ``dose`` electrons per pixel
  (Gaussian with Poisson variance), Gaussian read noise, a small point spread that makes the
  noise grainy, then a gain; an optional scale bar is burnt in.

Knobs used only by the realistic families (``realistic.py``; all off by default, so the presets
draw the frames they always drew): an exact cavity count, closer packing, truncated squares, a
set rim width, dark bands or bright halos round cavities, flat or graded interior contrast (adding
up where cavities overlap); blotchy low-frequency texture, wider bend contours, near-black thick
regions, dislocation tangles, short bright dislocation segments (never labelled); coarse speckle,
scan streaks, vertical line artefacts, a moire-hatched corner, burnt-in acquisition text.

Output: images are float32 in [0, 255] (the range of the 8-bit micrographs the detector sees);
labels are uint16 instance images (uint32 beyond 65534 cavities), ids 1..N contiguous, each id
one connected component (``scipy.ndimage.label``'s default connectivity), 0 background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import fft, ndimage, special
from skimage.draw import disk

__all__ = [
    "DEFAULT",
    "PRESETS",
    "Domain",
    "frame_seed",
    "get_domain",
    "make_frame",
    "render_frame",
    "make_stack",
]

REFERENCE_AREA_PX = 512 * 512
"""Cavity and distractor counts are per field of view of this many pixels (scaled with area)."""

_EDGE_WIDTH = 0.3  # the void's side walls span the outer 30% of its gauge; flatter inside
_EDGE_EXPONENT = 0.5  # steep walls, as for a sphere, give the sharp Fresnel rim
_FRESNEL_GAIN = 0.45  # interior brightening per unit defocus of a 30 px cavity is about 0.25
_ABSORPTION_PER_PX = 0.0012  # mass-thickness brightening per pixel of void depth
_MIN_SEPARATION = 0.75  # centres at least this fraction of the summed radii apart (partial overlap)
_MIN_KEPT_FRACTION = 0.35  # an overwritten cavity keeps its id if this much of it stays visible
_MIN_AREA_PX = 6
_DISTRACTOR_DARKNESS = 0.5
_STROKE_STEP_PX = 0.7
_DETECTOR_PSF_SIGMA = 0.6  # makes noise grainy rather than salt-and-pepper, as on a CCD


@dataclass(frozen=True)
class Domain:
    """The knobs of one imaging domain; the defaults are the in-distribution "clean" domain.

    Lengths are pixels; count ranges are per 512 x 512 field of view (scaled with frame area) and
    inclusive; intensities are fractions of the matrix's mean transmitted intensity.
    """

    focus: str = "under"
    """"under" (bright cavity, dark rim) or "over" (dark cavity, bright rim)."""
    defocus: float = 1.0
    """Fresnel strength; rim width grows with its square root."""
    diameter_px: tuple[float, float] = (12.0, 45.0)
    """Cavity diameters, log-normal between these bounds."""
    cavities_per_frame: tuple[int, int] = (6, 24)
    """Cavities attempted; a few may be dropped when too crowded or mostly overwritten."""
    facet_fraction: float = 0.7
    """Fraction of cavities drawn as hexagons/octagons rather than ellipses."""
    max_ellipticity: float = 0.2
    """Largest axis-ratio excess (0.2: long axis up to 1.2 x the short one)."""
    dose: float | None = 40.0
    """Electrons per pixel at matrix intensity (Poisson noise); None for no shot noise."""
    read_noise: float = 0.04
    """Standard deviation of the Gaussian detector noise."""
    blur_sigma: float = 0.7
    """Optical blur (Gaussian sigma, px) before the noise."""
    bend_contours: float = 0.3
    """Darkness of the bend contours / thickness bands crossing the frame."""
    mottle: float = 0.05
    """Standard deviation of the blotchy matrix texture (features of 1.5-6 px)."""
    dislocation_lines: tuple[int, int] = (0, 3)
    dislocation_loops: tuple[int, int] = (0, 2)
    black_dots: tuple[int, int] = (0, 12)
    grain_boundary_probability: float = 0.15
    """Chance that a straight-ish grain boundary with thickness fringes crosses the frame."""
    contrast: float = 1.0
    """Gain around the mean level (below 1 washes the image out)."""
    brightness: float = 0.45
    """Mean matrix level as a fraction of 255."""
    scan_banding: float = 0.01
    """Standard deviation of the horizontal per-row intensity offsets."""
    burn_in: bool = False
    """Burn a white scale bar and its label into the lower left corner."""

    # Knobs of the "realistic" families (synthetic.realistic); their defaults switch them off, so
    # the presets above draw exactly the frames they always drew.
    cavity_count: int | None = None
    """Cavities attempted in this frame, overriding ``cavities_per_frame`` (no area scaling)."""
    min_separation: float = _MIN_SEPARATION
    """Centres at least this fraction of the summed radii apart (below 1: touching, overlapping)."""
    truncated_square_fraction: float = 0.0
    """Fraction of the faceted cavities drawn as squares with cut corners."""
    rim_sigma_px: float | None = None
    """Width (px) of the Fresnel rim; None ties it to ``defocus``."""
    ring_strength: float = 0.0
    """Darkening (> 0: a dark band) or brightening (< 0: a bright halo) just outside each cavity."""
    ring_width_px: float = 3.0
    interior_contrast: float = 0.0
    """Flat brightening (> 0) or darkening (< 0) of cavity interiors; adds up where they overlap."""
    interior_shading: float = 0.0
    """Linear brightness gradient across each interior, in random directions."""
    blotchiness: float = 0.0
    """Standard deviation of a low-frequency blotchy texture of the matrix."""
    blotch_px: float = 30.0
    """Typical size (px) of the blotches."""
    bend_width: float = 1.0
    """Widens (> 1) or narrows the bend contours."""
    dark_regions: float = 0.0
    """Darkness of large thick, near-black regions (0: none)."""
    tangles: tuple[int, int] = (0, 0)
    """Dislocation tangles: clusters of short curved dark lines."""
    bright_segments: tuple[int, int] = (0, 0)
    """Short bright dislocation segments that look like small cavities but are not labelled."""
    speckle: float = 0.0
    """Standard deviation of multiplicative coarse speckle at the scale of small cavities."""
    speckle_px: float = 1.5
    scan_streaks: int = 0
    """Short horizontal streaks (bright or dark) as from scan glitches."""
    vertical_lines: int = 0
    """Vertical line artefacts (column offsets) across part of the frame."""
    moire: float = 0.0
    """Amplitude of a moire hatch fading out from one corner."""
    burn_in_text: bool = False
    """Burn a magnification/voltage text block into the upper right corner."""

    def __post_init__(self):
        if self.focus not in ("under", "over"):
            raise ValueError(f'focus must be "under" or "over", got {self.focus!r}')
        for name in (
            "diameter_px",
            "cavities_per_frame",
            "dislocation_lines",
            "dislocation_loops",
            "black_dots",
            "tangles",
            "bright_segments",
        ):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range 0 <= low <= high, got {(low, high)}")
        if self.diameter_px[0] <= 0:
            raise ValueError("cavity diameters must be positive")
        if self.dose is not None and self.dose <= 0:
            raise ValueError("dose must be positive or None")
        if self.cavity_count is not None and self.cavity_count < 0:
            raise ValueError(f"cavity_count must be >= 0 or None, got {self.cavity_count}")
        if self.rim_sigma_px is not None and self.rim_sigma_px <= 0:
            raise ValueError("rim_sigma_px must be positive or None")


DEFAULT = Domain()

PRESETS: dict[str, Domain] = {
    "clean": DEFAULT,
    "overfocus": replace(DEFAULT, focus="over"),
    "low_dose": replace(DEFAULT, dose=3.0, read_noise=0.12),
    "tiny_cavities": replace(DEFAULT, diameter_px=(4.0, 11.0), defocus=0.7),
    "busy_background": replace(
        DEFAULT,
        bend_contours=0.6,
        mottle=0.12,
        dislocation_lines=(6, 12),
        dislocation_loops=(4, 10),
        black_dots=(30, 80),
        grain_boundary_probability=0.8,
        burn_in=True,
    ),
    "dense": replace(DEFAULT, cavities_per_frame=(32, 45), diameter_px=(10.0, 40.0)),
    "blurred": replace(DEFAULT, blur_sigma=2.5, contrast=0.7),
    "hard_shift": replace(
        DEFAULT,
        focus="over",
        defocus=1.3,
        diameter_px=(6.0, 18.0),
        cavities_per_frame=(2, 12),
        dose=6.0,
        read_noise=0.1,
        bend_contours=0.55,
        mottle=0.1,
        dislocation_lines=(5, 10),
        dislocation_loops=(3, 8),
        black_dots=(30, 80),
        grain_boundary_probability=0.6,
        contrast=0.8,
        scan_banding=0.04,
        burn_in=True,
    ),
}
"""Named domains, from the in-distribution "clean" to the hardest combined shift."""


def get_domain(domain: Domain | str) -> Domain:
    """A Domain, or the preset of that name."""
    if isinstance(domain, Domain):
        return domain
    try:
        return PRESETS[domain]
    except KeyError:
        raise ValueError(f"unknown domain preset {domain!r}; known: {sorted(PRESETS)}") from None


def frame_seed(seed: int, frame: int) -> int:
    """The seed of frame ``frame`` of ``make_stack(seed, ...)``, so any frame can be remade alone."""
    return int(np.random.SeedSequence([seed, frame]).generate_state(1)[0])


def make_frame(
    seed: int, shape: tuple[int, int] = (512, 512), domain: Domain | str = DEFAULT
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic micrograph and its instance labels.

    Returns ``(image, labels)``: image float32 (Y, X) in [0, 255]; labels uint16 (Y, X), one id per
    cavity, ids 1..N contiguous, each id one connected component, 0 background.
    """
    image, labels, _ = render_frame(seed, shape, domain)
    return image, labels


def render_frame(
    seed: int, shape: tuple[int, int] = (512, 512), domain: Domain | str = DEFAULT
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_frame`` plus the true diameter (px, float) of each labelled cavity, index id - 1.

    Why: a cavity cut by the frame edge or partly covered keeps its true size here, which the
    label areas would understate.
    """
    domain = get_domain(domain)
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"shape must be (Y, X) with both sides >= 8, got {shape}")
    shape = (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng(seed)
    area_scale = shape[0] * shape[1] / REFERENCE_AREA_PX

    deficit, labels, cavity_shading, diameters = _draw_cavities(rng, shape, domain, area_scale)
    intensity = _matrix(rng, shape, domain)
    intensity *= 1.0 + np.tanh(_cavity_contrast(deficit, domain, cavity_shading))
    intensity *= 1.0 - _DISTRACTOR_DARKNESS * _distractors(rng, shape, domain, area_scale)
    if domain.bright_segments[1] > 0:
        intensity *= 1.0 + _bright_segments(rng, shape, domain, area_scale)
    intensity = _detector(rng, intensity, domain)
    if domain.scan_streaks or domain.vertical_lines or domain.moire:
        _line_artefacts(rng, intensity, domain)
    image = np.clip(255.0 * domain.brightness * (1.0 + domain.contrast * (intensity - 1.0)), 0.0, 255.0)
    if domain.burn_in:
        _burn_in_scale_bar(rng, image)
    if domain.burn_in_text:
        _burn_in_text(rng, image)
    return image.astype(np.float32, copy=False), labels, diameters


def make_stack(
    seed: int,
    n_frames: int,
    shape: tuple[int, int] = (512, 512),
    domain: Domain | str | Sequence[Domain | str] = DEFAULT,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_frames`` frames, frame t made by ``make_frame(frame_seed(seed, t), shape, domain_t)``.

    ``domain`` is one Domain/preset name for all frames or a sequence of them, one per frame.
    Returns images float32 (T, Y, X) and labels uint16 (T, Y, X).
    """
    if isinstance(domain, (Domain, str)):
        domains = [domain] * n_frames
    else:
        domains = list(domain)
        if len(domains) != n_frames:
            raise ValueError(f"got {len(domains)} domains for {n_frames} frames")
    images = np.empty((n_frames, *shape), dtype=np.float32)
    labels = np.empty((n_frames, *shape), dtype=np.uint16)
    for t, frame_domain in enumerate(domains):
        images[t], labels[t] = make_frame(frame_seed(seed, t), shape, frame_domain)
    return images, labels


# --- cavities ---------------------------------------------------------------------------------


def _draw_cavities(rng, shape, domain, area_scale):
    """Thickness deficit, instance labels, extra contrast (rings, interiors; None when off) and
    the true diameter of each kept cavity."""
    if domain.cavity_count is None:
        low, high = domain.cavities_per_frame
        count = int(round(rng.integers(low, high + 1) * area_scale))
    else:
        count = domain.cavity_count
    centers, radii = _place_cavities(rng, shape, domain, count)
    deficit = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint16 if len(radii) < 65535 else np.uint32)
    shaded = domain.ring_strength != 0 or domain.interior_contrast != 0 or domain.interior_shading != 0
    shading = np.zeros(shape, dtype=np.float32) if shaded else None
    drawn_area = np.zeros(len(radii) + 1, dtype=np.int64)
    for index, (center, radius) in enumerate(zip(centers, radii, strict=True), start=1):
        drawn_area[index] = _draw_cavity(rng, deficit, labels, index, center, radius, domain, shading)
    labels, kept = _clean_labels(labels, drawn_area)
    return deficit, labels, shading, 2 * np.asarray(radii, dtype=float)[kept - 1]


def _place_cavities(rng, shape, domain, count):
    """Centres (inside the frame) and radii, centres at least 0.75 x the summed radii apart.

    That keeps overlaps partial (no cavity swallows another while their radii differ less than 7x).
    """
    low, high = np.log(domain.diameter_px)
    log_diameters = rng.normal((low + high) / 2, max(high - low, 1e-6) / 4, size=count)
    radii = np.exp(np.clip(log_diameters, low, high)) / 2
    centers, kept_radii = [], []
    for radius in radii:
        for _ in range(30):
            center = rng.uniform((0, 0), shape)
            if not centers or np.all(
                np.hypot(*(np.asarray(centers) - center).T)
                >= domain.min_separation * (radius + np.asarray(kept_radii))
            ):
                centers.append(center)
                kept_radii.append(radius)
                break
    return centers, kept_radii


def _draw_cavity(rng, deficit, labels, label_id, center, radius, domain, shading):
    """Add one void's thickness deficit (and its extra shading, if any) and paint its label;
    returns its drawn area in pixels."""
    stretch = np.sqrt(1.0 + rng.uniform(0.0, domain.max_ellipticity))
    semi_long, semi_short = radius * stretch, radius / stretch
    angle = rng.uniform(0.0, np.pi)
    reach = 1.3 * semi_long + 1.0
    if shading is not None and domain.ring_strength:
        reach = max(reach, semi_long * 1.2 + 3 * domain.ring_width_px + 1.0)
    y0, x0 = np.maximum(np.floor(center - reach).astype(int), 0)
    y1, x1 = np.minimum(np.ceil(center + reach).astype(int) + 1, labels.shape)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dy, dx = yy + 0.5 - center[0], xx + 0.5 - center[1]
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / semi_long
    v = (dy * np.cos(angle) - dx * np.sin(angle)) / semi_short
    if rng.random() < domain.facet_fraction:
        if domain.truncated_square_fraction and rng.random() < domain.truncated_square_fraction:
            normals = rng.uniform(0.0, np.pi / 2) + np.pi * np.arange(8) / 4
            corner_cut = rng.uniform(1.08, 1.3)  # sqrt(2) would leave the square's corners whole
            square_apothem = np.sqrt(np.pi / (4 - 4 * (np.sqrt(2) - corner_cut) ** 2))  # area pi
            apothems = square_apothem * np.tile([1.0, corner_cut], 4)
        else:
            n_facets = int(rng.choice((6, 8)))
            normals = rng.uniform(0.0, 2 * np.pi / n_facets) + 2 * np.pi * np.arange(n_facets) / n_facets
            equal_area_apothem = np.sqrt(np.pi / (n_facets * np.tan(np.pi / n_facets)))
            apothems = equal_area_apothem * rng.uniform(0.92, 1.08, n_facets)
        rho = np.max((u[..., None] * np.cos(normals) + v[..., None] * np.sin(normals)) / apothems, axis=-1)
    else:
        rho = np.hypot(u, v)
    inside = rho < 1.0
    dome = 1.0 - (np.hypot(u, v) / 1.3) ** 2
    edge = np.clip((1.0 - rho) / _EDGE_WIDTH, 0, 1) ** _EDGE_EXPONENT
    deficit[y0:y1, x0:x1] += np.where(inside, 2 * radius * dome * edge, 0)
    labels[y0:y1, x0:x1][inside] = label_id
    if shading is not None:
        shading[y0:y1, x0:x1] += _cavity_shading(rng, u, v, rho, inside, radius, domain)
    return int(inside.sum())


def _cavity_shading(rng, u, v, rho, inside, radius, domain):
    """Extra contrast of one cavity: flat or graded interior, dark band or bright halo outside."""
    direction = rng.uniform(0, 2 * np.pi)
    interior = domain.interior_contrast + domain.interior_shading * (
        u * np.cos(direction) + v * np.sin(direction)
    )
    outside_px = np.maximum(rho - 1.0, 0.0) * radius
    ring = np.exp(-((outside_px / domain.ring_width_px) ** 2))
    return np.where(inside, interior, -domain.ring_strength * ring).astype(np.float32)


def _clean_labels(labels, drawn_area):
    """Keep each id's largest piece if enough of it survived overwriting; renumber ids 1..N.

    Returns the new labels and the old ids kept, in new-id order.
    """
    new_ids = np.zeros(len(drawn_area), dtype=labels.dtype)
    next_id = 1
    for old_id, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        mine = labels[window] == old_id
        pieces, n_pieces = ndimage.label(mine)
        if n_pieces > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            largest = int(np.argmax(sizes)) + 1
            labels[window][mine & (pieces != largest)] = 0
            area = int(sizes[largest - 1])
        else:
            area = int(mine.sum())
        if area >= max(_MIN_AREA_PX, _MIN_KEPT_FRACTION * drawn_area[old_id]):
            new_ids[old_id] = next_id
            next_id += 1
    return new_ids[labels], np.flatnonzero(new_ids)


def _cavity_contrast(deficit, domain, shading=None):
    """Fresnel (transport of intensity) plus absorption contrast of the thickness deficit."""
    sigma = np.sqrt(0.5**2 + 1.2 * domain.defocus) if domain.rim_sigma_px is None else domain.rim_sigma_px
    focus_sign = 1.0 if domain.focus == "under" else -1.0
    q2 = _squared_frequency(deficit.shape)
    minus_laplacian_of_gaussian = (
        np.float32(4 * np.pi**2) * q2 * np.exp(np.float32(-2 * np.pi**2 * sigma**2) * q2)
    )
    fresnel = fft.irfft2(fft.rfft2(deficit) * minus_laplacian_of_gaussian, s=deficit.shape)
    fresnel *= np.float32(focus_sign * _FRESNEL_GAIN * domain.defocus)
    contrast = fresnel + np.float32(_ABSORPTION_PER_PX) * deficit
    if shading is not None:
        contrast += ndimage.gaussian_filter(shading, 0.7)
    return contrast


# --- matrix, distractors, detector ------------------------------------------------------------


@lru_cache(maxsize=8)
def _squared_frequency(shape):
    """|q|^2 in cycles per pixel on the rfft2 grid of ``shape``."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return (fy**2 + fx**2).astype(np.float32)


def _random_field(rng, shape, smooth_px, coarse_px=None):
    """Zero-mean unit-std Gaussian random field with features from ``smooth_px`` up to ``coarse_px``.

    Only the spectrum's block where the low-pass is not negligible gets random coefficients, so
    smooth fields cost one inverse FFT and almost no random numbers.
    """
    q2 = _squared_frequency(shape)
    cutoff = 0.6 / smooth_px  # exp(-2 pi^2 smooth_px^2 q^2) < 1e-3 beyond this frequency
    rows = min(int(np.ceil(cutoff * shape[0])), shape[0] // 2)
    cols = min(int(np.ceil(cutoff * shape[1])) + 1, q2.shape[1])
    row_index = (
        np.r_[0 : rows + 1, shape[0] - rows : shape[0]] if rows < shape[0] // 2 else np.arange(shape[0])
    )
    block = q2[row_index, :cols]
    transfer = np.exp(np.float32(-2 * np.pi**2 * smooth_px**2) * block)
    if coarse_px is not None:
        transfer -= np.exp(np.float32(-2 * np.pi**2 * coarse_px**2) * block)
    white = rng.standard_normal((2, *block.shape), dtype=np.float32)
    spectrum = np.zeros(q2.shape, dtype=np.complex64)
    spectrum[row_index, :cols] = (white[0] + 1j * white[1]) * transfer
    field = fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


@lru_cache(maxsize=8)
def _pixel_grid(shape):
    """Row (Y, 1) and column (1, X) coordinates of pixel centres, float32."""
    rows = np.arange(shape[0], dtype=np.float32)[:, None] + np.float32(0.5)
    cols = np.arange(shape[1], dtype=np.float32)[None, :] + np.float32(0.5)
    return rows, cols


def _matrix(rng, shape, domain):
    """Matrix intensity: illumination, bend contours, mottle and an optional grain boundary."""
    size = max(shape)
    intensity = 1.0 + np.float32(0.06) * _random_field(rng, shape, size / 3)
    if domain.bend_contours > 0:
        rows, cols = _pixel_grid(shape)
        direction = rng.uniform(0, 2 * np.pi)
        ramp = (np.float32(np.cos(direction) / size) * cols - np.float32(0.5 * np.cos(direction))) + (
            np.float32(np.sin(direction) / size) * rows - np.float32(0.5 * np.sin(direction))
        )
        bend_field = _random_field(rng, shape, size / 6) + np.float32(rng.uniform(0.5, 2.0)) * ramp
        bands = np.zeros(shape, dtype=np.float32)
        for level in rng.normal(0.0, 0.9, size=rng.integers(1, 4)):
            inverse_width = np.float32(1.0 / (rng.uniform(0.08, 0.2) * domain.bend_width))
            bands += np.exp(np.float32(-0.5) * ((bend_field - np.float32(level)) * inverse_width) ** 2)
        intensity *= 1.0 - np.float32(domain.bend_contours) * np.minimum(bands, 1)
    if domain.mottle > 0:
        intensity *= 1.0 + np.float32(domain.mottle) * _random_field(rng, shape, 1.5, 6.0)
    if rng.random() < domain.grain_boundary_probability:
        intensity *= _grain_boundary(rng, shape)
    if domain.blotchiness > 0:
        blotches = _random_field(rng, shape, domain.blotch_px / 4, domain.blotch_px * 2)
        intensity *= np.maximum(1.0 + np.float32(domain.blotchiness) * blotches, np.float32(0.1))
    if domain.dark_regions > 0:
        thickness = _random_field(rng, shape, size / 10)
        threshold = special.ndtri(1.0 - rng.uniform(0.05, 0.3))  # that share of the frame is thick
        region = np.float32(0.5) + np.float32(0.5) * np.tanh(
            (thickness - np.float32(threshold)) * np.float32(4)
        )
        intensity *= 1.0 - np.float32(domain.dark_regions) * region
    return intensity


def _grain_boundary(rng, shape):
    """Intensity factor of a grain boundary: a step in diffraction contrast plus thickness fringes."""
    rows, cols = _pixel_grid(shape)
    point = rng.uniform((0, 0), shape)
    normal = rng.uniform(0, 2 * np.pi)
    along = np.float32(-np.sin(normal)) * (cols - np.float32(point[1])) + np.float32(np.cos(normal)) * (
        rows - np.float32(point[0])
    )
    distance = np.float32(np.cos(normal)) * (cols - np.float32(point[1])) + np.float32(np.sin(normal)) * (
        rows - np.float32(point[0])
    )
    distance += np.float32(rng.normal(0, 1e-3)) * along**2
    step = np.float32(rng.choice((-1, 1)) * rng.uniform(0.08, 0.25))
    beyond = np.maximum(distance, 0)
    fringes = (
        np.float32(0.15)
        * np.cos(np.float32(2 * np.pi / rng.uniform(6, 12)) * beyond)
        * np.exp(beyond / np.float32(-25.0))
    )
    fringes[distance <= 0] = 0
    grain_contrast = step * (np.float32(0.5) + np.float32(0.5) * np.tanh(distance / np.float32(3.0)))
    boundary_line = np.float32(0.3) * np.exp(np.float32(-0.5) * distance**2)
    return (1.0 + grain_contrast + fringes) * (1.0 - boundary_line)


def _distractors(rng, shape, domain, area_scale):
    """Darkness map in [0, 1) of dislocation lines, dislocation loops and black dots."""
    strokes = np.zeros(shape, dtype=np.float32)
    size = max(shape)
    for _ in range(_scaled_count(rng, domain.dislocation_lines, area_scale)):
        n_steps = int(rng.uniform(0.05, 0.6) * size / _STROKE_STEP_PX)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.03, n_steps))
        direction = np.stack([np.sin(heading), np.cos(heading)], 1)
        points = rng.uniform((0, 0), shape) + _STROKE_STEP_PX * np.cumsum(direction, 0)
        period = rng.uniform(4, 15) / _STROKE_STEP_PX
        strength = 0.6 + 0.4 * np.sin(np.arange(n_steps) / period + rng.uniform(0, 2 * np.pi))
        _add_stroke(strokes, points, direction[:, ::-1] * (1, -1), strength, rng.uniform(0, 2))
    for _ in range(_scaled_count(rng, domain.dislocation_loops, area_scale)):
        radius = rng.uniform(4, 25)
        semi_axes = radius * np.sqrt(rng.uniform(0.5, 1.0)) ** np.array([1, -1])
        theta = np.linspace(0, 2 * np.pi, int(2 * np.pi * radius / _STROKE_STEP_PX) + 3)
        tilt = rng.uniform(0, np.pi)
        rotation = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
        ring = np.stack([semi_axes[0] * np.cos(theta), semi_axes[1] * np.sin(theta)], 1) @ rotation.T
        outward = np.stack([semi_axes[1] * np.cos(theta), semi_axes[0] * np.sin(theta)], 1) @ rotation.T
        outward /= np.linalg.norm(outward, axis=1, keepdims=True)
        _add_stroke(
            strokes, rng.uniform((0, 0), shape) + ring, outward, np.ones(len(theta)), rng.uniform(0, 1.5)
        )
    for _ in range(_scaled_count(rng, domain.black_dots, area_scale)):
        strokes[disk(rng.uniform((0, 0), shape), rng.uniform(0.8, 2.5), shape=shape)] += 1.5
    if domain.tangles[1] > 0:
        for _ in range(_scaled_count(rng, domain.tangles, area_scale)):
            _add_tangle(rng, strokes, shape)
    if not strokes.any():
        return strokes
    return 1.0 - np.exp(np.float32(-2.5) * ndimage.gaussian_filter(strokes, 1.0))


def _add_tangle(rng, strokes, shape):
    """A dislocation tangle: 5-25 short, strongly curved lines around one point."""
    center = rng.uniform((0, 0), shape)
    spread = rng.uniform(15, 60)
    for _ in range(rng.integers(5, 26)):
        n_steps = int(rng.uniform(8, 50) / _STROKE_STEP_PX)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, n_steps))
        direction = np.stack([np.sin(heading), np.cos(heading)], 1)
        points = center + rng.normal(0, spread, 2) + _STROKE_STEP_PX * np.cumsum(direction, 0)
        _add_stroke(strokes, points, direction[:, ::-1] * (1, -1), np.ones(n_steps), rng.uniform(0, 1.5))


def _bright_segments(rng, shape, domain, area_scale):
    """Brightening map of short bright dislocation segments: cavity-sized, never labelled."""
    strokes = np.zeros(shape, dtype=np.float32)
    for _ in range(_scaled_count(rng, domain.bright_segments, area_scale)):
        n_steps = int(rng.uniform(3, 15) / _STROKE_STEP_PX) + 1
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.05, n_steps))
        direction = np.stack([np.sin(heading), np.cos(heading)], 1)
        points = rng.uniform((0, 0), shape) + _STROKE_STEP_PX * np.cumsum(direction, 0)
        strength = np.full(n_steps, rng.uniform(0.5, 1.5))
        _add_stroke(strokes, points, direction[:, ::-1] * (1, -1), strength, rng.uniform(0.5, 2.0))
    return np.float32(0.8) * (1.0 - np.exp(np.float32(-1.5) * ndimage.gaussian_filter(strokes, 0.8)))


def _scaled_count(rng, count_range, area_scale):
    return int(round(rng.integers(count_range[0], count_range[1] + 1) * area_scale))


def _add_stroke(strokes, points, normals, weights, half_width):
    """Accumulate a polyline, widened by copies offset along its normals, where it is in frame."""
    for offset in np.arange(-half_width, half_width + 1e-6, _STROKE_STEP_PX) if half_width else (0.0,):
        rows, cols = np.round(points + offset * normals).astype(int).T
        inside = (rows >= 0) & (rows < strokes.shape[0]) & (cols >= 0) & (cols < strokes.shape[1])
        np.add.at(strokes, (rows[inside], cols[inside]), weights[inside] / (1 + half_width))


def _detector(rng, intensity, domain):
    """Scan banding, blur, shot noise (Gaussian with Poisson variance) and read noise, detector PSF."""
    height = intensity.shape[0]
    if domain.scan_banding > 0:
        drift = ndimage.gaussian_filter1d(rng.standard_normal(height, dtype=np.float32), 6.0)
        rows = drift / max(float(drift.std()), 1e-12) + 0.5 * rng.standard_normal(height, dtype=np.float32)
        intensity = intensity + np.float32(domain.scan_banding) * rows[:, None]
    if domain.blur_sigma > 0:
        intensity = ndimage.gaussian_filter(intensity, domain.blur_sigma)
    intensity = np.clip(intensity, 0, None)
    variance = np.float32(domain.read_noise**2)
    if domain.dose is not None:
        variance = variance + intensity / np.float32(domain.dose)
    noisy = intensity + np.sqrt(variance) * rng.standard_normal(intensity.shape, dtype=np.float32)
    if domain.speckle > 0:
        noisy *= 1.0 + np.float32(domain.speckle) * _random_field(rng, noisy.shape, domain.speckle_px)
    return ndimage.gaussian_filter(noisy, _DETECTOR_PSF_SIGMA)


def _line_artefacts(rng, intensity, domain):
    """In place: short horizontal scan streaks, vertical line artefacts, a moire-hatched corner."""
    height, width = intensity.shape
    for _ in range(domain.scan_streaks):
        row, start = int(rng.integers(0, height)), int(rng.integers(0, width))
        length = int(rng.uniform(0.05, 0.5) * width)
        rows = slice(row, min(row + int(rng.integers(1, 4)), height))
        intensity[rows, start : start + length] += np.float32(rng.choice((-1, 1)) * rng.uniform(0.1, 0.4))
    for _ in range(domain.vertical_lines):
        col, start = int(rng.integers(0, width)), int(rng.integers(0, height // 2))
        stop = int(rng.integers(start + height // 4, height + 1))
        cols = slice(col, min(col + int(rng.integers(1, 4)), width))
        intensity[start:stop, cols] += np.float32(rng.choice((-1, 1)) * rng.uniform(0.05, 0.3))
    if domain.moire > 0:
        extent = int(rng.uniform(0.15, 0.4) * min(height, width))
        rows = slice(0, extent) if rng.random() < 0.5 else slice(height - extent, height)
        cols = slice(0, extent) if rng.random() < 0.5 else slice(width - extent, width)
        yy, xx = np.mgrid[rows, cols].astype(np.float32)
        corner_y, corner_x = (0 if rows.start == 0 else height), (0 if cols.start == 0 else width)
        fade = np.exp(-np.hypot(yy - corner_y, xx - corner_x) / np.float32(extent / 3))
        hatch = np.ones_like(fade)
        for _ in range(2):
            theta, period = rng.uniform(0, np.pi), rng.uniform(2.5, 6)
            hatch *= np.cos(np.float32(2 * np.pi / period) * (np.cos(theta) * xx + np.sin(theta) * yy))
        intensity[rows, cols] += np.float32(domain.moire) * fade * hatch


# --- burn-in ---------------------------------------------------------------------------------

_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "8": ("111", "101", "111", "101", "111"),
    "n": ("000", "110", "101", "101", "101"),
    "m": ("000", "111", "111", "101", "101"),
    "k": ("100", "101", "110", "101", "101"),
    "V": ("101", "101", "101", "101", "010"),
    "x": ("000", "101", "010", "101", "101"),
    " ": ("000", "000", "000", "000", "000"),
}


def _glyph_mask(text, scale):
    """Boolean pixels of ``text`` in the 3 x 5 font, magnified ``scale`` times."""
    glyph_rows = np.hstack([np.array([[c == "1" for c in row + "0"] for row in _GLYPHS[ch]]) for ch in text])
    return np.kron(glyph_rows, np.ones((scale, scale), dtype=bool))


def _burn_in_text(rng, image):
    """Acquisition text (voltage, magnification) on a black box in the upper right corner."""
    height, width = image.shape
    text = f"{rng.choice((120, 200, 300))}kV x{rng.choice((20, 40, 50, 80, 100))}k"
    scale = max(1, height // 200)
    mask = _glyph_mask(text, scale)[: max(height - 2 * scale, 0), : max(width - 2 * scale, 0)]
    left = width - mask.shape[1] - scale
    image[: mask.shape[0] + 2 * scale, left - scale :] = 0.0
    image[scale : scale + mask.shape[0], left : left + mask.shape[1]][mask] = 255.0


def _burn_in_scale_bar(rng, image):
    """White scale bar of a round length in nm, labelled above it, in the lower left corner."""
    height, width = image.shape
    nm_per_px = rng.uniform(0.3, 1.2)
    bar_nm = min((20, 50, 100, 200), key=lambda nm: abs(nm / nm_per_px - width / 6))
    bar_px = min(int(bar_nm / nm_per_px), width - 8)
    thickness = max(2, height // 128)
    margin = max(4, height // 40)
    image[height - margin - thickness : height - margin, margin : margin + bar_px] = 255.0
    scale = max(1, height // 170)
    text = _glyph_mask(f"{bar_nm} nm", scale)
    top = height - margin - thickness - 2 * scale - text.shape[0]
    right = min(margin + text.shape[1], width)
    if top >= 0:
        image[top : top + text.shape[0], margin:right][text[:, : right - margin]] = 255.0
