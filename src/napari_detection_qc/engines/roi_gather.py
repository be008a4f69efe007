"""RoIAlign on CPU as one weighted gather of channels-last feature rows.

torchvision's CPU RoIAlign kernel reads each channel plane separately at every sample point, so
pooling one 1024 px tile's 500 proposals took 50 ms (7 x 7) and 64 mask boxes 16 ms (14 x 14):
a third of a frame's time, more than the backbone. Every output bin is a fixed weighted sum of
at most ``4 x sampling_ratio**2`` feature pixels, so with the map stored channels-last (a row of C
values per pixel) the whole pooling is ``F.embedding_bag`` over those rows with per-tap weights:
about 8x faster (box) and 7x (mask) on one core, the same numbers up to float rounding (the taps
and weights follow torchvision's kernel line by line: its clamping at the border, its zeroing of
samples beyond it, its ``aligned`` half-pixel offset). ``tests/test_engines.py`` compares the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_taps(
    start: torch.Tensor, length: torch.Tensor, bins: int, samples: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of a ``size`` px map: (N, bins, 2 x samples) pixel indices and bilinear
    weights of each bin's ``samples`` sample points (two neighbouring pixels each), as
    torchvision's ``roi_align`` places them; samples beyond the map weigh 0."""
    bin_length = length / bins
    sample = torch.arange(samples, dtype=start.dtype) + 0.5
    bin_index = torch.arange(bins, dtype=start.dtype)
    # torchvision: start + bin * bin_length + (sample + 0.5) * bin_length / samples
    position = (
        start[:, None, None]
        + bin_index[None, :, None] * bin_length[:, None, None]
        + sample[None, None, :] * bin_length[:, None, None] / samples
    )
    inside = (position >= -1.0) & (position <= size)
    position = position.clamp(min=0.0)
    low = position.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    position = torch.where(at_edge, low.to(position.dtype), position)
    high = torch.where(at_edge, low, low + 1)
    fraction = position - low.to(position.dtype)
    index = torch.stack([low, high], dim=-1).flatten(2)
    weight = (torch.stack([1.0 - fraction, fraction], dim=-1) * inside[..., None]).flatten(2)
    return index, weight


def gather_roi_align(
    feature: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = True,
) -> torch.Tensor:
    """``torchvision.ops.roi_align(feature, rois, output_size, spatial_scale, sampling_ratio,
    aligned)`` for a fixed ``sampling_ratio`` > 0 (rois: (K, 5) batch index, x0, y0, x1, y1);
    fastest when ``feature`` is channels-last (otherwise it is copied once into that layout)."""
    if sampling_ratio <= 0:
        raise ValueError("gather_roi_align needs a fixed sampling ratio (adaptive sampling varies per box)")
    batch, channels, height, width = feature.shape
    out_h, out_w = output_size
    count = len(rois)
    if count == 0:
        return feature.new_zeros((0, channels, out_h, out_w))
    rows = feature.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    rois = rois.to(feature.dtype)
    offset = 0.5 if aligned else 0.0
    x0, y0 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    box_w, box_h = rois[:, 3] * spatial_scale - offset - x0, rois[:, 4] * spatial_scale - offset - y0
    if not aligned:
        box_w, box_h = box_w.clamp(min=1.0), box_h.clamp(min=1.0)
    y_index, y_weight = axis_taps(y0, box_h, out_h, sampling_ratio, height)
    x_index, x_weight = axis_taps(x0, box_w, out_w, sampling_ratio, width)
    first_row = rois[:, 0].long() * (height * width)
    index = (
        first_row[:, None, None, None, None]
        + y_index[:, :, None, :, None] * width
        + x_index[:, None, :, None, :]
    ).reshape(count * out_h * out_w, -1)
    weight = (y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :] / sampling_ratio**2).reshape(
        count * out_h * out_w, -1
    )
    pooled = F.embedding_bag(index, rows, per_sample_weights=weight, mode="sum")
    return pooled.view(count, out_h, out_w, channels).permute(0, 3, 1, 2)
