"""Import a detectron2 Mask R-CNN (ResNet-FPN) ``.pth`` into the torchvision engine, no detectron2.

What has to match for the same detections: parameter names (``KEY_RULES``), the caffe2-style
ResNet (stride in the 1x1 conv, FrozenBN), BGR input with detectron2's pixel mean/std, aligned
RoIAlign with adaptive sampling, size-major unrounded anchors, box-regression weights, and the
class order of the heads (detectron2 puts background last and has no background rows in its box
and mask predictors; torchvision puts background first). The config comes from the run's YAML
(a safe YAML loader without aliases, bounded in size and ``_BASE_`` depth; ``_BASE_`` files are
followed when present) on top of the seed paper's
settings, so a bare ``model_final.pth`` is read with the paper's config.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from napari_detection_qc.engines.base import file_sha256
from napari_detection_qc.engines.checkpoint import DetectorLoadError, read_torch_file
from napari_detection_qc.engines.header_schema import check_detector_header
from napari_detection_qc.engines.torchvision_maskrcnn import (
    DETECTRON2_INPUT,
    PAPER_R50_FPN,
    new_checkpoint_header,
)
from napari_detection_qc.validation import Int, SchemaError, parsing

# detectron2's Base-RCNN-FPN / mask_rcnn_R_50_FPN_3x settings (on top of get_cfg() defaults) ...
DETECTRON2_R50_FPN_MASK_RCNN: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.MASK_ON": True,
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead",
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 4,
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
}
# ... and the seed paper's changes to them.
PAPER_DETECTRON2_CONFIG: dict[str, Any] = {
    **DETECTRON2_R50_FPN_MASK_RCNN,
    "MODEL.ANCHOR_GENERATOR.SIZES": [[4, 8, 16, 32, 64, 128, 256, 512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.7],
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.4],
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 128,
    "MODEL.ROI_HEADS.NUM_CLASSES": 1,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.1,
    "TEST.DETECTIONS_PER_IMAGE": 1000,
}

# detectron2 parameter name pattern -> torchvision name.
KEY_RULES: list[tuple[str, Callable[[re.Match], str]]] = [
    (r"backbone\.bottom_up\.stem\.conv1\.weight", lambda m: "backbone.body.conv1.weight"),
    (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", lambda m: f"backbone.body.bn1.{m[1]}"),
    (
        r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight",
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)",
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}",
    ),
    (
        r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight",
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight",
    ),
    (
        r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(\w+)",
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}",
    ),
    (r"backbone\.fpn_lateral(\d)\.(\w+)", lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (r"backbone\.fpn_output(\d)\.(\w+)", lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}"),
    (r"proposal_generator\.rpn_head\.conv\.(\w+)", lambda m: f"rpn.head.conv.0.0.{m[1]}"),
    (r"proposal_generator\.rpn_head\.objectness_logits\.(\w+)", lambda m: f"rpn.head.cls_logits.{m[1]}"),
    (r"proposal_generator\.rpn_head\.anchor_deltas\.(\w+)", lambda m: f"rpn.head.bbox_pred.{m[1]}"),
    (r"roi_heads\.box_head\.fc1\.(\w+)", lambda m: f"roi_heads.box_head.fc6.{m[1]}"),
    (r"roi_heads\.box_head\.fc2\.(\w+)", lambda m: f"roi_heads.box_head.fc7.{m[1]}"),
    (r"roi_heads\.mask_head\.mask_fcn(\d)\.(\w+)", lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"),
    (r"roi_heads\.mask_head\.deconv\.(\w+)", lambda m: f"roi_heads.mask_predictor.conv5_mask.{m[1]}"),
]
IGNORED_KEYS = re.compile(r"(pixel_mean|pixel_std|.*num_batches_tracked)$")


def torchvision_name(name: str) -> str | None:
    """The torchvision engine's name for one detectron2 parameter (None: no rule, not R-FPN)."""
    for pattern, rename in KEY_RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return rename(match)
    return None


