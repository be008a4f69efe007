"""Low-rank convolutions made from trained ones by the principal components of their outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_ARCHITECTURE
from torch import nn

from napari_detection_qc.engines import DetectorLoadError
from napari_detection_qc.engines.low_rank import OutputMoments, factor_conv, low_rank_conv
from napari_detection_qc.engines.torchvision_maskrcnn import build_maskrcnn, low_rank_site


@pytest.fixture
def conv_and_inputs():
    """A 3x3 conv whose inputs vary in few directions, as a trained network's maps do."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    mixing = torch.randn(8, 3)
    inputs = torch.einsum("ck,nkhw->nchw", mixing, torch.randn(4, 3, 24, 24))
    return conv, inputs


def test_full_rank_factorisation_computes_the_same_outputs(conv_and_inputs):
    conv, inputs = conv_and_inputs
    moments = OutputMoments(conv)
    expected = conv(inputs)
    factored, lost = factor_conv(conv, *moments.close(), rank=8)
    torch.testing.assert_close(factored(inputs), expected, atol=1e-4, rtol=1e-4)
    assert lost == pytest.approx(0.0, abs=1e-6)


@torch.no_grad()
def test_lower_rank_loses_the_variance_it_reports_and_no_more_than_a_weight_svd(conv_and_inputs):
    conv, inputs = conv_and_inputs
    moments = OutputMoments(conv)
    expected = conv(inputs)
    factored, lost = factor_conv(conv, *moments.close(), rank=2)
    centred = expected - expected.mean(dim=(0, 2, 3), keepdim=True)
    residual = float(((factored(inputs) - expected) ** 2).sum() / (centred**2).sum())
    assert 0.01 < lost < 0.9
    assert residual == pytest.approx(lost, rel=1e-3)
    u, s, vh = torch.linalg.svd(conv.weight.detach().reshape(8, -1))  # data-blind alternative
    svd = (u[:, :2] * s[:2]) @ vh[:2]
    svd_out = nn.functional.conv2d(inputs, svd.reshape(conv.weight.shape), conv.bias, padding=1)
    assert residual < float(((svd_out - expected) ** 2).sum() / (centred**2).sum())


def test_ranks_outside_the_layer_are_refused():
    with pytest.raises(ValueError, match="rank 9"):
        low_rank_conv(8, 8, 9)


def test_architecture_builds_low_rank_sites_and_refuses_unknown_ones():
    model = build_maskrcnn(TINY_ARCHITECTURE)
    for site in TINY_ARCHITECTURE["low_rank"]:
        parent, index = low_rank_site(model, site)
        assert isinstance(parent[index], nn.Sequential) and parent[index][0].out_channels == 4
    with pytest.raises(DetectorLoadError, match="unknown low-rank site"):
        build_maskrcnn({**TINY_ARCHITECTURE, "low_rank": {"box_head": 4}})
