"""The types and ranges a detector header may hold, checked before any of it builds a model.

A checkpoint's header sizes the network (channels, head widths, anchor lists), the input resize
and the object-size ladder. Each bound below is far above every model this product ships or
imports (R50-FPN: 256 FPN channels, a 1024-wide box head, 800/1333 px resize; the bundled model:
resampling factors 1/16 to 1.5) and far below what would exhaust memory or loop for long: a
header outside them is refused with one line naming the field, never trusted.
"""

from __future__ import annotations

from typing import Any

from napari_detection_qc.engines.checkpoint import DetectorLoadError
from napari_detection_qc.validation import (
    Anything,
    Flag,
    Int,
    Maybe,
    Real,
    Record,
    SchemaError,
    Seq,
    Spec,
    Text,
    validate,
)

MAX_CHANNELS = 1024
MAX_BOX_HEAD_DIM = 4096
MAX_RESIZE_PX = 4096
MAX_SHORTEST_EDGE_PX = 2048
MAX_PROPOSALS = 100_000
MIN_RESAMPLE_FACTOR = 1 / 256
MAX_RESAMPLE_FACTOR = 4.0
"""The object-size ladder runs from 2 x max_factor down to min_factor by halving: at most 12 rungs;
a frame is enlarged at most 4 times per side (the bundled model: 1.5)."""
FPN_LEVELS = 5

PROBABILITY = Real(0.0, 1.0)
WIDTH = Int(1, MAX_CHANNELS)
PROPOSALS = Int(1, MAX_PROPOSALS)
SAMPLES = Int(1, 1 << 16)

BACKBONE = Record(
    {
        "name": Text(("compact", "resnet18", "resnet34", "resnet50", "resnet101"), noun="backbone"),
        "stem_widths": Seq(WIDTH, 2, 2),
        "stage_widths": Seq(WIDTH, 4, 4),
        "blocks_per_stage": Seq(Int(1, 64), 4, 4),
        "stride_in_1x1": Flag(),
        "norm": Text(("frozen_bn", "bn")),
    },
    optional=frozenset({"stem_widths", "stage_widths", "blocks_per_stage", "stride_in_1x1", "norm"}),
)
ARCHITECTURE = Record(
    {
        "name": Text(max_length=200),
        "backbone": BACKBONE,
        "fpn_channels": WIDTH,
        "anchor_sizes": Seq(Seq(Real(0.0, MAX_RESIZE_PX, open_low=True), 1, 16), FPN_LEVELS, FPN_LEVELS),
        "aspect_ratios": Seq(Real(1e-3, 1e3), 1, 16),
        "resize": Record(
            {
                "shortest_edge": Maybe(Int(1, MAX_SHORTEST_EDGE_PX)),
                "max_size": Maybe(Int(1, MAX_RESIZE_PX)),
                "size_divisible": Int(1, 256),
            }
        ),
        "rpn": Record(
            {
                "fg_iou": PROBABILITY,
                "bg_iou": PROBABILITY,
                "batch_size_per_image": SAMPLES,
                "positive_fraction": PROBABILITY,
                "pre_nms_top_n_train": PROPOSALS,
                "post_nms_top_n_train": PROPOSALS,
                "pre_nms_top_n_test": PROPOSALS,
                "post_nms_top_n_test": PROPOSALS,
                "nms_thresh": PROBABILITY,
                "score_thresh_test": PROBABILITY,
            },
            optional=frozenset({"score_thresh_test"}),
        ),
        "roi": Record(
            {
                "fg_iou": PROBABILITY,
                "bg_iou": PROBABILITY,
                "batch_size_per_image": SAMPLES,
                "positive_fraction": PROBABILITY,
                "nms_thresh": PROBABILITY,
                "box_reg_weights": Seq(Real(0.0, 1e4, open_low=True), 4, 4),
                "box_head_dim": Int(1, MAX_BOX_HEAD_DIM),
                "mask_head_widths": Seq(WIDTH, 1, 8),
                "roi_align_sampling_ratio": Int(0, 16),
            }
        ),
        "mask_paste": Text(max_length=64),
        "low_rank": Anything(),
    },
    optional=frozenset({"low_rank", "mask_paste"}),
)
OBJECT_SIZE = Record(
    {
        "target_px": Real(0.0, 4096.0, open_low=True),
        "min_factor": Real(MIN_RESAMPLE_FACTOR, MAX_RESAMPLE_FACTOR),
        "max_factor": Real(MIN_RESAMPLE_FACTOR, MAX_RESAMPLE_FACTOR),
        "chooser": Anything(),
    },
    optional=frozenset({"chooser"}),
)
INPUT = Record(
    {
        "intensity": Text(("robust", "percentile", "raw8"), noun="input intensity mode"),
        "channel_order": Text(max_length=16),
        "pixel_mean": Seq(Real(-1e4, 1e4), 3, 3),
        "pixel_std": Seq(Real(0.0, 1e4, open_low=True), 3, 3),
        "percentiles": Seq(Real(0.0, 100.0), 2, 2),
        "object_size": Maybe(OBJECT_SIZE),
    },
    optional=frozenset({"channel_order", "percentiles", "object_size"}),
)
HEADER = Record(
    {
        "name": Text(max_length=500),
        "architecture": ARCHITECTURE,
        "input": INPUT,
        "sha256": Text(max_length=64),
        "score_threshold": PROBABILITY,
        "verifier": Maybe(
            Record({"min_probability": PROBABILITY, "keep_best_above": PROBABILITY}, optional=frozenset())
        ),
    },
    optional=frozenset({"name", "score_threshold", "verifier"}),
)


class _Consistent(Spec):
    """The header's fields that constrain each other (a per-field range cannot say these)."""

    def check(self, value: Any, where: str) -> Any:
        header = HEADER.check(value, where)
        architecture = header["architecture"]
        backbone = architecture["backbone"]
        if backbone["name"] == "compact":
            for key in ("stem_widths", "stage_widths", "blocks_per_stage"):
                if key not in backbone:
                    raise SchemaError(f"architecture.backbone.{key}", "missing (a compact backbone needs it)")
        resize = architecture["resize"]
        if resize["shortest_edge"] is not None and resize["max_size"] is None:
            raise SchemaError("architecture.resize.max_size", "missing while shortest_edge is set")
        rule = header["input"].get("object_size")
        if rule is not None and rule["min_factor"] > rule["max_factor"]:
            raise SchemaError("input.object_size.min_factor", "is above max_factor")
        if header["input"]["intensity"] == "percentile" and "percentiles" not in header["input"]:
            raise SchemaError("input.percentiles", "missing (intensity is percentile)")
        return header


def check_detector_header(header: Any, source) -> dict[str, Any]:
    """``header`` (from a checkpoint or built from a detectron2 config) if every field the engine
    reads lies inside its range; else a one-line :class:`DetectorLoadError` naming ``source`` and
    the field."""
    return validate(header, _Consistent(), source, "detector header", error=DetectorLoadError)
