"""Time the synthetic TEM generator: mean milliseconds per 512 x 512 frame, per domain preset.

Reproduce with:

    PYTHONPATH=src python benchmarks/bench_synthetic.py [--frames 20] [--size 512]

The generator feeds detector training and the sample stack, so a frame must cost well under
100 ms on one core. Wall time suffers when other processes share the cores; the CPU time column
(this process only; the generator is single-threaded) is the figure to compare across runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_detection_qc.synthetic import PRESETS, make_frame


def time_preset(name: str, n_frames: int, shape: tuple[int, int]) -> tuple[float, float, float]:
    """Mean and std of the wall time and mean CPU time per frame in ms, after one warm-up frame."""
    make_frame(0, shape, name)
    wall_times = []
    cpu_start = time.process_time()
    for seed in range(n_frames):
        start = time.perf_counter()
        make_frame(seed, shape, name)
        wall_times.append(time.perf_counter() - start)
    cpu_ms = 1000 * (time.process_time() - cpu_start) / n_frames
    return 1000 * float(np.mean(wall_times)), 1000 * float(np.std(wall_times)), cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="frames timed per preset")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    args = parser.parse_args()
    shape = (args.size, args.size)
    print(f"ms per {args.size}x{args.size} frame over {args.frames} frames: wall mean +- std, CPU mean")
    wall_means, cpu_means = [], []
    for name in PRESETS:
        wall_ms, wall_std_ms, cpu_ms = time_preset(name, args.frames, shape)
        wall_means.append(wall_ms)
        cpu_means.append(cpu_ms)
        print(f"  {name:<16} wall {wall_ms:6.1f} +- {wall_std_ms:4.1f}   CPU {cpu_ms:6.1f}")
    print(f"  {'all presets':<16} wall {np.mean(wall_means):6.1f}           CPU {np.mean(cpu_means):6.1f}")


if __name__ == "__main__":
    main()
