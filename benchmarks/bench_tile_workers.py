"""Tiles one at a time against tiles on all CPU threads at once (``engines/cpu_parallel.py``): time
per frame with object size ``auto`` (the model card's frames), whether the detections are the
same, and the peak memory of a 4096 x 4096 16-bit frame per number of workers.

    PYTHONPATH=src python benchmarks/bench_tile_workers.py [--threads 2] [--repeats 3] [--float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from bench_detector import HELD_OUT_SEED, cpu_name, time_frames

import napari_detection_qc.engines.base as detector_base
from napari_detection_qc.engines import load_detector
from napari_detection_qc.synthetic import make_realistic_frame

COMMAND = "PYTHONPATH=src python benchmarks/bench_tile_workers.py"
PEAK_MEMORY = """
import sys, numpy as np, torch
from napari_detection_qc.engines import load_detector

def peak_mb():  # VmHWM starts anew at exec, unlike ru_maxrss, which a child inherits from its parent
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return int(line.split()[1]) // 1024

torch.set_num_threads(int(sys.argv[2]))
detector = load_detector("default", device="cpu")
image = np.load(sys.argv[1])
before = peak_mb()
detector.predict(image, object_size=13.3)
print(before, peak_mb())
"""


def tiles_one_at_a_time():
    """Detectors detect one tile after another (the code before ``cpu_parallel.py``)."""
    return mock.patch.object(detector_base, "cpu_workers", lambda device: 1)


def same_detections(detector, image) -> bool:
    """Detections with the tiles one at a time equal those with the tiles in parallel."""
    parallel = detector.predict(image)
    with tiles_one_at_a_time():
        sequential = detector.predict(image)
    return bool(
        np.array_equal(parallel.boxes, sequential.boxes)
        and np.array_equal(parallel.scores, sequential.scores)
        and np.array_equal(parallel.labels, sequential.labels)
    )


def peak_memory_mb(threads: int) -> tuple[int, int]:
    """(peak after loading, peak) resident MB of a fresh process detecting a 4096 px 16-bit frame
    (Linux: ``/proc/self/status``)."""
    image = make_realistic_frame(HELD_OUT_SEED + 500 + 4096, "realistic", (4096, 4096))[0].astype(np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.npy"
        np.save(path, image)
        output = subprocess.run(
            [sys.executable, "-c", PEAK_MEMORY, str(path), str(threads)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    return int(output[-2]), int(output[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--float32", action="store_true", help="no bfloat16 convolutions, even where the CPU has them"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = load_detector("default", device="cpu")
    if args.float32:
        detector.bfloat16 = False
    arithmetic = "bfloat16" if getattr(detector, "bfloat16", False) else "float32"
    print(
        f"{cpu_name()}, {args.threads} threads, {arithmetic}; median of {args.repeats} runs, object size auto"
    )
    results = {}
    for mode, setting in (("one tile at a time", tiles_one_at_a_time), ("tiles on all threads", nullcontext)):
        with setting():
            results[mode] = time_frames(detector, repeats=args.repeats)
        print(mode, {side: round(t["median_s"], 2) for side, t in results[mode].items()}, flush=True)
    image = make_realistic_frame(HELD_OUT_SEED + 500 + 2048, "realistic", (2048, 2048))[0]
    print("same detections on the 2048 px frame:", same_detections(detector, image))
    memory = {} if args.no_memory else {threads: peak_memory_mb(threads) for threads in (1, 2, 4, 8)}
    for threads, (loaded, peak) in memory.items():
        print(f"4096 px 16-bit frame, {threads} thread(s): {loaded} MB loaded, {peak} MB at the peak")
    print(json.dumps({"timing": results, "memory_mb": memory}))
    print(f"reproduce: {COMMAND}")


if __name__ == "__main__":
    main()
