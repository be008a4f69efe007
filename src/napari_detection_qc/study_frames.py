"""The synthetic-domain study frames: every domain preset of ``synthetic`` at random severities.

Both the bundled default forest (``benchmarks/forest_study.py``) and the forest fitted for a
fine-tuned detector learn from these frames: their detection quality varies for known reasons
(focus, dose, size, clutter), which a handful of user-labelled frames alone cannot show.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pandas as pd

from .synthetic import DEFAULT, PRESETS, Domain, make_frame

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
            values[field.name] = tuple(int(round(v)) if isinstance(x, int) else float(v) for v, x in zip(mixed, a))
        else:
            values[field.name] = (1 - severity) * a + severity * b
    return replace(clean, **values)


def frame_plan(frames_per_domain: int) -> pd.DataFrame:
    """(domain, severity, seed) of every study frame; clean frames have severity 0. The first
    ``n`` frames per domain are the same for every ``frames_per_domain >= n``."""
    rng = np.random.default_rng(STUDY_SEED)
    rows = []
    for d, name in enumerate(PRESETS):
        for i in range(frames_per_domain):
            severity = 0.0 if name == "clean" else float(rng.uniform(0.3, 1.0))
            rows.append({"domain": name, "severity": round(severity, 4), "seed": STUDY_SEED + 10_000 * d + i})
    return pd.DataFrame(rows)


def study_frame(domain: str, severity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of one planned study frame."""
    return make_frame(seed, STUDY_SHAPE, blend(DEFAULT, PRESETS[domain], severity))
