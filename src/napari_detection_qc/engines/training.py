"""What training and fine-tuning a torchvision-engine Mask R-CNN share: targets from instance
label images, the loss of one batch, the learning-rate schedule, and the geometry that puts a
labelled frame at the model's trained object size (the same resampling inference applies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_detection_qc.engines.scaling import resample
from napari_detection_qc.engines.torchvision_maskrcnn import to_model_batch

MIN_INSTANCE_PIXELS = 12
"""Instances smaller than this (after resampling and cropping) are not trained on."""


def targets_from_labels(labels: np.ndarray) -> dict[str, torch.Tensor]:
    """torchvision targets (xyxy boxes, labels, masks) of the instances in a crop."""
    boxes, masks = [], []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        mask = labels[found] == index
        if mask.sum() < MIN_INSTANCE_PIXELS:
            continue
        rows, cols = found
        full = np.zeros(labels.shape, dtype=bool)
        full[found] = mask
        boxes.append([cols.start, rows.start, cols.stop, rows.stop])
        masks.append(full)
    shape = labels.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(len(boxes), dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)).to(torch.uint8)
        if masks
        else torch.zeros((0, *shape), dtype=torch.uint8),
    }


def batch_losses(
    model, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], arch: dict, normalisation: dict, device
) -> dict[str, torch.Tensor]:
    """Mask R-CNN training losses (RPN objectness/box, classifier, box regression, mask) of a batch
    of 0..255 frames with instance labels; the model must be in train mode."""
    batch, _ = to_model_batch(list(images), arch, normalisation, device)
    targets = [{k: v.to(device) for k, v in targets_from_labels(lab).items()} for lab in labels]
    features = model.backbone(batch.tensors)
    proposals, rpn_losses = model.rpn(batch, features, targets)
    _, roi_losses = model.roi_heads(features, proposals, batch.image_sizes, targets)
    return {**rpn_losses, **roi_losses}


def learning_rate(base: float, progress: float, warmup: float) -> float:
    """Linear warm-up, then cosine decay to 2% over the budget; ``progress`` in [0, 1]."""
    if progress < warmup:
        return base * (0.1 + 0.9 * progress / warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))))


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of an instance image to ``shape`` (ids kept exactly)."""
    if labels.shape == tuple(shape):
        return labels
    tensor = torch.from_numpy(labels.astype(np.int64))[None, None].double()
    return F.interpolate(tensor, size=tuple(shape), mode="nearest-exact")[0, 0].numpy().astype(labels.dtype)


def at_trained_scale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """A 0..255 frame and its labels resampled by ``factor`` (inference's own resampling)."""
    scaled = resample(image, factor)
    return scaled, resample_labels(labels, scaled.shape)


def typical_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent-circle diameter of the instances in a label image; None if there are none."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if len(areas) == 0:
        return None
    return float(np.median(2 * np.sqrt(areas / np.pi)))


def random_crop(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, size: int, fill: float = 128.0
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop (padded with ``fill`` where the frame is smaller), randomly
    flipped and transposed (the dihedral group: flips and 90-degree rotations)."""
    height, width = image.shape
    y = int(rng.integers(0, max(height - size, 0) + 1))
    x = int(rng.integers(0, max(width - size, 0) + 1))
    crop_image = np.full((size, size), fill, dtype=np.float32)
    crop_labels = np.zeros((size, size), dtype=labels.dtype)
    part = image[y : y + size, x : x + size]
    crop_image[: part.shape[0], : part.shape[1]] = part
    crop_labels[: part.shape[0], : part.shape[1]] = labels[y : y + size, x : x + size]
    if rng.random() < 0.5:
        crop_image, crop_labels = crop_image[:, ::-1], crop_labels[:, ::-1]
    if rng.random() < 0.5:
        crop_image, crop_labels = crop_image[::-1], crop_labels[::-1]
    if rng.random() < 0.5:
        crop_image, crop_labels = crop_image.T, crop_labels.T
    return np.ascontiguousarray(crop_image), np.ascontiguousarray(crop_labels)


def intensity_jitter(rng: np.random.Generator, image: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Random gain, offset, gamma-like curve and noise, so the model does not rely on exact grey
    levels after normalisation."""
    gain = rng.uniform(1 - 0.25 * strength, 1 + 0.25 * strength)
    offset = rng.uniform(-15, 15) * strength
    noise = rng.normal(0, rng.uniform(0, 6) * strength, image.shape).astype(np.float32)
    out = (image - 128) * gain + 128 + offset + noise
    if rng.random() < 0.3:
        gamma = rng.uniform(0.7, 1.4)
        out = 255 * (np.clip(out, 0, 255) / 255) ** gamma
    return np.clip(out, 0, 255).astype(np.float32)
