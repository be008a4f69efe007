"""The synthetic-domain study frames: every domain preset of ``synthetic`` at random severities
and the realistic families.

Both the bundled default forest (``benchmarks/forest_study.py``) and the forest fitted for a
fine-tuned detector learn from these frames: their detection quality varies for known reasons
(focus, dose, size, clutter), which a handful of user-labelled frames alone cannot show.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pandas as pd

from napari_detection_qc.synthetic import (
    DEFAULT,
    PRESETS,
    REALISTIC_FAMILIES,
    Domain,
    make_frame,
    make_realistic_frame,
)

STUDY_SEED = 5_000_000
"""Disjoint from the bundled detector's training seeds (0..) and its held-out seeds."""
STUDY_SHAPE = (512, 512)


def blend(clean: Domain, shifted: Domain, severity: float) -> Domain:
    """A domain ``severity`` of the way from clean to a preset: numbers and ranges interpolate
    (dose geometrically), categorical knobs (focus, burn-in) come from the preset."""
    values = {}
    for field in fields(Domain):
        a, b = getattr(clean, field.name), getattr(shifted, field.name)
        if isinstance(a, (bool, str)) or a is None or b is None:
            values[field.name] = b
        elif field.name == "dose":
            values[field.name] = float(np.exp((1 - severity) * np.log(a) + severity * np.log(b)))
        elif isinstance(a, tuple):
            mixed = [(1 - severity) * x + severity * y for x, y in zip(a, b)]
            values[field.name] = tuple(
                int(round(v)) if isinstance(x, int) else float(v) for v, x in zip(mixed, a)
            )
        else:
            values[field.name] = (1 - severity) * a + severity * b
    return replace(clean, **values)


STUDY_FAMILIES = tuple(f for f in REALISTIC_FAMILIES if f != "large_frames")
"""Realistic families in the study (large frames are the realistic family at 2-4k px: slow, same look)."""


def frame_plan(frames_per_domain: int) -> pd.DataFrame:
    """(domain, severity, seed) of every study frame: the named presets at random severities
    (clean frames have severity 0) and the realistic families (severity 1: their own draws)."""
    rng = np.random.default_rng(STUDY_SEED)
    rows = []
    for d, name in enumerate((*PRESETS, *STUDY_FAMILIES)):
        for i in range(frames_per_domain):
            severity = (
                0.0 if name == "clean" else 1.0 if name in STUDY_FAMILIES else float(rng.uniform(0.3, 1.0))
            )
            rows.append({"domain": name, "severity": round(severity, 4), "seed": STUDY_SEED + 10_000 * d + i})
    return pd.DataFrame(rows)


def study_frame(domain: str, severity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of one planned study frame."""
    if domain in STUDY_FAMILIES:
        image, labels, _ = make_realistic_frame(seed, domain)
        return image, labels
    return make_frame(seed, STUDY_SHAPE, blend(DEFAULT, PRESETS[domain], severity))
