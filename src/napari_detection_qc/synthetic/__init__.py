"""Seeded synthetic TEM cavity micrographs with exact instance masks.

``frames``: one frame from a ``Domain`` of imaging knobs, with named presets (domain shifts).
``realistic``: randomized frames whose knobs are all drawn per frame,
stored as 8-bit or 16-bit pixels.
"""

from .frames import DEFAULT, PRESETS, Domain, frame_seed, get_domain, make_frame, make_stack, render_frame
from .realistic import (
    EMPTY_FRAME_FAMILIES,
    REALISTIC_FAMILIES,
    family_frame,
    make_realistic_frame,
    realistic_domain,
    realistic_shape,
)

__all__ = [
    "DEFAULT",
    "EMPTY_FRAME_FAMILIES",
    "PRESETS",
    "REALISTIC_FAMILIES",
    "Domain",
    "family_frame",
    "frame_seed",
    "get_domain",
    "make_frame",
    "make_realistic_frame",
    "make_stack",
    "realistic_domain",
    "realistic_shape",
    "render_frame",
]
