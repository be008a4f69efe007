"""The default detector's training recipe (scripts/train_default_detector.py): deepening a trained model."""

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_detection_qc.engines import load_checkpoint
from napari_detection_qc.engines.checkpoint import float32_weights
from napari_detection_qc.engines.registry import default_weights_path
from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector
from napari_detection_qc.synthetic import family_frame

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
train_script = pytest.importorskip("train_default_detector")


def deepen(blocks):
    header, state = load_checkpoint(default_weights_path())
    args = argparse.Namespace(architecture=header["architecture"], deepen=blocks, init_note="shipped")
    model = train_script.deepened(args, float32_weights(state))
    return header, state, args, model


def test_deepened_model_starts_as_the_trained_one():
    header, state, args, model = deepen([1, 2, 2, 1])
    assert args.architecture["backbone"]["blocks_per_stage"] == [1, 2, 2, 1]
    assert "deepened from blocks [1, 1, 1, 1]" in args.init_note
    assert len(model.backbone.body.layer2) == 2 and len(model.backbone.body.layer4) == 1
    deep = TorchvisionDetector(
        {**header, "architecture": args.architecture}, model.state_dict(), device="cpu"
    )
    shipped = TorchvisionDetector(header, state, device="cpu")
    image = family_frame("clean", 1_000_000)[0]
    before, after = shipped.predict(image, object_size=22), deep.predict(image, object_size=22)
    assert before.count > 0 and before.count == after.count
    np.testing.assert_allclose(after.boxes, before.boxes, atol=1e-3)


def test_deepening_never_drops_blocks():
    with pytest.raises(SystemExit, match="would drop"):
        deepen([1, 0, 1, 1])
    with pytest.raises(SystemExit, match="one block count per stage"):
        deepen([1, 2])
