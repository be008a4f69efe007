"""Mask pasting: like-sized boxes are sampled together, and the labels are exactly those of
sampling each box on its own."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_detection_qc.engines import boxmasks


def paste_one_box_at_a_time(boxes, scores, mask_probs, shape):
    """The per-box paste the batched one replaced (detectron2's: masks sampled at pixel centres)."""
    labels = np.zeros(shape, dtype=np.int64)
    for index in np.argsort(scores, kind="stable"):
        y0, x0, y1, x1 = boxes[index]
        r0, c0 = max(int(math.floor(y0)), 0), max(int(math.floor(x0)), 0)
        r1, c1 = min(int(math.ceil(y1)), shape[0]), min(int(math.ceil(x1)), shape[1])
        if r1 <= r0 or c1 <= c0:
            continue
        ys = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y0) / max(y1 - y0, 1e-6) * 2 - 1
        xs = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x0) / max(x1 - x0, 1e-6) * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
        sampled = F.grid_sample(mask_probs[index][None, None].float(), grid, align_corners=False)[0, 0]
        labels[r0:r1, c0:c1][(sampled >= 0.5).numpy()] = index + 1
    return labels


@pytest.mark.parametrize("batch_pixels", [boxmasks.PASTE_BATCH_PIXELS, 500])
def test_batched_paste_equals_pasting_each_box(monkeypatch, batch_pixels):
    monkeypatch.setattr(boxmasks, "PASTE_BATCH_PIXELS", batch_pixels)
    rng = np.random.default_rng(0)
    shape = (120, 90)
    n = 300
    corner = rng.uniform(-20, [130, 100], (n, 2))
    size = np.exp(rng.uniform(np.log(0.3), np.log(60), (n, 2)))  # sub-pixel to large, some off the frame
    boxes = np.concatenate([corner, corner + size], axis=1)
    boxes[:5, 2:] = boxes[:5, :2]  # empty boxes
    scores = rng.choice([0.3, 0.5, 0.9], n)  # ties: the later detection of a tie wins, as before
    mask_probs = torch.from_numpy(rng.uniform(0, 1, (n, 28, 28)).astype(np.float32))
    batched = boxmasks.paste_masks_as_labels(boxes, scores, mask_probs, shape)
    np.testing.assert_array_equal(batched, paste_one_box_at_a_time(boxes, scores, mask_probs, shape))
    assert len(np.unique(batched)) > 50


def test_paste_without_boxes_is_an_empty_label_image():
    labels = boxmasks.paste_masks_as_labels(np.zeros((0, 4)), np.zeros(0), torch.zeros((0, 28, 28)), (7, 5))
    assert labels.shape == (7, 5) and not labels.any()