def convert_state_dict(d2_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 Mask R-CNN weights -> torchvision MaskRCNN weights (one foreground class)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in d2_state.items():
        tensor = torch.as_tensor(tensor)
        if IGNORED_KEYS.match(name):
            continue
        if name.startswith(("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")):
            continue
        target = torchvision_name(name)
        if target is None:
            unknown.append(name)
        else:
            out[target] = tensor
    if unknown:
        raise DetectorLoadError(
            f"not a detectron2 Mask R-CNN ResNet-FPN checkpoint: {len(unknown)} unrecognised parameters, "
            f"e.g. {unknown[:3]}"
        )
    out.update(convert_predictors(d2_state))
    return out


def convert_predictors(d2_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Class scores: background moves from last to first. Box deltas and mask logits get a zero
    background slot; class-agnostic heads (4 deltas / 1 mask) serve the one class directly."""
    try:
        cls_w = d2_state["roi_heads.box_predictor.cls_score.weight"]
        cls_b = d2_state["roi_heads.box_predictor.cls_score.bias"]
        box_w = d2_state["roi_heads.box_predictor.bbox_pred.weight"]
        box_b = d2_state["roi_heads.box_predictor.bbox_pred.bias"]
        mask_w = d2_state["roi_heads.mask_head.predictor.weight"]
        mask_b = d2_state["roi_heads.mask_head.predictor.bias"]
    except KeyError as missing:
        raise DetectorLoadError(f"the detectron2 checkpoint lacks {missing}; is it a Mask R-CNN?") from None
    if cls_w.shape[0] != 2 or box_w.shape[0] != 4 or mask_w.shape[0] != 1:
        raise DetectorLoadError(
            f"only one-class detectron2 models can be imported; this one scores {cls_w.shape[0] - 1} classes"
        )
    order = torch.tensor([1, 0])
    return {
        "roi_heads.box_predictor.cls_score.weight": cls_w[order],
        "roi_heads.box_predictor.cls_score.bias": cls_b[order],
        "roi_heads.box_predictor.bbox_pred.weight": torch.cat([torch.zeros_like(box_w), box_w]),
        "roi_heads.box_predictor.bbox_pred.bias": torch.cat([torch.zeros_like(box_b), box_b]),
        "roi_heads.mask_predictor.mask_fcn_logits.weight": torch.cat([torch.zeros_like(mask_w), mask_w]),
        "roi_heads.mask_predictor.mask_fcn_logits.bias": torch.cat([torch.zeros_like(mask_b), mask_b]),
    }


# -- config ----------------------------------------------------------------------------------------
def read_config(config_path: Path | None) -> dict[str, Any]:
    """Flat ``{"MODEL.X.Y": value}``: the paper's config updated by the YAML (and its bases)."""
    flat = dict(PAPER_DETECTRON2_CONFIG)
    if config_path is not None:
        flat.update(flatten(load_yaml_with_bases(Path(config_path))))
    return flat


MAX_CONFIG_BYTES = 1 << 20  # detectron2 configs are a few kB
MAX_BASE_DEPTH = 10  # detectron2's own chains are 2-3 files long


def _bounded_yaml_loader():
    """A safe YAML loader without aliases: configs never need them, and ``*a`` repeated in nested
    lists is the "billion laughs" bomb that takes gigabytes once the tree is walked."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    "YAML aliases (*name) are not allowed in a detector config",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)

    return BoundedLoader


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """One config file as a mapping; size, aliases and nesting bounded, errors naming the file."""
    import yaml

    if not path.is_file():
        raise DetectorLoadError(f"detectron2 config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise DetectorLoadError(f"{path}: a detector config over {MAX_CONFIG_BYTES} bytes is not plausible")
    try:
        config = yaml.load(path.read_text(), Loader=_bounded_yaml_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise DetectorLoadError(f"{path} is not a readable YAML config: {error}") from error
    except RecursionError:
        raise DetectorLoadError(f"{path}: YAML nested too deeply for a detector config") from None
    except (UnicodeDecodeError, OSError) as error:
        raise DetectorLoadError(f"{path} is not a readable YAML config: {error}") from error
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise DetectorLoadError(
            f"{path}: a detector config must be a YAML mapping, got {type(config).__name__}"
        )
    return config


def load_yaml_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config with its ``_BASE_`` chain merged under it; a loop or an overly long chain is an error."""
    path = Path(path)
    if path.resolve() in seen:
        raise DetectorLoadError(f"{path}: its _BASE_ chain loops back to {path.name}")
    if len(seen) >= MAX_BASE_DEPTH:
        raise DetectorLoadError(f"{path}: _BASE_ chain longer than {MAX_BASE_DEPTH} files")
    config = read_yaml_mapping(path)
    base = config.pop("_BASE_", None)
    if base is not None and not isinstance(base, str):
        raise DetectorLoadError(f"{path}: _BASE_ must be a file name, got {base!r}")
    if base and (path.parent / base).is_file():
        merged = load_yaml_with_bases(path.parent / base, (*seen, path.resolve()))
        deep_update(merged, config)
        return merged
    return config


def deep_update(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def architecture_from_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The torchvision engine's architecture for a detectron2 ResNet-FPN Mask R-CNN config."""
    if cfg.get("MODEL.ROI_HEADS.NUM_CLASSES", 1) != 1:
        raise DetectorLoadError("only one-class detectron2 models can be imported (ROI_HEADS.NUM_CLASSES: 1)")
    if cfg.get("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2") != "ROIAlignV2":
        raise DetectorLoadError("only ROIAlignV2 pooling (detectron2's default) can be imported")
    arch = copy.deepcopy(PAPER_R50_FPN)
    arch["name"] = f"detectron2_maskrcnn_R{cfg.get('MODEL.RESNETS.DEPTH', 50)}_FPN"
    arch["backbone"]["name"] = f"resnet{cfg.get('MODEL.RESNETS.DEPTH', 50)}"
    arch["backbone"]["stride_in_1x1"] = bool(cfg.get("MODEL.RESNETS.STRIDE_IN_1X1", True))
    arch["fpn_channels"] = cfg.get("MODEL.FPN.OUT_CHANNELS", 256)
    sizes = cfg["MODEL.ANCHOR_GENERATOR.SIZES"]
    arch["anchor_sizes"] = [list(sizes[0])] * 5 if len(sizes) == 1 else [list(level) for level in sizes]
    ratios = cfg["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"]
    arch["aspect_ratios"] = list(ratios[0])
    arch["resize"]["shortest_edge"] = _last(cfg.get("INPUT.MIN_SIZE_TEST", 800))
    arch["resize"]["max_size"] = cfg.get("INPUT.MAX_SIZE_TEST", 1333)
    rpn, roi = arch["rpn"], arch["roi"]
    rpn["bg_iou"], rpn["fg_iou"] = cfg["MODEL.RPN.IOU_THRESHOLDS"]
    rpn["pre_nms_top_n_test"] = cfg.get("MODEL.RPN.PRE_NMS_TOPK_TEST", 1000)
    rpn["post_nms_top_n_test"] = cfg.get("MODEL.RPN.POST_NMS_TOPK_TEST", 1000)
    rpn["nms_thresh"] = cfg.get("MODEL.RPN.NMS_THRESH", 0.7)
    roi["fg_iou"] = roi["bg_iou"] = cfg["MODEL.ROI_HEADS.IOU_THRESHOLDS"][0]
    roi["batch_size_per_image"] = cfg["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"]
    roi["nms_thresh"] = cfg.get("MODEL.ROI_HEADS.NMS_THRESH_TEST", 0.5)
    roi["box_reg_weights"] = list(cfg.get("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", [10.0, 10.0, 5.0, 5.0]))
    roi["box_head_dim"] = cfg.get("MODEL.ROI_BOX_HEAD.FC_DIM", 1024)
    try:  # checked before it sizes a list
        convs = Int(1, 8).check(cfg.get("MODEL.ROI_MASK_HEAD.NUM_CONV", 4), "MODEL.ROI_MASK_HEAD.NUM_CONV")
    except SchemaError as error:
        raise DetectorLoadError(f"invalid detectron2 config: {error}") from None
    roi["mask_head_widths"] = [cfg.get("MODEL.ROI_MASK_HEAD.CONV_DIM", 256)] * convs
    roi["roi_align_sampling_ratio"] = cfg.get("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 0)
    return arch


def input_from_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """detectron2's input convention; an RGB-format model gets its mean/std in its own order."""
    normalisation = dict(DETECTRON2_INPUT)
    normalisation["channel_order"] = cfg.get("INPUT.FORMAT", "BGR")
    normalisation["pixel_mean"] = list(cfg.get("MODEL.PIXEL_MEAN", DETECTRON2_INPUT["pixel_mean"]))
    normalisation["pixel_std"] = list(cfg.get("MODEL.PIXEL_STD", DETECTRON2_INPUT["pixel_std"]))
    return normalisation


def _last(value):
    return value[-1] if isinstance(value, (list, tuple)) else value


# -- entry point -----------------------------------------------------------------------------------
def read_detectron2_weights(path: Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of a detectron2 checkpoint, read with ``weights_only=True``."""
    payload = read_torch_file(
        path,
        "detectron2 weights",
        "cannot be read safely as detectron2 weights (corrupt, or it holds objects other than "
        "tensors; re-save it with torch.save({'model': model.state_dict()}))",
    )
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("backbone.bottom_up.") for k in state):
        raise DetectorLoadError(f"{path} does not hold a detectron2 ResNet-FPN model state dict")
    return state


def import_detectron2_checkpoint(weights: Path, config: Path | None = None) -> tuple[dict, dict]:
    """(header, state dict) for the torchvision engine from a detectron2 ``.pth`` (+ its YAML)."""
    cfg = read_config(config)
    source = config if config is not None else weights
    try:
        with parsing(source, "detectron2 config"):
            arch = architecture_from_config(cfg)
            normalisation = input_from_config(cfg)
    except DetectorLoadError as error:
        raise DetectorLoadError(f"{source}: {error}") from None
    header = new_checkpoint_header(
        arch,
        name=f"detectron2:{Path(weights).name}",
        normalisation=normalisation,
        training=f"imported from detectron2 weights {Path(weights).name}"
        + (f" with config {Path(config).name}" if config else " with the seed paper's config"),
    )
    header = check_detector_header({**header, "sha256": ""}, source)  # before the weights are read
    state = convert_state_dict(read_detectron2_weights(weights))
    header["sha256"] = file_sha256(weights)
    return header, state
