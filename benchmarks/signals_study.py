"""Does the quality forest know when it does not know? Before/after with detector signals.

Frames: the synthetic presets (as in forest_study.py, random severities), the realistic families
(``synthetic.make_realistic_frame``, at 512 x 512 to keep CPU time modest) and the real EMPS
particle images (an unseen domain for the cavity detector; benchmark only, skipped when absent).
For every frame: the 18 candidate features, the detector's label-free signals (TTA agreement,
backbone embedding), the time they added, and the true precision/recall/F1 (paper matching).

Evaluation, in the paper's format: leave-one-domain-out over the synthetic domains (presets and
realistic families), and EMPS scored by a forest fit on all synthetic frames. Per held-out domain:
MAE, R2, 90%-interval coverage and MAE on the frames called in domain, the share of failing frames
(true F1 < 0.5) caught (predicted F1 < 0.5 or flagged out of domain), and AUROC of each signal for
"this frame fails". "before" is the forest as shipped (the default forest's features, the old
domain flag and intervals); "after" the forest with signals.

Reproduce (detections and signals cached under benchmarks/cache/signals/<detector>/; resumable):

    nice -n 15 python benchmarks/signals_study.py                      # collect + evaluate
    nice -n 15 python benchmarks/signals_study.py --model PATH.pt      # another detector
    python benchmarks/signals_study.py --frames-per-domain 3 --emps 5 --no-save   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from results_file import detector_cache, emps_frame, emps_sources

from napari_detection_qc.detections.matching import boxes_from_labels, match_frame
from napari_detection_qc.engines import load_detector
from napari_detection_qc.quality.features import detections_features
from napari_detection_qc.quality.signals import EMBEDDING, SIGNAL_SECONDS, TTA_SIGNALS

HERE = Path(__file__).parent
CACHE = HERE / "cache" / "signals"
REALISTIC_SEED = 7_000_000
REALISTIC_SHAPE = (512, 512)


# -- frames ---------------------------------------------------------------------------------------
def frame_specs(frames_per_domain: int, realistic_per_family: int, emps_count: int) -> list[dict]:
    from napari_detection_qc.synthetic import PRESETS, REALISTIC_FAMILIES
    from napari_detection_qc.synthetic.study_frames import frame_plan

    specs = [
        {"kind": "preset", "domain": r.domain, "severity": r.severity, "seed": int(r.seed), "group": r.domain}
        for r in frame_plan(frames_per_domain).itertuples()
        if r.domain in PRESETS
    ]
    for f, family in enumerate(REALISTIC_FAMILIES):
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
    """(image, ground-truth instance labels) of one study frame."""
    if spec["kind"] == "preset":
        from napari_detection_qc.synthetic.study_frames import study_frame

        return study_frame(spec["domain"], spec["severity"], spec["seed"])
    if spec["kind"] == "realistic":
        from napari_detection_qc.synthetic import make_realistic_frame

        image, labels, _ = make_realistic_frame(spec["seed"], spec["family"], REALISTIC_SHAPE)
        return image, labels
    return emps_frame(spec["stem"])


def frame_key(spec: dict) -> str:
    return spec["stem"] if spec["kind"] == "emps" else str(spec["seed"])


def collect(detector, specs: list[dict]) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per frame (features, signals, truth, timings) and the frames' embeddings."""
    root = detector_cache(CACHE, detector)
    rows, embeddings = [], []
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        path = root / spec["domain"].replace(":", "_") / f"{frame_key(spec)}.npz"
        if not path.exists():
            image, labels = load_frame(spec)
            t0 = time.perf_counter()
            frame = detector.predict(image, signals="all")
            with_signals = time.perf_counter() - t0
            truth = match_frame(frame.boxes, boxes_from_labels(labels)[0])
            row = {
                **spec,
                "height": image.shape[0],
                "width": image.shape[1],
                "n_true": int(labels.max()),
                **detections_features(frame),
                **{k: frame.signals[k] for k in TTA_SIGNALS},
                "f1": truth.f1,
                "precision": truth.precision,
                "recall": truth.recall,
                "detect_seconds": with_signals - frame.signals[SIGNAL_SECONDS],
                "signals_seconds": frame.signals[SIGNAL_SECONDS],
            }
            embedding = frame.signals.get(EMBEDDING, np.zeros(0, np.float32))
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.stem + ".tmp.npz")
            np.savez(temporary, row=json.dumps(row), embedding=embedding)
            temporary.replace(path)
        with np.load(path) as saved:
            rows.append(json.loads(str(saved["row"])))
            embeddings.append(saved["embedding"])
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(specs)} frames ({time.perf_counter() - start:.0f} s)", flush=True)
    return pd.DataFrame(rows), np.stack(embeddings)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-domain", type=int, default=30)
    parser.add_argument("--realistic-per-family", type=int, default=20)
    parser.add_argument("--emps", type=int, default=366, help="EMPS images to use (0: none)")
    parser.add_argument("--model", default="default", help="detector spec (default: the bundled model)")
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    detector = load_detector(args.model)
    specs = frame_specs(args.frames_per_domain, args.realistic_per_family, args.emps)
    print(f"{len(specs)} frames with {detector}", flush=True)
    table, embeddings = collect(detector, specs)
    if args.collect_only:
        return
    from signals_evaluation import evaluate_and_report

    evaluate_and_report(table, embeddings, detector, args)


if __name__ == "__main__":
    main()
