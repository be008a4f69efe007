"""Low-rank convolutions: a k x k convolution from C to C channels computed as a k x k convolution to
r channels followed by a 1x1 convolution back to C (C*k*k*r + r*C instead of C*k*k*C multiply-adds
per pixel). The bundled detector's RPN head runs a 3x3 convolution on every pyramid level, the
finest (P2, a quarter of the tile's side) included: a sixth of its CPU time on a 4096 px frame.

A trained full convolution is turned into one by the principal components of its outputs on real
inputs (Zhang et al. 2015, "Accelerating very deep convolutional networks for classification and
detection"): outputs are projected on their top-r components, which for a linear layer is the best
rank-r approximation of its responses in mean squared error. The detector's outputs vary in far
fewer directions than its weights (RPN head: 8% of output variance lost at rank 16 of 64, against
35% of the weight energy for a plain SVD of the weights, which lost 0.1-0.3 held-out F1).
"""

from __future__ import annotations

import torch
from torch import nn


def low_rank_conv(in_channels: int, out_channels: int, rank: int, kernel: int = 3) -> nn.Sequential:
    """An untrained ``kernel`` x ``kernel`` convolution through ``rank`` channels (same padding)."""
    if not 1 <= rank <= min(in_channels * kernel * kernel, out_channels):
        raise ValueError(f"rank {rank} is outside 1..{min(in_channels * kernel * kernel, out_channels)}")
    return nn.Sequential(
        nn.Conv2d(in_channels, rank, kernel, padding=kernel // 2, bias=False),
        nn.Conv2d(rank, out_channels, 1),
    )


class OutputMoments:
    """Running mean and covariance of a convolution's output channels over every output pixel, by a
    forward hook (float64 sums, so millions of pixels add up exactly enough)."""

    def __init__(self, module: nn.Conv2d):
        channels = module.out_channels
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.products = torch.zeros(channels, channels, dtype=torch.float64)
        self.count = 0
        self._handle = module.register_forward_hook(self._add)

    def _add(self, module, inputs, output) -> None:
        values = output.detach().to(torch.float64).transpose(0, 1).reshape(output.shape[1], -1)
        self.total += values.sum(dim=1)
        self.products += values @ values.T
        self.count += values.shape[1]

    def close(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stop collecting; (mean, covariance) of the outputs seen."""
        self._handle.remove()
        if self.count == 0:
            raise ValueError("no outputs were collected")
        mean = self.total / self.count
        return mean, self.products / self.count - torch.outer(mean, mean)


def factor_conv(
    conv: nn.Conv2d, mean: torch.Tensor, covariance: torch.Tensor, rank: int
) -> tuple[nn.Sequential, float]:
    """(low-rank convolution, share of output variance it loses): outputs y = Wx + b become
    mean + U U^T (y - mean) for the top-``rank`` eigenvectors U of their covariance, i.e. a
    convolution by U^T W to ``rank`` channels, then U with bias U U^T b + (I - U U^T) mean."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    basis = eigenvectors[:, -rank:]
    lost = float(eigenvalues[:-rank].clamp(min=0).sum() / eigenvalues.clamp(min=0).sum())
    weight = conv.weight.detach().to(torch.float64)
    bias = (
        conv.bias.detach().to(torch.float64)
        if conv.bias is not None
        else torch.zeros(len(mean), dtype=torch.float64)
    )
    projection = basis @ basis.T
    factored = low_rank_conv(conv.in_channels, conv.out_channels, rank, conv.kernel_size[0])
    with torch.no_grad():
        factored[0].weight.copy_(torch.einsum("or,oikl->rikl", basis, weight))
        factored[1].weight.copy_(basis[:, :, None, None])
        factored[1].bias.copy_(
            projection @ bias + (torch.eye(len(mean), dtype=torch.float64) - projection) @ mean
        )
    return factored, lost
