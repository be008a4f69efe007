"""How well ``object_size="auto"`` finds a frame's typical cavity diameter, per synthetic family.

    PYTHONPATH=src python benchmarks/bench_object_size.py [--frames 6] [--threads 2]

For held-out frames (seeds >= 1_000_000) of each realistic family and two older presets: the
true median cavity diameter, the bundled detector's automatic estimate, and the share of frames
whose estimate is within 1.6x of the truth (the model tolerates that much: it was trained with a
simulated estimate error and a 2-3x size mix inside frames). Synthetic numbers only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_detection_qc.engines import load_detector
from napari_detection_qc.engines.training import typical_diameter
from napari_detection_qc.synthetic import PRESETS, REALISTIC_FAMILIES, make_frame, make_realistic_frame

HELD_OUT_SEED = 1_000_000
TOLERANCE = 1.6
COMMAND = "PYTHONPATH=src python benchmarks/bench_object_size.py"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=6, help="frames per family")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = load_detector("default", device="cpu")
    print(f"{'family':16s} {'within 1.6x':>11s} {'median |log2 error|':>19s} {'s/frame':>8s}  true -> estimate (px)")
    every = []
    for family in (*(f for f in REALISTIC_FAMILIES if f != "large_frames"), "clean", "overfocus"):
        pairs, seconds = [], 0.0
        for index in range(args.frames):
            seed = HELD_OUT_SEED + index
            if family in PRESETS:
                image, labels = make_frame(seed, (512, 512), PRESETS[family])
                truth = typical_diameter(labels)
            else:
                image, labels, info = make_realistic_frame(seed, family)
                truth = info["diameter_px"]
            if truth is None:
                continue
            start = time.perf_counter()
            estimate = detector.object_size_of(image)
            seconds += time.perf_counter() - start
            pairs.append((truth, estimate))
        ok = [e is not None and abs(np.log(e / t)) <= np.log(TOLERANCE) for t, e in pairs]
        errors = [abs(np.log2(e / t)) for t, e in pairs if e is not None]
        every += ok
        shown = ", ".join(f"{t:.0f}->{'none' if e is None else f'{e:.0f}'}" for t, e in pairs)
        print(f"{family:16s} {np.mean(ok):11.2f} {np.median(errors) if errors else float('nan'):19.2f} "
              f"{seconds / max(len(pairs), 1):8.2f}  {shown}", flush=True)
    print(f"all families: {np.mean(every):.2f} of {len(every)} estimates within {TOLERANCE}x")
    print(f"reproduce: {COMMAND} --frames {args.frames} --threads {args.threads}")


if __name__ == "__main__":
    main()
