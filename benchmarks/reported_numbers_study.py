"""The numbers a scientist reports: estimated true counts with intervals, p_true per detection, label-next.

Frames: synthetic presets and realistic families (the package's generator, 512 x 512 for the
realistic ones) and the real EMPS particle images (benchmark only; skipped when absent). Each frame
is detected once by the bundled detector (embeddings on, as the default detection) and cached with
its detections, which of them are true positives (paper matching, IoU >= 0.1) and its true count.

Evaluation, every forest prediction out of fold: EMPS grouped by source paper (five folds, the
other papers' images and all synthetic frames in training, as the shipped recipe), synthetic frames
grouped by domain (leave-one-domain-out, all EMPS in training).

(a) counts: ``counts.count_estimates`` (count x P / R with the forest's intervals and counting noise)
    against the raw detection count: mean relative error, and 90% interval coverage, with the
    interval's scale conformally calibrated on the frames of other groups (EMPS by paper);
(b) p_true: ``p_true.detection_p_true`` with its calibration refit on other groups, against the raw
    score as a probability: Brier score and reliability per bin;
(c) label next: ``ranking.rank_frames`` on the EMPS images held out by paper: share of the
    detector's real failures (true F1 < 0.5) among the first 5 and 20 frames, against random order.

Reproduce (detections cached under benchmarks/cache/reported/<detector>/; resumable):

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/reported_numbers_study.py
    python benchmarks/reported_numbers_study.py --frames-per-domain 2 --realistic-per-family 2 --emps 20 --no-save
    python benchmarks/reported_numbers_study.py --print-calibration   # the constants counts.py and p_true.py ship
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_file import detector_cache, emps_frame, emps_sources, write_section

from napari_detection_qc.detections.matching import (
    box_iou_matrix,
    boxes_from_labels,
    greedy_matches,
    match_frame,
)
from napari_detection_qc.engines import load_detector
from napari_detection_qc.quality.features import detections_features
from napari_detection_qc.quality.signals import EMBEDDING

HERE = Path(__file__).parent
CACHE = HERE / "cache" / "reported"
REALISTIC_SEED = 7_500_000
REALISTIC_SHAPE = (512, 512)
PRESET_SEED = 8_500_000
COMMAND = "OMP_NUM_THREADS=1 nice -n 15 python benchmarks/reported_numbers_study.py"


# -- frames ---------------------------------------------------------------------------------------
def frame_specs(frames_per_domain: int, realistic_per_family: int, emps_count: int) -> list[dict]:
    from napari_detection_qc.synthetic import PRESETS, REALISTIC_FAMILIES

    rng = np.random.default_rng(0)
    specs = []
    for d, domain in enumerate(PRESETS):
        for i in range(frames_per_domain):
            severity = 0.0 if domain == "clean" else float(rng.uniform(0.3, 1.0))
            specs.append(
                {
                    "kind": "preset",
                    "domain": domain,
                    "severity": severity,
                    "seed": PRESET_SEED + 10_000 * d + i,
                    "group": domain,
                }
            )
    for f, family in enumerate(REALISTIC_FAMILIES):
        if family == "large_frames":  # 2-4k px frames: minutes each on a shared CPU
            continue
        for i in range(realistic_per_family):
            specs.append(
                {
                    "kind": "realistic",
                    "domain": f"realistic:{family}",
                    "family": family,
                    "seed": REALISTIC_SEED + 10_000 * f + i,
                    "group": f"realistic:{family}",
                }
            )
    if emps_count:
        for row in emps_sources().head(emps_count).itertuples():
            specs.append({"kind": "emps", "domain": "emps", "stem": row.stem, "group": str(row.doi)})
    return specs


def load_frame(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    if spec["kind"] == "preset":
        from napari_detection_qc.synthetic.study_frames import study_frame

        return study_frame(spec["domain"], spec["severity"], spec["seed"])
    if spec["kind"] == "realistic":
        from napari_detection_qc.synthetic import make_realistic_frame

        image, labels, _ = make_realistic_frame(spec["seed"], spec["family"], REALISTIC_SHAPE)
        return image, labels
    return emps_frame(spec["stem"])


def collect(detector, specs: list[dict]) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """(one row per frame: spec, features, truth; embeddings; one row per detection: frame row,
    score, whether it is a true positive)."""
    root = detector_cache(CACHE, detector)
    rows, embeddings, detections = [], [], []
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        key = spec["stem"] if spec["kind"] == "emps" else str(spec["seed"])
        path = root / spec["domain"].replace(":", "_") / f"{key}.npz"
        if not path.exists():
            image, labels = load_frame(spec)
            frame = detector.predict(image, signals="cheap")
            true_boxes = boxes_from_labels(labels)[0]
            truth = match_frame(frame.boxes, true_boxes)
            tp = greedy_matches(box_iou_matrix(true_boxes, frame.boxes), 0.1)
            row = {
                **spec,
                "height": image.shape[0],
                "width": image.shape[1],
                "n_true": len(true_boxes),
                **detections_features(frame),
                "f1": truth.f1,
                "precision": truth.precision,
                "recall": truth.recall,
            }
            embedding = frame.signals.get(EMBEDDING)
            embedding = np.full(0, np.nan, np.float32) if embedding is None else embedding
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.stem + ".tmp.npz")
            np.savez(temporary, row=json.dumps(row), embedding=embedding, scores=frame.scores, tp=tp)
            temporary.replace(path)
        with np.load(path) as saved:
            rows.append(json.loads(str(saved["row"])))
            embeddings.append(saved["embedding"])
            detections.append(pd.DataFrame({"row": i, "score": saved["scores"], "tp": saved["tp"]}))
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(specs)} frames ({time.perf_counter() - start:.0f} s)", flush=True)
    width = max(len(e) for e in embeddings)
    embeddings = np.stack([e if len(e) == width else np.full(width, np.nan, np.float32) for e in embeddings])
    return pd.DataFrame(rows), embeddings, pd.concat(detections, ignore_index=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-domain", type=int, default=8)
    parser.add_argument("--realistic-per-family", type=int, default=10)
    parser.add_argument("--emps", type=int, default=366, help="EMPS images to use (0: none)")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--print-calibration", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    detector = load_detector("default")
    specs = frame_specs(args.frames_per_domain, args.realistic_per_family, args.emps)
    print(f"{len(specs)} frames with {detector}", flush=True)
    started = time.perf_counter()
    table, embeddings, detections = collect(detector, specs)
    if args.collect_only:
        return
    from reported_numbers_evaluation import evaluate

    text = evaluate(table, embeddings, detections, detector, args, time.perf_counter() - started)
    print(text)
    if not args.no_save and not args.print_calibration:
        write_section("reported-numbers", text)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
