"""Map a frame's intensities to the 0..255 range a model was trained on (one rule per model).

``robust`` (the bundled model): the frame's median goes to 128 and one robust standard deviation
(1.4826 x the median absolute deviation) to 30 grey levels. Median and MAD ignore up to half the
pixels, so dark corners, near-black regions, saturated areas, hot pixels and 16-bit offsets do not
crush the matrix and its cavities into a few grey levels, as extreme-percentile stretching does.
``percentile``: the header's (low, high) percentiles go to 0 and 255 (older checkpoints).
``raw8``: uint8 frames are used as they are (detectron2 models); other dtypes are min-max scaled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_detection_qc.engines.checkpoint import DetectorLoadError

ROBUST_CENTRE = 128.0
ROBUST_GREY_PER_SIGMA = 30.0
_STATS_SAMPLE_PIXELS = 1 << 20  # statistics from a strided sample of about a million pixels


def working_dtype(gray: np.ndarray) -> type:
    """float64 for float64 (and wider) frames, whose values may lie anywhere in the finite
    range (1e300, 1e-300) and would become inf or 0 in float32; float32 otherwise."""
    return np.float64 if gray.dtype.kind == "f" and gray.dtype.itemsize > 4 else np.float32


def _sample(gray: np.ndarray) -> np.ndarray:
    step = max(1, int(np.sqrt(gray.size / _STATS_SAMPLE_PIXELS)))
    return gray[::step, ::step].astype(working_dtype(gray)).ravel()


def robust_centre_and_spread(gray: np.ndarray) -> tuple[float, float] | None:
    """(median, robust sigma) of a frame; None when it has no contrast at all."""
    sample = _sample(gray)
    low, high = float(sample.min()), float(sample.max())
    if high <= low:
        low, high = float(gray.min()), float(gray.max())
        if high <= low:
            return None
    centre = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - centre)))
    if sigma <= 0:  # more than half the pixels share one value: fall back to the full range
        sigma = (high - low) / 8.0
    return centre, sigma


def scale_to_255(gray: np.ndarray, normalisation: dict[str, Any]) -> np.ndarray | None:
    """float32 0..255 version of a grayscale frame for this model; None for a constant frame."""
    mode = normalisation["intensity"]
    if mode == "robust":
        stats = robust_centre_and_spread(gray)
        if stats is None:
            return None
        centre, sigma = stats
        work = working_dtype(gray)
        with np.errstate(over="ignore", invalid="ignore"):  # beyond +-inf is clipped to 0 or 255 below
            gain = work(ROBUST_GREY_PER_SIGMA) / work(sigma)
            scaled = (gray.astype(work) - work(centre)) * gain + work(ROBUST_CENTRE)
        return np.clip(scaled, 0, 255, out=scaled).astype(np.float32, copy=False)
    low, high = float(gray.min()), float(gray.max())
    if high <= low:
        return None
    if mode == "raw8" and gray.dtype == np.uint8:
        return gray.astype(np.float32)
    if mode == "percentile":
        low, high = np.percentile(gray, normalisation["percentiles"])
        if high <= low:
            low, high = float(gray.min()), float(gray.max())
    elif mode != "raw8":
        raise DetectorLoadError(f"unknown input intensity mode {mode!r} in the model header")
    work = working_dtype(gray)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = (gray.astype(work) - work(low)) * (work(255.0) / (work(high) - work(low)))
    return np.clip(scaled, 0, 255, out=scaled).astype(np.float32, copy=False)
