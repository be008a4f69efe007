"""Default detector benchmark: CPU time of one 1024x1024 frame, and held-out F1 per synthetic preset.

    PYTHONPATH=src python benchmarks/bench_detector.py [--frames 25] [--threads 2] [--repeats 5]

The target is at most 1.5 s per 1024x1024 frame on a 2-core CPU. F1 uses the paper's matching
(box IoU >= 0.1) on held-out frames (seeds >= 1_000_000, never used in training); only "clean" is
in-distribution, so the shifted presets are expected to score lower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from napari_detection_qc.engines import load_detector
from napari_detection_qc.synthetic import make_frame

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_default_detector import HELD_OUT_SEED, held_out_scores  # noqa: E402


def time_one_frame(detector, shape=(1024, 1024), repeats: int = 5) -> dict:
    """Median wall time of ``predict`` on one clean frame, after a warm-up call."""
    image, labels = make_frame(HELD_OUT_SEED + 999, shape, "clean")
    detector.predict(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detections = detector.predict(image)
        times.append(time.perf_counter() - start)
    return {
        "shape": list(shape),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "detections": detections.count,
        "true_cavities": int(labels.max()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="default", help="detector spec for load_detector")
    parser.add_argument("--frames", type=int, default=25, help="held-out frames per preset (0: skip F1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = load_detector(args.spec, device="cpu")
    timing = time_one_frame(detector, repeats=args.repeats)
    print(
        f"{detector.name}: 1024x1024 CPU inference {timing['median_s']:.3f} s median "
        f"({timing['min_s']:.3f} s best, {args.threads} threads, {timing['detections']} detections, "
        f"{timing['true_cavities']} true cavities); target <= 1.5 s",
        flush=True,
    )
    if args.frames:
        scores = held_out_scores(detector, args.frames)
        print(f"{'preset':16s} {'mean F1':>8s} {'precision':>9s} {'recall':>7s} {'pooled F1':>9s}")
        for name, s in scores.items():
            print(
                f"{name:16s} {s['mean_f1']:8.3f} {s['mean_precision']:9.3f} {s['mean_recall']:7.3f} {s['pooled_f1']:9.3f}"
            )
        print(json.dumps({"timing": timing, "held_out": scores}))


if __name__ == "__main__":
    main()
