"""Batch-mode throughput: ``score`` frames/s on precomputed detections; ``detect`` serial vs ``--workers 2``.

    PYTHONPATH=src python benchmarks/bench_cli.py [--score-frames 5000] [--detect-frames 8] [--skip-detect]

score: a synthetic store of N frames (about 20 detections each, laid out as ``detect`` writes it:
meta.json and detections.csv) scored end to end by ``napari-detection-qc score`` in this process
(read the CSV, 18 features, forest with intervals and domain flag, write the CSV); the target is
at least 1,000 frames/s. The forest is the bundled default when installed, otherwise a 100-tree
forest fitted on random data (the same size, so the same cost).
detect: N synthetic 512 x 512 frames with the bundled detector on the CPU, serially (torch's own
threads), with ``--workers 2`` (one thread per worker process; wall time includes loading the model
and starting the local Dask cluster) and with ``--scheduler`` on a 2-worker cluster started
beforehand; serial and worker outputs are compared. Skipped when the bundled model is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_detection_qc.batch.cli import main
from napari_detection_qc.batch.store import Store
from napari_detection_qc.engines import default_weights_path
from napari_detection_qc.quality.features import BOX_COLUMNS, CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import TARGETS, QualityForest
from napari_detection_qc.quality.forest_choice import BUNDLED_FORESTS, MODELS_DIR
from napari_detection_qc.synthetic import make_stack

IMAGE_SHAPE = (512, 512)


def synthetic_store(root: Path, n_frames: int, seed: int = 0) -> Store:
    """A finished store of ``n_frames`` frames with random detections (no detector needed)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(20, n_frames)
    frames = np.repeat(np.arange(n_frames), counts)
    n = len(frames)
    corner = rng.uniform(0, 480, (n, 2))
    size = rng.uniform(6, 40, (n, 2))
    circularity = rng.uniform(1.0, 1.3, n)
    circularity[rng.random(n) < 0.02] = np.nan
    table = pd.DataFrame(
        {
            "frame": frames,
            "label": np.concatenate([np.arange(1, c + 1) for c in counts]),
            "y_min": corner[:, 0],
            "x_min": corner[:, 1],
            "y_max": corner[:, 0] + size[:, 0],
            "x_max": corner[:, 1] + size[:, 1],
            "score": rng.uniform(0.1, 1.0, n),
            "circularity": circularity,
        }
    )
    store = Store(root / "synthetic")
    store.frames_dir.mkdir(parents=True)
    meta = {
        "source": "synthetic",
        "n_frames": n_frames,
        "image_shape": list(IMAGE_SHAPE),
        "is_2d": False,
        "pixel_size_nm": None,
        "detector": {"detector": "synthetic"},
        "score_threshold": 0.1,
    }
    store.meta_path.write_text(json.dumps(meta))
    table.to_csv(store.table_path, index=False)
    np.save(store.masks_path, np.zeros((1, 1, 1), np.uint8))  # score reads only the table
    return store


def benchmark_forest(path: Path) -> tuple[Path, str]:
    bundled = MODELS_DIR / BUNDLED_FORESTS["default"]
    if bundled.is_file():
        return bundled, "bundled default forest"
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.random((800, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    targets = pd.DataFrame(rng.random((800, 3)), columns=list(TARGETS))
    return QualityForest().fit(features, targets).save(
        path
    ), "100-tree forest on random data (bundled one missing)"


def bench_score(n_frames: int, repeats: int = 3) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        store = synthetic_store(root, n_frames)
        forest, forest_note = benchmark_forest(root / "forest.skops")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            args = ["score", str(store.root), "--forest", str(forest), "--out", str(root / "q.csv")]
            assert main(args) == 0
            times.append(time.perf_counter() - start)
        rows = len(pd.read_csv(store.table_path))
    best = min(times)
    print(
        f"score: {n_frames} frames ({rows} detections), {forest_note}: best of {repeats} {best:.2f} s "
        f"= {n_frames / best:,.0f} frames/s (target >= 1,000)"
    )


def bench_detect(n_frames: int) -> None:
    """Serial, ``--workers 2`` (cluster start-up included), and ``--scheduler`` on a 2-worker
    cluster that is already running (the model still loads once per worker)."""
    from dask.distributed import LocalCluster

    if not default_weights_path().is_file():
        print("detect: skipped, the bundled default model is not installed")
        return
    images, _ = make_stack(123, n_frames, IMAGE_SHAPE, ["clean"] * n_frames)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        np.save(root / "stack.npy", images.astype(np.uint8))

        def timed_detect(label: str, out: str, *extra: str) -> None:
            args = ["detect", str(root / "stack.npy"), "--out", str(root / out), "--device", "cpu"]
            start = time.perf_counter()
            assert main([*args, "--no-progress", *extra]) == 0
            seconds = time.perf_counter() - start
            print(
                f"detect {label}: {n_frames} frames 512x512 in {seconds:.1f} s = {n_frames / seconds:.2f} frames/s"
            )

        timed_detect("serial", "serial")
        timed_detect("--workers 2", "workers", "--workers", "2")
        start = time.perf_counter()
        with LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster:
            print(f"detect: starting a 2-worker LocalCluster took {time.perf_counter() - start:.1f} s")
            timed_detect(
                "--scheduler (running 2-worker cluster)",
                "scheduler",
                "--scheduler",
                cluster.scheduler_address,
            )
        report_agreement(root / "serial" / "stack", root / "workers" / "stack")


def report_agreement(serial: Path, parallel: Path) -> None:
    """Serial and worker outputs agree to float rounding: torch's CPU kernels round differently
    with 2 threads (serial) than with 1 (each worker); at equal thread counts they are identical."""
    a, b = pd.read_csv(serial / "detections.csv"), pd.read_csv(parallel / "detections.csv")
    if len(a) != len(b) or not (a["frame"].to_numpy() == b["frame"].to_numpy()).all():
        print(f"detect: serial found {len(a)} detections, --workers 2 found {len(b)}")
        return
    box_difference = np.abs(a[list(BOX_COLUMNS)].to_numpy() - b[list(BOX_COLUMNS)].to_numpy()).max(initial=0)
    score_difference = np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max(initial=0)
    mask_pixels = int((np.load(serial / "masks.npy") != np.load(parallel / "masks.npy")).sum())
    print(
        f"detect: serial vs --workers 2: same {len(a)} detections, boxes within {box_difference:.1e} px, "
        f"scores within {score_difference:.1e}, {mask_pixels} mask pixel(s) differ"
    )


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--score-frames", type=int, default=5000)
    parser.add_argument("--detect-frames", type=int, default=8)
    parser.add_argument("--skip-detect", action="store_true")
    args = parser.parse_args()
    bench_score(args.score_frames)
    if not args.skip_detect:
        bench_detect(args.detect_frames)


if __name__ == "__main__":
    main_benchmark()
