"""Seeded synthetic TEM cavity micrographs with exact instance masks.

``frames``: one frame from a ``Domain`` of imaging knobs, with named presets (domain shifts).
``realistic``: randomized frames whose knobs are all drawn per frame,
stored as 8-bit or 16-bit pixels.
``defects``: frames of other defect types (dislocation loops, black dots, precipitates), on the
same backgrounds and noise, for checking that tools made for cavities say when they do not apply.
"""

from napari_detection_qc.synthetic.defects import DEFECT_FAMILIES, defect_frame, make_defect_frame
from napari_detection_qc.synthetic.frames import (
    DEFAULT,
    PRESETS,
    Domain,
    frame_seed,
    get_domain,
    make_frame,
    make_stack,
    render_frame,
)
from napari_detection_qc.synthetic.realistic import (
    EMPTY_FRAME_FAMILIES,
    REALISTIC_FAMILIES,
    family_frame,
    make_realistic_frame,
    realistic_domain,
    realistic_shape,
)

__all__ = [
    "DEFAULT",
    "DEFECT_FAMILIES",
    "EMPTY_FRAME_FAMILIES",
    "PRESETS",
    "REALISTIC_FAMILIES",
    "Domain",
    "defect_frame",
    "family_frame",
    "frame_seed",
    "get_domain",
    "make_defect_frame",
    "make_frame",
    "make_realistic_frame",
    "make_stack",
    "realistic_domain",
    "realistic_shape",
    "render_frame",
]
