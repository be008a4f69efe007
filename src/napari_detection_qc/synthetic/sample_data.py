"""napari sample data: a seeded synthetic TEM stack whose frames come from several domains.

The frames' presets differ, so a detector trained on "clean" frames does well on some frames and
badly on others, which is what the quality widgets are for. No Qt imports.
"""

from __future__ import annotations

from functools import lru_cache

from napari_detection_qc.synthetic import make_stack

SAMPLE_SEED = 20250
SAMPLE_SHAPE = (512, 512)
SAMPLE_FRAME_PRESETS: tuple[str, ...] = (
    "clean",
    "clean",
    "dense",
    "overfocus",
    "clean",
    "low_dose",
    "tiny_cavities",
    "clean",
    "busy_background",
    "blurred",
    "clean",
    "hard_shift",
    "dense",
    "clean",
    "low_dose",
    "overfocus",
    "clean",
    "busy_background",
    "tiny_cavities",
    "hard_shift",
)
"""The preset each frame of the sample stack was drawn from, frame by frame."""


@lru_cache(maxsize=1)
def _sample_stack_arrays():
    """Generate the stack once; both sample functions hand out copies of it."""
    images, labels = make_stack(SAMPLE_SEED, len(SAMPLE_FRAME_PRESETS), SAMPLE_SHAPE, SAMPLE_FRAME_PRESETS)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def sample_stack():
    """The synthetic TEM stack (T, Y, X) float32 in [0, 255] as a napari image layer."""
    images, _ = _sample_stack_arrays()
    metadata = {"frame_presets": list(SAMPLE_FRAME_PRESETS), "seed": SAMPLE_SEED}
    return [
        (
            images.copy(),
            {"name": "synthetic TEM stack", "contrast_limits": (0, 255), "metadata": metadata},
            "image",
        )
    ]


def sample_ground_truth():
    """The stack and its exact cavity masks (T, Y, X) uint16 as a labels layer (copies: paint freely)."""
    _, labels = _sample_stack_arrays()
    return [*sample_stack(), (labels.copy(), {"name": "synthetic TEM stack ground truth"}, "labels")]
