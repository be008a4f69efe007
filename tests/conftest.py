"""Fixtures shared by the engine and CLI tests: a tiny randomly initialised detector checkpoint
(fast on CPU, deterministic) and torch on one thread."""

import copy

import pytest
import torch

from napari_detection_qc.engines.torchvision_maskrcnn import (
    COMPACT_FPN,
    build_maskrcnn,
    new_checkpoint_header,
    save_model,
)

TINY_NORMALISATION = {
    "intensity": "percentile",
    "percentiles": [0.5, 99.5],
    "channel_order": "gray3",
    "pixel_mean": [128.0] * 3,
    "pixel_std": [64.0] * 3,
}
TINY_ARCHITECTURE = copy.deepcopy(COMPACT_FPN)
TINY_ARCHITECTURE["backbone"].update(stem_widths=[8, 8], stage_widths=[8, 8, 8, 8])
TINY_ARCHITECTURE["fpn_channels"] = 8
TINY_ARCHITECTURE["roi"].update(box_head_dim=16, mask_head_widths=[8])
TINY_ARCHITECTURE["low_rank"] = {"rpn_conv": 4, "fpn_p2_output": 4}


@pytest.fixture(scope="module")
def one_torch_thread():
    """As in each Dask worker, so serial and cluster runs agree bit for bit; also keeps the
    tests off the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    header = new_checkpoint_header(
        TINY_ARCHITECTURE, name="tiny-random", normalisation=TINY_NORMALISATION, training="random init"
    )
    save_model(path, build_maskrcnn(TINY_ARCHITECTURE).eval(), header)
    return path


def detect_command(inputs, out, model, *extra, max_detections: int) -> list[str]:
    """``napari-detection-qc detect`` arguments for the CLI tests: a given model on the CPU, quiet."""
    return [
        "detect",
        *map(str, inputs),
        "--out",
        str(out),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--max-detections",
        str(max_detections),
        "--no-progress",
        *extra,
    ]
