"""Which object size each frame was detected at, and which frames of a stack look mis-sized.

The automatic object size decides most of the frames where detection fails outright: when it
sizes a frame to background blotches instead of its cavities, nearly every detection of that frame
is wrong (the 4 of 146 held-out synthetic frames sized more than 3x off all have F1 0), and nothing
else tells the user. Frames of one stack are usually one sample at one magnification, so a
frame sized far from the others deserves a look, and a size set by hand.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

OUTLIER_RATIO = 3.0
"""A frame sized more than this many times above or below the stack's median is flagged."""
MIN_SIZED_FRAMES = 3
"""Below this many sized frames there is no median to trust."""

FrameSizes = Mapping[int, float | None]
"""Frame index -> typical object diameter (native px) it was detected at; None: not sized."""


def known_sizes(sizes: FrameSizes) -> dict[int, float]:
    return {int(t): float(s) for t, s in sizes.items() if s is not None and np.isfinite(s) and s > 0}


def size_outliers(sizes: FrameSizes, ratio: float = OUTLIER_RATIO) -> list[int]:
    """Frames whose size is more than ``ratio`` times off the median of the sized frames."""
    known = known_sizes(sizes)
    if len(known) < MIN_SIZED_FRAMES:
        return []
    median = float(np.median(list(known.values())))
    return sorted(t for t, s in known.items() if max(s / median, median / s) > ratio)


def stack_size(sizes: FrameSizes) -> float | None:
    """The stack's typical object size: the median of its sized frames other than the outliers."""
    outliers = set(size_outliers(sizes))
    usual = [s for t, s in known_sizes(sizes).items() if t not in outliers]
    return float(np.median(usual)) if usual else None


def describe_sizes(sizes: FrameSizes, given: float | None, given_as: str = "set by hand") -> str:
    """One line for the user: the size frames were detected at (``given``: one size for all)."""
    if given:
        return f"object size {given:.3g} px ({given_as})"
    known = known_sizes(sizes)
    if not known:
        return "object size auto: nothing to size, detected at the model's native scale"
    values = np.array(list(known.values()))
    if len(values) == 1:
        return f"object size auto: {values[0]:.0f} px"
    return f"object size auto: median {np.median(values):.0f} px ({values.min():.0f}-{values.max():.0f})"


def outlier_warning(sizes: FrameSizes) -> str | None:
    """What to tell the user about frames sized far from the rest of the stack, or None."""
    outliers = size_outliers(sizes)
    if not outliers:
        return None
    known = known_sizes(sizes)
    median = float(np.median(list(known.values())))
    listed = ", ".join(f"{t} ({known[t]:.0f} px)" for t in outliers[:5]) + ("…" if len(outliers) > 5 else "")
    return (
        f"frame(s) {listed} were sized over {OUTLIER_RATIO:g}x off the stack's median object size "
        f"({median:.0f} px): if their detections look wrong, set the object size by hand and detect "
        "them again"
    )
