"""Opening a big TIFF stack: time and extra memory to open it (napari reader and ``open_micrograph``),
and to pull single frames as the Detection step and ``detect`` do.

    PYTHONPATH=src python benchmarks/bench_open_stack.py [--frames 300] [--size 2048] [--compression zlib]

Writes a (frames, size, size) uint16 stack (300 x 2048 x 2048 = 1.26 GB by default) frame by frame
into a temporary folder (removed afterwards), then in a fresh process measures: the reader call
(file parsed, pixel size read, a dask array built, no pixel read), the resident memory it added, and
the time and memory to read frame 0 and the last frame. Targets: open < 5 s and < 500 MB extra.
``--compression zlib`` writes compressed pages, which are read page by page instead of mapped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MEASURE = r"""
import json, sys, time
import numpy as np, psutil
from napari_detection_qc.io.napari_reader import get_reader
process = psutil.Process()
path = sys.argv[1]
before = process.memory_info().rss
start = time.perf_counter()
[(data, kwargs, kind)] = get_reader(path)(path)
opened = time.perf_counter() - start
after_open = process.memory_info().rss
start = time.perf_counter()
first = np.asarray(data[0])
first_s = time.perf_counter() - start
start = time.perf_counter()
last = np.asarray(data[len(data) - 1])
last_s = time.perf_counter() - start
after_frames = process.memory_info().rss
print(json.dumps({
    "open_s": opened, "open_extra_mb": (after_open - before) / 2**20,
    "first_frame_s": first_s, "last_frame_s": last_s,
    "extra_mb_after_two_frames": (after_frames - before) / 2**20,
    "type": type(data).__module__ + "." + type(data).__name__, "shape": list(data.shape),
    "chunks_per_frame": getattr(data, "chunksize", [None])[0] == 1,
    "pixel_size_nm": kwargs["metadata"]["detection_qc"]["pixel_size_nm"], "checksum": int(first[0, :10].sum()),
}))
"""


def write_stack(path: Path, frames: int, size: int, compression: str | None) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 4096, (size, size), dtype=np.uint16)
    tifffile.imwrite(
        path,
        (np.roll(frame, t, axis=1) for t in range(frames)),
        shape=(frames, size, size),
        dtype=np.uint16,
        imagej=compression is None,
        photometric="minisblack",
        compression=compression,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={"unit": "nm", "axes": "TYX"} if compression is None else {"axes": "TYX"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument(
        "--compression", default=None, help="e.g. zlib (default: uncompressed, as microscopes write)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stack.tif"
        start = time.perf_counter()
        write_stack(path, args.frames, args.size, args.compression)
        written = time.perf_counter() - start
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True
        )
        numbers = json.loads(result.stdout.strip().splitlines()[-1])
        size_gb = path.stat().st_size / 1e9
    print(
        f"stack: {args.frames} x {args.size} x {args.size} uint16, {size_gb:.2f} GB on disk, "
        f"compression {args.compression or 'none'} (written in {written:.1f} s)"
    )
    print(
        f"open (napari reader): {numbers['open_s']:.2f} s, +{numbers['open_extra_mb']:.0f} MB resident "
        f"({numbers['type']}, one chunk per frame: {numbers['chunks_per_frame']}, "
        f"pixel size {numbers['pixel_size_nm']} nm)"
    )
    print(
        f"first frame: {numbers['first_frame_s'] * 1e3:.0f} ms, last frame: {numbers['last_frame_s'] * 1e3:.0f} ms, "
        f"+{numbers['extra_mb_after_two_frames']:.0f} MB resident after both"
    )
    ok = numbers["open_s"] < 5 and numbers["open_extra_mb"] < 500
    print(f"targets (open < 5 s, < 500 MB extra): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
