"""The default engine: a torchvision Mask R-CNN built from a checkpoint header's architecture.

The architecture is plain data (it travels in the checkpoint header), so any checkpoint can name
its backbone, widths, anchors and resize rule. Two presets: ``PAPER_R50_FPN`` (the seed paper's
detectron2 config: R50-FPN, anchors 4..512 x 0.5/1/2 on every level, 800/1333 resize) and
``COMPACT_FPN`` (the bundled model: a small ResNet-like CNN trained from scratch at native scale).

The engine runs the model's parts itself instead of ``MaskRCNN.forward`` so that the resize and
normalisation follow the header (detectron2 style, caffe2 BGR means included) and masks are pasted
one box at a time into the instance image (torchvision's ``postprocess`` would allocate N
full-size float masks). Three parts differ from stock torchvision to compute what detectron2
computes: unrounded size-major anchors, aligned RoIAlign, and proposals ranked by logit.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import Conv2dNormActivation
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from napari_detection_qc.detections.records import FrameDetections
from napari_detection_qc.engines.base import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD, Detector
from napari_detection_qc.engines.boxmasks import BoxMasks
from napari_detection_qc.engines.checkpoint import (
    DetectorLoadError,
    float32_weights,
    load_checkpoint,
    save_checkpoint,
)
from napari_detection_qc.engines.detection_verifier import DetectionVerifier
from napari_detection_qc.engines.header_schema import check_detector_header
from napari_detection_qc.engines.low_rank import low_rank_conv
from napari_detection_qc.engines.roi_gather import gather_roi_align
from napari_detection_qc.engines.scaling import ScaleRule, Window, central_view
from napari_detection_qc.engines.size_chooser import SizeChooser
from napari_detection_qc.engines.tiling import TILE_PX
from napari_detection_qc.validation import MALFORMED_DATA_ERRORS, one_line

PAPER_ANCHOR_SIZES = [4, 8, 16, 32, 64, 128, 256, 512]
PAPER_ASPECT_RATIOS = [0.5, 1.0, 2.0]
# detectron2's caffe2-style R50 input: BGR channels, 0..255, ImageNet means in BGR order, std 1.
DETECTRON2_INPUT = {
    "intensity": "raw8",
    "channel_order": "BGR",
    "pixel_mean": [103.53, 116.28, 123.675],
    "pixel_std": [1.0, 1.0, 1.0],
}

PAPER_R50_FPN: dict[str, Any] = {
    "name": "maskrcnn_R50_FPN_paper",
    "backbone": {"name": "resnet50", "stride_in_1x1": True, "norm": "frozen_bn"},
    "fpn_channels": 256,
    "anchor_sizes": [PAPER_ANCHOR_SIZES] * 5,
    "aspect_ratios": PAPER_ASPECT_RATIOS,
    "resize": {"shortest_edge": 800, "max_size": 1333, "size_divisible": 32},
    "rpn": {
        "fg_iou": 0.7,
        "bg_iou": 0.3,
        "batch_size_per_image": 256,
        "positive_fraction": 0.5,
        "pre_nms_top_n_train": 2000,
        "post_nms_top_n_train": 1000,
        "pre_nms_top_n_test": 1000,
        "post_nms_top_n_test": 1000,
        "nms_thresh": 0.7,
    },
    "roi": {
        "fg_iou": 0.4,
        "bg_iou": 0.4,
        "batch_size_per_image": 128,
        "positive_fraction": 0.25,
        "nms_thresh": 0.5,
        "box_reg_weights": [10.0, 10.0, 5.0, 5.0],
        "box_head_dim": 1024,
        "mask_head_widths": [256, 256, 256, 256],
        "roi_align_sampling_ratio": 0,
    },
    "mask_paste": "detectron2",
}

COMPACT_FPN: dict[str, Any] = {
    "name": "maskrcnn_compact_fpn",
    "backbone": {
        "name": "compact",
        "stem_widths": [16, 32],
        "stage_widths": [32, 64, 96, 128],
        "blocks_per_stage": [1, 1, 1, 1],
    },
    "fpn_channels": 64,
    "anchor_sizes": [[8, 16], [24, 32], [48, 64], [96, 128], [192, 256]],
    "aspect_ratios": PAPER_ASPECT_RATIOS,
    "resize": {"shortest_edge": None, "max_size": None, "size_divisible": 32},
    "rpn": {
        **PAPER_R50_FPN["rpn"],
        "pre_nms_top_n_train": 1000,
        "post_nms_top_n_train": 500,
        "pre_nms_top_n_test": 1000,
        "post_nms_top_n_test": 500,
        "score_thresh_test": 0.01,
    },
    "roi": {
        **PAPER_R50_FPN["roi"],
        "box_head_dim": 256,
        "mask_head_widths": [64, 64],
        "roi_align_sampling_ratio": 2,
    },
    "mask_paste": "detectron2",
}


# -- model construction ----------------------------------------------------------------------------
class UnroundedAnchorGenerator(AnchorGenerator):
    """detectron2's cell anchors: size-major order and exact (not rounded) corners, which matters
    for the paper's 4 px anchors."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=None):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        heights = (scales[:, None] * torch.sqrt(ratios)[None, :]).reshape(-1)
        widths = (scales[:, None] / torch.sqrt(ratios)[None, :]).reshape(-1)
        return torch.stack([-widths, -heights, widths, heights], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """As torchvision, but each level's stride is the power of two nearest to image/grid size
        (torchvision's floor division gives P6 a stride of 61 instead of 64 on 800 px inputs)."""
        grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
        image_size = image_list.tensors.shape[-2:]
        device = feature_maps[0].device
        strides = [
            [
                torch.tensor(2 ** round(math.log2(image_size[axis] / grid[axis])), device=device)
                for axis in (0, 1)
            ]
            for grid in grid_sizes
        ]
        self.set_cell_anchors(torch.float32, device)  # float32 boxes whatever the maps' precision
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


class LogitRankedRPN(RegionProposalNetwork):
    """Proposals ranked and suppressed by objectness logits, as detectron2 does. torchvision ranks
    by sigmoid probabilities, which all round to 1.0 in float32 above a logit of ~17, so confident
    proposals tie and NMS keeps an arbitrary one of them.

    An architecture's ``rpn.score_thresh_test`` (detectron2 has none: 0) drops proposals below that
    objectness before their NMS at inference: the bundled model's 0.01 cut a 4096 px frame's time by
    a tenth with the same detections."""

    def forward(self, images, features, targets=None):
        """At inference, only the top-ranked anchors of each level are decoded into boxes (the
        same proposals as decoding all ~400k anchors of a 1024 px tile and ranking them after)."""
        if self.training:
            return super().forward(images, features, targets)
        maps = list(features.values())
        objectness, deltas = self.head(maps)
        anchors = self.anchor_generator(images, maps)
        num_anchors_per_level = [level[0].numel() for level in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        num_images = len(anchors)
        logits, top, rows, levels = self.top_anchors(objectness, num_images, num_anchors_per_level)
        chosen = self.box_coder.decode(
            deltas.detach().reshape(num_images, -1, 4)[rows, top].reshape(-1, 4),
            [image_anchors[index] for image_anchors, index in zip(anchors, top, strict=True)],
        ).reshape(num_images, -1, 4)
        boxes, _ = self.suppress(chosen, logits, levels, images.image_sizes)
        return boxes, {}

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        logits, top, rows, levels = self.top_anchors(objectness, proposals.shape[0], num_anchors_per_level)
        return self.suppress(proposals[rows, top], logits, levels, image_shapes)

    def top_anchors(self, objectness, num_images: int, num_anchors_per_level: list[int]):
        """The ``pre_nms_top_n`` best anchors of each level per image: (their logits, their
        indices, the row index to gather with, their pyramid levels)."""
        logits = objectness.detach().reshape(num_images, -1)
        top = self._get_top_n_idx(logits, num_anchors_per_level)
        rows = torch.arange(num_images, device=logits.device)[:, None]
        levels = torch.cat(
            [torch.full((n,), level, dtype=torch.int64) for level, n in enumerate(num_anchors_per_level)]
        ).to(logits.device)
        return logits[rows, top], top, rows, levels[top]

    def suppress(
        self, proposals, logits, levels, image_shapes
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: clip, drop tiny (and, at inference, hopeless) proposals, NMS per level by
        logit, keep the best ``post_nms_top_n``; (boxes, objectness) lists."""
        min_objectness = 0.0 if self.training else self.score_thresh  # training samples from all
        boxes_per_image, scores_per_image = [], []
        for boxes, scores, level, shape in zip(proposals, logits, levels, image_shapes, strict=True):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            keep = keep[torch.sigmoid(scores[keep]) >= min_objectness]
            keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], level[keep], self.nms_thresh)]
            keep = keep[: self.post_nms_top_n()]
            boxes_per_image.append(boxes[keep])
            scores_per_image.append(torch.sigmoid(scores[keep]))
        return boxes_per_image, scores_per_image


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign with ``aligned=True`` (detectron2's ROIAlignV2: pixel centres at +0.5)."""

    def forward(self, x, boxes, image_shapes):
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes) if len(features) > 1 else torch.zeros(len(rois), dtype=torch.int64)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            if len(index):
                result[index] = fast_roi_align(
                    feature, rois[index], self.output_size, scale, self.sampling_ratio
                ).to(result.dtype)
        return result


def fast_roi_align(feature, rois, output_size, scale: float, sampling_ratio: int) -> torch.Tensor:
    """Aligned RoIAlign, by the fastest route that gives the same numbers: a gather of
    channels-last rows when detecting on CPU (``roi_gather.py``), else torchvision's kernel."""
    inference = not (torch.is_grad_enabled() and feature.requires_grad)
    if feature.device.type == "cpu" and sampling_ratio > 0 and inference:
        with torch.autocast("cpu", enabled=False):
            return gather_roi_align(feature.float(), rois, output_size, scale, sampling_ratio)
    # torchvision's kernel reads NCHW: one copy here rather than one per thread of the split
    return threaded_roi_align(feature.contiguous(), rois, output_size, scale, sampling_ratio)


MIN_BOXES_PER_THREAD = 32
_roi_threads: dict[int, ThreadPoolExecutor] = {}


def threaded_roi_align(feature, rois, output_size, scale: float, sampling_ratio: int) -> torch.Tensor:
    """Aligned RoIAlign with the boxes split over torch's CPU threads (torchvision's CPU kernel
    runs on one core); used where ``gather_roi_align`` does not apply (adaptive sampling, training)."""
    threads = min(torch.get_num_threads(), len(rois) // MIN_BOXES_PER_THREAD)
    if feature.device.type != "cpu" or threads < 2 or (torch.is_grad_enabled() and feature.requires_grad):
        return roi_align(feature, rois, output_size, scale, sampling_ratio, aligned=True)
    pool = _roi_threads.get(threads)
    if pool is None:  # one pool per thread count, made once
        pool = _roi_threads[threads] = ThreadPoolExecutor(threads, thread_name_prefix="roi_align")
    parts = pool.map(
        lambda part: roi_align(feature, part, output_size, scale, sampling_ratio, aligned=True),
        rois.tensor_split(threads),
    )
    return torch.cat(list(parts))


class FastMaskPredictor(MaskRCNNPredictor):
    """torchvision's mask predictor (2x2 stride-2 transposed conv, ReLU, 1x1 conv to class logits)
    computed without the transposed convolution: each output pixel of a 2x2 stride-2 deconvolution
    sees one input pixel, so it is a 1x1 convolution to four times the channels (one group per
    output sub-pixel), ReLU, a grouped 1x1 convolution to the logits, and a pixel shuffle of the
    few logit channels. Same weights and numbers; on CPU ``conv_transpose2d`` and the shuffle of
    its wide output took a sixth of a dense frame's time. Without any region (a training batch
    with no object) it runs torchvision's own path: the pixel shuffle's backward fails on an
    empty batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return super().forward(x)
        deconv, logits = self.conv5_mask, self.mask_fcn_logits
        in_channels, width = deconv.weight.shape[:2]
        classes = logits.weight.shape[0]
        # (C, O, a, b) -> ((a, b), O) output channels; logits per sub-pixel group
        up = deconv.weight.permute(2, 3, 1, 0).reshape(4 * width, in_channels, 1, 1)
        hidden = F.relu(F.conv2d(x, up, deconv.bias.repeat(4)))
        grouped = F.conv2d(hidden, logits.weight.repeat(4, 1, 1, 1), logits.bias.repeat(4), groups=4)
        # ((a, b), class) -> (class, (a, b)) channels, as pixel_shuffle reads them
        rows, cols = grouped.shape[-2:]
        grouped = (
            grouped.reshape(-1, 4, classes, rows, cols).transpose(1, 2).reshape(-1, 4 * classes, rows, cols)
        )
        return F.pixel_shuffle(grouped, 2)


class CompactBackbone(nn.Sequential):
    """A small ResNet-like CNN with BatchNorm: two strided stem convs, then one stage of
    BasicBlocks per FPN level (strides 4, 8, 16, 32)."""

    def __init__(
        self, stem_widths: Sequence[int], stage_widths: Sequence[int], blocks_per_stage: Sequence[int]
    ):
        norm = nn.BatchNorm2d
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = nn.Sequential(
            Conv2dNormActivation(3, stem_widths[0], 3, stride=2, norm_layer=norm),
            Conv2dNormActivation(stem_widths[0], stem_widths[1], 3, stride=2, norm_layer=norm),
        )
        in_width = stem_widths[1]
        for index, (width, blocks) in enumerate(zip(stage_widths, blocks_per_stage, strict=True)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or in_width != width:
                downsample = nn.Sequential(
                    nn.Conv2d(in_width, width, 1, stride=stride, bias=False), norm(width)
                )
            stage = [resnet.BasicBlock(in_width, width, stride, downsample, norm_layer=norm)]
            stage += [resnet.BasicBlock(width, width, norm_layer=norm) for _ in range(blocks - 1)]
            layers[f"layer{index + 1}"] = nn.Sequential(*stage)
            in_width = width
        super().__init__(layers)


def build_backbone(spec: dict[str, Any], fpn_channels: int) -> BackboneWithFPN:
    """The FPN backbone a header names: ``compact`` or a torchvision ``resnet18/34/50/101``."""
    name = spec["name"]
    return_layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    if name == "compact":
        body = CompactBackbone(spec["stem_widths"], spec["stage_widths"], spec["blocks_per_stage"])
        in_channels = list(spec["stage_widths"])
    elif name in ("resnet18", "resnet34", "resnet50", "resnet101"):
        norm = FrozenBatchNorm2d if spec.get("norm", "frozen_bn") == "frozen_bn" else nn.BatchNorm2d
        body = getattr(resnet, name)(weights=None, norm_layer=norm)
        if spec.get("stride_in_1x1", False):
            move_stride_to_1x1(body)
        del body.fc, body.avgpool
        expansion = 4 if name in ("resnet50", "resnet101") else 1
        in_channels = [64 * expansion * 2**i for i in range(4)]
    else:
        raise DetectorLoadError(f"unknown backbone {name!r}; known: compact, resnet18/34/50/101")
    return BackboneWithFPN(body, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())


def move_stride_to_1x1(body: resnet.ResNet) -> None:
    """MSRA/caffe2 ResNet (detectron2's STRIDE_IN_1X1): the block's first 1x1 conv downsamples."""
    for stage in (body.layer2, body.layer3, body.layer4):
        first = stage[0]
        first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)


def build_maskrcnn(
    arch: dict[str, Any], score_threshold: float = 0.1, max_detections: int = 1000
) -> MaskRCNN:
    """A torchvision MaskRCNN (one foreground class) configured by an architecture dict."""
    channels = arch["fpn_channels"]
    backbone = build_backbone(arch["backbone"], channels)
    sizes = [tuple(level) for level in arch["anchor_sizes"]]
    anchors = UnroundedAnchorGenerator(tuple(sizes), (tuple(arch["aspect_ratios"]),) * len(sizes))
    rpn_cfg, roi_cfg = arch["rpn"], arch["roi"]
    levels = ["0", "1", "2", "3"]
    box_pool = AlignedMultiScaleRoIAlign(levels, 7, roi_cfg["roi_align_sampling_ratio"])
    mask_pool = AlignedMultiScaleRoIAlign(levels, 14, roi_cfg["roi_align_sampling_ratio"])
    box_dim = roi_cfg["box_head_dim"]
    mask_widths = roi_cfg["mask_head_widths"]
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_fg_iou_thresh=rpn_cfg["fg_iou"],
        rpn_bg_iou_thresh=rpn_cfg["bg_iou"],
        rpn_batch_size_per_image=rpn_cfg["batch_size_per_image"],
        rpn_positive_fraction=rpn_cfg["positive_fraction"],
        rpn_pre_nms_top_n_train=rpn_cfg["pre_nms_top_n_train"],
        rpn_post_nms_top_n_train=rpn_cfg["post_nms_top_n_train"],
        rpn_pre_nms_top_n_test=rpn_cfg["pre_nms_top_n_test"],
        rpn_post_nms_top_n_test=rpn_cfg["post_nms_top_n_test"],
        rpn_nms_thresh=rpn_cfg["nms_thresh"],
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(channels * 7 * 7, box_dim),
        box_predictor=FastRCNNPredictor(box_dim, 2),
        box_fg_iou_thresh=roi_cfg["fg_iou"],
        box_bg_iou_thresh=roi_cfg["bg_iou"],
        box_batch_size_per_image=roi_cfg["batch_size_per_image"],
        box_positive_fraction=roi_cfg["positive_fraction"],
        bbox_reg_weights=tuple(roi_cfg["box_reg_weights"]),
        box_nms_thresh=roi_cfg["nms_thresh"],
        box_score_thresh=score_threshold,
        box_detections_per_img=max_detections,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(channels, mask_widths, 1),
        mask_predictor=FastMaskPredictor(mask_widths[-1], mask_widths[-1], 2),
    )
    model.rpn = LogitRankedRPN(
        anchors,
        model.rpn.head,
        rpn_cfg["fg_iou"],
        rpn_cfg["bg_iou"],
        rpn_cfg["batch_size_per_image"],
        rpn_cfg["positive_fraction"],
        {"training": rpn_cfg["pre_nms_top_n_train"], "testing": rpn_cfg["pre_nms_top_n_test"]},
        {"training": rpn_cfg["post_nms_top_n_train"], "testing": rpn_cfg["post_nms_top_n_test"]},
        rpn_cfg["nms_thresh"],
        score_thresh=rpn_cfg.get("score_thresh_test", 0.0),
    )
    for site, rank in arch.get("low_rank", {}).items():
        parent, index = low_rank_site(model, site)
        parent[index] = low_rank_conv(channels, channels, int(rank))
    return model


def low_rank_site(model: MaskRCNN, site: str) -> tuple[nn.Sequential, int]:
    """(container, index) of a 3x3 convolution an architecture may make low-rank: ``rpn_conv``
    (the RPN head's, on every level) or ``fpn_p2_output`` (the FPN's output conv on P2)."""
    if site == "rpn_conv":
        return model.rpn.head.conv[0], 0
    if site == "fpn_p2_output":
        return model.backbone.fpn.layer_blocks[0], 0
    raise DetectorLoadError(f"unknown low-rank site {site!r}; known: rpn_conv, fpn_p2_output")


def refuse_oversized_architecture(arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """Build the header's network without memory (on torch's ``meta`` device) and refuse it when
    it needs more values than the weights hold: such weights can never fit, and a crafted header
    must not make the real build allocate gigabytes first. The weights are bounded by the file."""
    with torch.device("meta"):
        skeleton = build_maskrcnn(arch)
    needed = sum(t.numel() for t in (*skeleton.parameters(), *skeleton.buffers()))
    held = sum(t.numel() for t in state_dict.values())
    if needed > held:
        raise DetectorLoadError(
            f"the weights do not fit the architecture {arch.get('name')!r} in their header: it needs {needed} "
            f"values, the file holds {held}"
        )


# -- input and output ------------------------------------------------------------------------------
def resize_scale(height: int, width: int, resize: dict[str, Any]) -> float:
    """detectron2's ResizeShortestEdge rule; ``shortest_edge=None`` keeps the native scale."""
    if resize.get("shortest_edge") is None:
        return 1.0
    scale = resize["shortest_edge"] / min(height, width)
    if max(height, width) * scale > resize["max_size"]:
        scale = resize["max_size"] / max(height, width)
    return scale


def to_model_batch(images: Sequence[np.ndarray], arch: dict[str, Any], normalisation: dict[str, Any], device):
    """0..255 grayscale frames -> resized, normalised 3-channel ImageList.

    Resizing comes before normalising. ``raw8`` models (detectron2's) get detectron2's own resize:
    PIL bilinear on the uint8 image; the others an antialiased bilinear resize in torch.
    """
    mean = torch.tensor(normalisation["pixel_mean"], dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(normalisation["pixel_std"], dtype=torch.float32, device=device)[:, None, None]
    tensors, sizes, scales = [], [], []
    for image in images:
        height, width = image.shape
        scale = resize_scale(height, width, arch["resize"])
        new_size = (int(height * scale + 0.5), int(width * scale + 0.5))  # detectron2 rounding
        if scale != 1.0 and normalisation["intensity"] == "raw8":
            as_uint8 = Image.fromarray(np.round(image).astype(np.uint8))
            image = np.array(as_uint8.resize(new_size[::-1], Image.BILINEAR))
        gray = torch.as_tensor(image, dtype=torch.float32, device=device)
        if gray.shape != new_size:
            gray = F.interpolate(gray[None, None], size=new_size, mode="bilinear", antialias=True)[0, 0]
        tensor = (gray.expand(3, *gray.shape) - mean) / std
        tensors.append(tensor)
        sizes.append(tuple(tensor.shape[-2:]))
        scales.append((height / tensor.shape[-2], width / tensor.shape[-1]))
    divisible = arch["resize"]["size_divisible"]
    max_h = math.ceil(max(s[0] for s in sizes) / divisible) * divisible
    max_w = math.ceil(max(s[1] for s in sizes) / divisible) * divisible
    batch = tensors[0].new_zeros((len(tensors), 3, max_h, max_w))
    for slot, tensor in zip(batch, tensors, strict=True):
        slot[:, : tensor.shape[1], : tensor.shape[2]] = tensor
    return ImageList(batch, sizes), scales


# -- the detector ----------------------------------------------------------------------------------
class TorchvisionDetector(Detector):
    """Mask R-CNN on torchvision; CPU or CUDA; frames batched ``batch_size`` at a time."""

    engine = "torchvision"

    def __init__(
        self,
        header: dict[str, Any],
        state_dict: dict[str, torch.Tensor],
        *,
        device="auto",
        score_threshold: float | None = None,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        batch_size: int | None = None,
    ):
        """``score_threshold=None``: the checkpoint's own (a fine-tuned model carries the one chosen
        on its held-out frames), else 0.1."""
        header = check_detector_header(header, "the detector")
        if score_threshold is None:
            score_threshold = header.get("score_threshold", DEFAULT_SCORE_THRESHOLD)
        super().__init__(
            name=header.get("name", header["architecture"]["name"]),
            weights_sha256=header["sha256"],
            normalisation=header["input"],
            device=device,
            score_threshold=score_threshold,
            max_detections=max_detections,
            batch_size=batch_size,
        )
        self.header = header
        self.architecture = header["architecture"]
        refuse_oversized_architecture(self.architecture, state_dict)
        self.model = build_maskrcnn(self.architecture, score_threshold, max_detections)
        try:
            self.model.load_state_dict(float32_weights(state_dict))
        except RuntimeError as error:
            raise DetectorLoadError(
                f"the weights do not fit the architecture {self.architecture['name']!r} in their header: "
                f"{str(error)[:500]}"
            ) from error
        self.model.eval().to(self.device)
        self.scale_rule = ScaleRule.from_input_header(self.normalisation)
        self.size_chooser = SizeChooser.from_input_header(self.normalisation)
        self.verifier = DetectionVerifier.from_model_header(header) if self.scale_rule else None
        self.bfloat16 = self.device.type == "cpu" and native_bfloat16()
        """Detect with the convolutions (backbone, FPN, RPN head, mask head) in bfloat16: where the
        CPU computes it natively they run up to 2.5x faster (2048 px frame 1.75 -> 1.45 s on 2
        cores), boxes, scores and embeddings stay float32, and training never uses it."""
        if self.bfloat16:
            self.model.rpn.head.register_forward_hook(as_float32)  # boxes decode from float32 deltas

    def _reduced_precision(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16)

    @classmethod
    def from_checkpoint(cls, path, **options) -> TorchvisionDetector:
        header, state_dict = load_checkpoint(path)
        try:
            return cls(header, state_dict, **options)
        except DetectorLoadError as error:
            message = str(error).removeprefix("the detector: ")
            raise DetectorLoadError(f"{path}: {one_line(message, 400)}") from error
        except MALFORMED_DATA_ERRORS as error:
            reason = f"missing {error}" if isinstance(error, KeyError) else one_line(error, 200)
            raise DetectorLoadError(f"{path}: malformed checkpoint header ({reason})") from error

    def save(self, path, **header_updates) -> dict:
        """Write this model as a checkpoint (same header, optional updates such as training notes)."""
        header = {key: value for key, value in self.header.items() if key != "sha256"}
        return save_model(path, self.model, {**header, **header_updates})

    def _detect(self, images: Sequence[np.ndarray]) -> list[FrameDetections]:
        return [
            found.to_detections(image.shape)
            for found, image in zip(self._detect_boxes(images), images, strict=True)
        ]

    def embed(self, image: np.ndarray) -> np.ndarray:
        """Per-channel mean and std of the FPN maps P2-P5 over the frame (its central
        ``TILE_PX`` square on bigger frames): what the detector's heads see, in one vector."""
        view, _ = central_view(image, TILE_PX)
        with torch.inference_mode():
            batch, _ = to_model_batch([view], self.architecture, self.normalisation, self.device)
            features = self.model.backbone(batch.tensors)
        height, width = batch.image_sizes[0]
        parts = []
        for level in ("0", "1", "2", "3"):
            stride = batch.tensors.shape[-1] / features[level].shape[-1]
            rows, cols = max(1, math.ceil(height / stride)), max(1, math.ceil(width / stride))
            valid = features[level][0, :, :rows, :cols].float().flatten(1)
            parts += [valid.mean(dim=1), valid.std(dim=1, unbiased=False)]
        return torch.cat(parts).cpu().numpy()

    def _detect_boxes(
        self,
        images: Sequence[np.ndarray],
        min_score: float | None = None,
        masks: bool = True,
        cores: Sequence[Window] | None = None,
    ) -> list[BoxMasks]:
        heads = self.model.roi_heads
        heads.score_thresh = self.score_threshold if min_score is None else min_score
        with torch.inference_mode():
            batch, scales = to_model_batch(images, self.architecture, self.normalisation, self.device)
            # convolutions (the RPN head's too) run faster on channels-last maps on CPU (weights
            # stay NCHW: training a channels-last model crashed in backward); RoIAlign pools from
            # float32 maps, and on CPU fastest from channels-last ones (``roi_gather.py``)
            with self._reduced_precision():
                maps = self.model.backbone(batch.tensors.contiguous(memory_format=torch.channels_last))
                proposals, _ = self.model.rpn(batch, maps)
            features = OrderedDict((level, maps[level].float()) for level in heads.box_roi_pool.featmap_names)
            boxes, scores = boxes_only(heads, features, proposals, batch.image_sizes)
            if cores is not None:
                kept = [
                    centres_inside(b, core, scale)
                    for b, core, scale in zip(boxes, cores, scales, strict=True)
                ]
                boxes = [b[keep] for b, keep in zip(boxes, kept, strict=True)]
                scores = [s[keep] for s, keep in zip(scores, kept, strict=True)]
            if masks:
                with self._reduced_precision():
                    probabilities = mask_probabilities(heads, features, boxes, batch.image_sizes)
            else:
                probabilities = [s.new_zeros((len(s), 0, 0)) for s in scores]
        results = []
        for xyxy, score, probs, (scale_y, scale_x) in zip(boxes, scores, probabilities, scales, strict=True):
            xyxy = xyxy.float().cpu().numpy().astype(np.float64).reshape(-1, 4)
            yxyx = xyxy[:, [1, 0, 3, 2]] * np.array([scale_y, scale_x, scale_y, scale_x])
            results.append(
                BoxMasks(yxyx, score.float().cpu().numpy().astype(np.float64), probs.float().cpu())
            )
        return results


def native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX); elsewhere bfloat16 is slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in checks if hasattr(torch.cpu, name))
    except RuntimeError:
        return False


def as_float32(module, inputs, outputs):
    """Forward hook: a head's outputs (tensors or lists of them) in float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return type(outputs)(as_float32(module, inputs, part) for part in outputs)


def centres_inside(xyxy: torch.Tensor, core: Window, scale: tuple[float, float]) -> torch.Tensor:
    """Which model-input boxes have their centre inside ``core`` (y0, y1, x0, x1 in frame pixels)."""
    centre_y = (xyxy[:, 1] + xyxy[:, 3]) / 2 * scale[0]
    centre_x = (xyxy[:, 0] + xyxy[:, 2]) / 2 * scale[1]
    return (centre_y >= core[0]) & (centre_y < core[1]) & (centre_x >= core[2]) & (centre_x < core[3])


def boxes_only(heads, features, proposals, image_sizes) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The ROI heads' final boxes (x0, y0, x1, y1) and scores per image, as ``heads`` computes them
    in eval mode, without the mask branch."""
    box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_sizes))
    class_logits, box_regression = heads.box_predictor(box_features)
    boxes, scores, _ = heads.postprocess_detections(class_logits, box_regression, proposals, image_sizes)
    return boxes, scores


