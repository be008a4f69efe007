"""Run detectron2 weights on detectron2 itself, when it is installed (never a hard dependency).

detectron2 has no PyPI wheels; users who have it get its exact inference. Everyone else gets the
same weights through :mod:`.detectron2_checkpoint` on the torchvision engine.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from napari_detection_qc.detections.records import FrameDetections, smallest_label_dtype
from napari_detection_qc.engines.base import DEFAULT_MAX_DETECTIONS, Detector, file_sha256
from napari_detection_qc.engines.checkpoint import DetectorLoadError
from napari_detection_qc.engines.detectron2_checkpoint import (
    PAPER_DETECTRON2_CONFIG,
    input_from_config,
    read_config,
)

INSTALL_HINT = (
    "detectron2 is not installed. Either install it from source "
    "(pip install 'git+https://github.com/facebookresearch/detectron2.git', needs a C++ compiler and a "
    "matching torch), or load the same .pth without it: load_detector((config_yaml, weights_pth)) "
    "imports detectron2 weights into the torchvision engine when detectron2 is missing."
)


def detectron2_available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


class Detectron2Detector(Detector):
    """A detectron2 Mask R-CNN from a config YAML (or the paper's overrides) and ``.pth`` weights."""

    engine = "detectron2"

    def __init__(
        self,
        weights: Path,
        config: Path | None = None,
        *,
        device="auto",
        score_threshold: float = 0.1,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        batch_size: int | None = None,
    ):
        if not detectron2_available():
            raise DetectorLoadError(INSTALL_HINT)
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data import transforms
        from detectron2.modeling import build_model

        weights = Path(weights)
        if not weights.is_file():
            raise DetectorLoadError(f"detectron2 weights file not found: {weights}")
        super().__init__(
            name=f"detectron2:{weights.name}",
            weights_sha256=file_sha256(weights),
            normalisation=input_from_config(read_config(config)),
            device=device,
            score_threshold=score_threshold,
            max_detections=max_detections,
            batch_size=batch_size,
        )
        cfg = get_cfg()  # the paper's config, then the run's own YAML on top (as the import reads it)
        cfg.merge_from_list([item for key, value in PAPER_DETECTRON2_CONFIG.items() for item in (key, value)])
        if config is not None:
            cfg.merge_from_file(str(config))
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = self.score_threshold
        cfg.TEST.DETECTIONS_PER_IMAGE = self.max_detections
        cfg.MODEL.DEVICE = str(self.device)
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        DetectionCheckpointer(self.model).load(str(weights))
        self.resize = transforms.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )

    def _detect(self, images: Sequence[np.ndarray]) -> list[FrameDetections]:
        inputs = []
        for image in images:
            bgr = np.repeat(np.round(image).astype(np.uint8)[:, :, None], 3, axis=2)
            resized = self.resize.get_transform(bgr).apply_image(bgr)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            inputs.append({"image": tensor, "height": image.shape[0], "width": image.shape[1]})
        with torch.inference_mode():
            outputs = self.model(inputs)
        return [
            instances_to_detections(out["instances"].to("cpu"), image.shape)
            for out, image in zip(outputs, images, strict=True)
        ]


def instances_to_detections(instances, shape) -> FrameDetections:
    """detectron2 Instances -> FrameDetections (row/col boxes, masks painted lowest score first)."""
    xyxy = instances.pred_boxes.tensor.numpy().astype(np.float64).reshape(-1, 4)
    boxes = xyxy[:, [1, 0, 3, 2]]
    scores = instances.scores.numpy().astype(np.float64)
    masks = instances.pred_masks.numpy()
    labels = np.zeros(shape, dtype=smallest_label_dtype(len(scores)))
    for index in np.argsort(scores, kind="stable"):
        labels[masks[index]] = index + 1
    return FrameDetections(boxes, scores, labels)
