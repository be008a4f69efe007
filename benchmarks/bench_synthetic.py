"""Time the synthetic TEM generator: per domain preset, and per realistic family and frame size.

Reproduce with:

    PYTHONPATH=src python benchmarks/bench_synthetic.py [--frames 20] [--size 512] [--realistic-frames 6]

The generator feeds detector training on the fly and the sample stack: a preset frame must cost
well under 100 ms on one core; a realistic frame at most 0.15 s at 512 x 512, 0.4 s at 1024 x 1024
and about 6 s at 4096 x 4096. Wall time suffers when other processes share the cores; the CPU
time column (this process only; the generator is single-threaded) is the figure to compare.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from napari_detection_qc.synthetic import PRESETS, REALISTIC_FAMILIES, make_frame, make_realistic_frame

REALISTIC_SHAPES = ((512, 512), (1024, 1024))
LARGE_SHAPES = ((2672, 4008), (4096, 4096))
TARGET_CPU_S = {(512, 512): 0.15, (1024, 1024): 0.4, (2672, 4008): 6.0, (4096, 4096): 6.0}


def time_frames(make: Callable[[int], object], n_frames: int) -> tuple[float, float, float, float]:
    """Mean and std of the wall time, mean and max CPU time per frame in ms, after one warm-up."""
    make(10_000)
    wall_times, cpu_times = [], []
    for seed in range(n_frames):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        make(seed)
        wall_times.append(time.perf_counter() - wall_start)
        cpu_times.append(time.process_time() - cpu_start)
    return (
        1000 * float(np.mean(wall_times)),
        1000 * float(np.std(wall_times)),
        1000 * float(np.mean(cpu_times)),
        1000 * float(np.max(cpu_times)),
    )


def bench_presets(n_frames: int, size: int) -> None:
    shape = (size, size)
    print(f"presets: ms per {size}x{size} frame over {n_frames} frames: wall mean +- std, CPU mean")
    wall_means, cpu_means = [], []
    for name in PRESETS:
        wall_ms, wall_std_ms, cpu_ms, _ = time_frames(
            lambda seed, name=name: make_frame(seed, shape, name), n_frames
        )
        wall_means.append(wall_ms)
        cpu_means.append(cpu_ms)
        print(f"  {name:<16} wall {wall_ms:6.1f} +- {wall_std_ms:4.1f}   CPU {cpu_ms:6.1f}")
    print(f"  {'all presets':<16} wall {np.mean(wall_means):6.1f}           CPU {np.mean(cpu_means):6.1f}")


def bench_realistic(n_frames: int) -> None:
    print(
        f"\nrealistic families: ms per frame over {n_frames} seeds: wall mean +- std, CPU mean / max (target)"
    )
    cases = [(family, shape) for shape in REALISTIC_SHAPES for family in REALISTIC_FAMILIES]
    cases += [("large_frames", shape) for shape in LARGE_SHAPES]
    for family, shape in cases:
        frames = n_frames if max(shape) <= 1024 else max(1, n_frames // 3)
        wall_ms, wall_std_ms, cpu_ms, cpu_max_ms = time_frames(
            lambda seed, family=family, shape=shape: make_realistic_frame(seed, family, shape), frames
        )
        size = f"{shape[1]}x{shape[0]}"
        print(
            f"  {family:<16} {size:>9}  wall {wall_ms:7.1f} +- {wall_std_ms:6.1f}   "
            f"CPU {cpu_ms:7.1f} / {cpu_max_ms:7.1f}  ({1000 * TARGET_CPU_S[shape]:.0f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="frames timed per preset")
    parser.add_argument("--size", type=int, default=512, help="preset frame side in pixels")
    parser.add_argument(
        "--realistic-frames",
        type=int,
        default=6,
        help="seeds timed per realistic family and size (a third at 4096)",
    )
    args = parser.parse_args()
    print(
        "PYTHONPATH=src python benchmarks/bench_synthetic.py "
        f"--frames {args.frames} --size {args.size} --realistic-frames {args.realistic_frames}"
    )
    bench_presets(args.frames, args.size)
    bench_realistic(args.realistic_frames)


if __name__ == "__main__":
    main()
