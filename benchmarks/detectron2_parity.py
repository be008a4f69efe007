"""Parity of the detectron2 import with detectron2 itself, and their CPU speed on the same weights.

Builds detectron2's Mask R-CNN R50-FPN with the seed paper's config, randomly initialised (seeded),
saves it as detectron2 does (``model_final.pth`` + ``config.yaml``), then runs the same frames
through detectron2 and through the torchvision engine via ``import_detectron2_checkpoint`` and
compares boxes, scores and masks of paired detections. Skips (exit 0) when detectron2 is missing.

    PYTHONPATH=src:<detectron2 source> python benchmarks/detectron2_parity.py [--frames 3]

A randomly initialised model's heads score every proposal alike (the kept set is then a coin toss
under rounding noise) or regress boxes off the image; its predictor layers are therefore scaled
(on a calibration frame not used for comparison) so their outputs spread like a trained model's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_detection_qc.detections.matching import box_iou_matrix
from napari_detection_qc.engines.detectron2_engine import Detectron2Detector, detectron2_available
from napari_detection_qc.synthetic import make_frame

# Output spreads of a trained detector that the random model is scaled to (logit/delta std).
TARGET_STD = {
    "proposal_generator.rpn_head.objectness_logits": 3.0,
    "proposal_generator.rpn_head.anchor_deltas": 0.3,
    "roi_heads.box_predictor.cls_score": 3.0,
    "roi_heads.box_predictor.bbox_pred": 0.3,
    "roi_heads.mask_head.predictor": 3.0,
}


def calibrate(model, image: np.ndarray, rounds: int = 3) -> None:
    """Scale each predictor layer so its outputs spread like a trained model's: raw random heads
    either tie every score (kept set decided by rounding noise) or regress boxes off the image."""
    modules = dict(model.named_modules())
    outputs = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name in TARGET_STD
    ]
    bgr = np.repeat(image[:, :, None], 3, axis=2)
    inputs = [{"image": torch.as_tensor(bgr.transpose(2, 0, 1).copy()), "height": 800, "width": 800}]
    with torch.no_grad():
        for _ in range(rounds):
            model(inputs)
            for name, target in TARGET_STD.items():
                out = outputs[name]
                out = torch.cat([o.flatten() for o in out]) if isinstance(out, (list, tuple)) else out
                factor = target / float(out.float().std().clamp_min(1e-12))
                modules[name].weight.mul_(factor)
                modules[name].bias.mul_(factor)
    for hook in hooks:
        hook.remove()


def save_random_detectron2_model(folder: Path, seed: int) -> tuple[Path, Path]:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from napari_detection_qc.engines.detectron2_checkpoint import PAPER_DETECTRON2_CONFIG

    cfg = get_cfg()
    cfg.merge_from_list([item for key, value in PAPER_DETECTRON2_CONFIG.items() for item in (key, value)])
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    calibrate(model, make_frame(2_000_999, (800, 800))[0].astype(np.uint8))
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    return config, folder / "model_final.pth"


def compare(d2, tv) -> dict:
    """Pair each detectron2 detection with its best-IoU torchvision one; summarise the gaps."""
    iou = box_iou_matrix(d2.boxes, tv.boxes)
    best = iou.argmax(axis=1) if tv.count else np.zeros(0, int)
    best_iou = iou.max(axis=1) if tv.count else np.zeros(d2.count)
    box_gap = np.abs(d2.boxes - tv.boxes[best]).max(axis=1) if tv.count else np.zeros(0)
    score_gap = np.abs(d2.scores - tv.scores[best]) if tv.count else np.zeros(0)
    mask_ious = []
    for i, j in enumerate(best):
        a, b = d2.labels == i + 1, tv.labels == j + 1
        union = np.logical_or(a, b).sum()
        if union:
            mask_ious.append(np.logical_and(a, b).sum() / union)
    return {
        "count_detectron2": d2.count,
        "count_torchvision": tv.count,
        "paired_iou_min": float(best_iou.min(initial=1.0)),
        "paired_iou_gt_0.99": float(np.mean(best_iou > 0.99)) if d2.count else 1.0,
        "box_max_abs_px": float(box_gap.max(initial=0.0)),
        "box_mean_abs_px": float(box_gap.mean()) if len(box_gap) else 0.0,
        "score_max_abs": float(score_gap.max(initial=0.0)),
        "score_mean_abs": float(score_gap.mean()) if len(score_gap) else 0.0,
        "mask_iou_mean": float(np.mean(mask_ious)) if mask_ious else 1.0,
        "mask_iou_min": float(np.min(mask_ious)) if mask_ious else 1.0,
        "label_pixels_equal": float(np.mean((d2.labels > 0) == (tv.labels > 0))),
    }


def timed(detector, frame) -> tuple[object, float]:
    start = time.perf_counter()
    detections = detector.predict(frame)
    return detections, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=3, help="800x800 frames (no resize) to compare")
    parser.add_argument("--max-detections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not detectron2_available():
        print(
            "SKIP: detectron2 is not importable; install it (or put its source on PYTHONPATH) to run parity"
        )
        return
    from napari_detection_qc.engines.detectron2_checkpoint import import_detectron2_checkpoint
    from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector

    torch.set_num_threads(args.threads)
    options = dict(device="cpu", score_threshold=0.1, max_detections=args.max_detections)
    with tempfile.TemporaryDirectory() as scratch:
        config, weights = save_random_detectron2_model(Path(scratch), args.seed)
        d2 = Detectron2Detector(weights, config, **options)
        tv = TorchvisionDetector(*import_detectron2_checkpoint(weights, config), **options)
        frames = [make_frame(2_000_000 + i, (800, 800))[0].astype(np.uint8) for i in range(args.frames)]
        frames.append(make_frame(2_000_100, (1024, 1024))[0].astype(np.uint8))  # resized 1024 -> 800
        d2.predict(frames[0]), tv.predict(frames[0])  # warm-up
        rows, d2_times, tv_times = [], [], []
        for index, frame in enumerate(frames):
            d2_out, d2_time = timed(d2, frame)
            tv_out, tv_time = timed(tv, frame)
            row = {
                "frame": index,
                "shape": list(frame.shape),
                **compare(d2_out, tv_out),
                "seconds_detectron2": round(d2_time, 3),
                "seconds_torchvision": round(tv_time, 3),
            }
            rows.append(row)
            if frame.shape == (800, 800):
                d2_times.append(d2_time)
                tv_times.append(tv_time)
            print(json.dumps(row), flush=True)
    ratio = float(np.median(d2_times) / np.median(tv_times))
    print(
        f"speed on the same R50-FPN weights, 800x800 CPU, {args.threads} threads: detectron2 "
        f"{np.median(d2_times):.2f} s, torchvision engine {np.median(tv_times):.2f} s, "
        f"ratio detectron2/torchvision = {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