MASK_CHUNK = 64
"""Boxes per pass of the mask branch. Its intermediates grow with the box count (a 1000-box pass
allocates over 100 MB per layer, which costs more in page faults than in arithmetic on CPU)."""


def mask_probabilities(heads, features, boxes: list[torch.Tensor], image_sizes) -> list[torch.Tensor]:
    """(N, M, M) foreground mask probabilities over each image's boxes (the one object class),
    ``MASK_CHUNK`` boxes at a time."""
    results = []
    for index, image_boxes in enumerate(boxes):
        parts = []
        for chunk in image_boxes.split(MASK_CHUNK):
            per_image = [chunk if i == index else chunk[:0] for i in range(len(boxes))]
            pooled = heads.mask_roi_pool(features, per_image, image_sizes)
            # channels-last: the mask head's convolutions run about a third faster on CPU
            logits = heads.mask_predictor(
                heads.mask_head(pooled.contiguous(memory_format=torch.channels_last))
            )
            parts.append(logits[:, 1].sigmoid())
        side = 2 * heads.mask_roi_pool.output_size[0]  # the predictor upsamples the pooled grid 2x
        results.append(torch.cat(parts) if parts else image_boxes.new_zeros((0, side, side)))
    return results


def new_checkpoint_header(
    arch: dict[str, Any],
    *,
    name: str,
    normalisation: dict[str, Any],
    training: dict[str, Any] | str,
    classes: Iterable[str] = ("cavity",),
) -> dict:
    """The header fields a torchvision-engine checkpoint carries (sha256 is added on save)."""
    return {
        "name": name,
        "engine": "torchvision",
        "architecture": arch,
        "classes": list(classes),
        "input": normalisation,
        "training": training,
    }


def save_model(path, model: MaskRCNN, header: dict[str, Any], half: bool = False) -> dict:
    """Save a trained model; ``half`` stores float weights as float16 (half the file size)."""
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return save_checkpoint(Path(path), header, state)
