"""How well ``object_size="auto"`` finds a frame's typical cavity diameter, per synthetic family.

    PYTHONPATH=src python benchmarks/bench_object_size.py [--frames 6] [--threads 2]

For held-out frames (seeds >= 1_000_000) of each realistic family and two older presets: the
true median cavity diameter, the bundled detector's automatic estimate, and the share of frames
whose estimate is within 1.6x of the truth (the model tolerates that much: it was trained with a
simulated estimate error and a 2-3x size mix inside frames). Then the same on the real EMPS
particle images (``../shared/real-data/emps``, skipped when absent): real images of another kind,
whose particles often span a third of the frame or more. The bundled model's size chooser was
fitted on these EMPS images, so their line here is in-sample: ``bench_size_rules.py`` scores
the chooser on EMPS papers it never saw.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from results_file import emps_frame, emps_sources

from napari_detection_qc.engines import load_detector
from napari_detection_qc.engines.training import typical_diameter
from napari_detection_qc.synthetic import REALISTIC_FAMILIES, family_frame

HELD_OUT_SEED = 1_000_000
TOLERANCE = 1.6
COMMAND = "PYTHONPATH=src python benchmarks/bench_object_size.py"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=6, help="frames per family")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--emps", type=int, default=366, help="EMPS images (0: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = load_detector("default", device="cpu")
    print(
        f"{'family':16s} {'within 1.6x':>11s} {'median |log2 error|':>19s} {'s/frame':>8s}  true -> estimate (px)"
    )
    every = []
    for family in (*(f for f in REALISTIC_FAMILIES if f != "large_frames"), "clean", "overfocus"):
        every += report(
            family, detector, (family_frame(family, HELD_OUT_SEED + i) for i in range(args.frames)), show=True
        )
    print(f"all families: {np.mean(every):.2f} of {len(every)} estimates within {TOLERANCE}x")
    stems = emps_sources()["stem"][: args.emps]
    if len(stems):
        report(
            "EMPS (real; the size chooser was fitted on these)",
            detector,
            (emps_frame(stem) for stem in stems),
            show=False,
        )
    print(f"reproduce: {COMMAND} --frames {args.frames} --threads {args.threads} --emps {args.emps}")


def report(name: str, detector, frames, show: bool) -> list[bool]:
    """Print one row: share within the tolerance, median |log2 error|, seconds per frame."""
    pairs, seconds = [], 0.0
    for image, labels in frames:
        truth = typical_diameter(labels)
        if truth is None:
            continue
        start = time.perf_counter()
        estimate = detector.object_size_of(image)
        seconds += time.perf_counter() - start
        pairs.append((truth, estimate))
    ok = [e is not None and abs(np.log(e / t)) <= np.log(TOLERANCE) for t, e in pairs]
    errors = [abs(np.log2(e / t)) for t, e in pairs if e is not None]
    shown = (
        ", ".join(f"{t:.0f}->{'none' if e is None else f'{e:.0f}'}" for t, e in pairs)
        if show
        else f"{len(pairs)} images"
    )
    print(
        f"{name:16s} {np.mean(ok):11.2f} {np.median(errors) if errors else float('nan'):19.2f} "
        f"{seconds / max(len(pairs), 1):8.2f}  {shown}",
        flush=True,
    )
    return ok


if __name__ == "__main__":
    main()
