"""Fits the detection verifier (``engines/detection_verifier.py``) and scores it on frames it never saw.

The verifier drops detections whose surroundings look like background. It is fitted on the
detector's own detections, before any verifier, of labelled frames no other benchmark scores:
realistic-family and preset validation frames (seeds from 2000000), realistic frames rendered
without cavities, and the real EMPS images (weighted up, so the real images count as much as a
third of the synthetic ones). Every frame is scored by a verifier fitted without it (synthetic
frames: 5 folds; EMPS: 5 folds grouped by source paper, so a paper's images are never in its own
fit), at each probability cut; the cut that maximizes the mean of the synthetic sources' mean F1
and EMPS's mean F1 is shipped. The model card (``bench_detector.py``) then scores the shipped
detector, verifier included, on its own held-out frames.

The detections are cached per detector (benchmarks/cache/verifier/; about 12 min on one thread).

    PYTHONPATH=src python benchmarks/bench_verifier.py [--threads 1] [--workers 2] [--write]
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_size_rules import VALIDATION_SEED
from results_file import detector_cache, emps_frame, emps_sources, write_section
from sklearn.model_selection import GroupKFold

from napari_detection_qc.detections.matching import (
    PAPER_IOU_THRESHOLD,
    box_iou_matrix,
    boxes_from_labels,
    greedy_matches,
    match_frame,
)
from napari_detection_qc.engines import default_weights_path, load_checkpoint, load_detector, save_checkpoint
from napari_detection_qc.engines.base import as_grayscale
from napari_detection_qc.engines.detection_verifier import (
    EVIDENCE,
    KEEP_BEST_ABOVE,
    DetectionVerifier,
    detection_evidence,
    kept_detections,
)
from napari_detection_qc.engines.intensity import scale_to_255
from napari_detection_qc.synthetic import (
    EMPTY_FRAME_FAMILIES,
    PRESETS,
    REALISTIC_FAMILIES,
    family_frame,
    make_realistic_frame,
)

COMMAND = "PYTHONPATH=src python benchmarks/bench_verifier.py"
CACHE = Path(__file__).parent / "cache" / "verifier"
FIT_SEED = VALIDATION_SEED
"""The size chooser's validation seeds: frames no model card or study scores."""
FAMILY_FRAMES = 130
"""Per realistic family (large frames left out: seconds each)."""
PRESET_FRAMES = 24
EMPTY_FRAMES = 220
EMPS_WEIGHT = 3.0
"""Each EMPS detection weighs this much in the fit (9,000 EMPS against 80,000 synthetic detections)."""
CANDIDATE_THRESHOLDS_TRIED = "0.15, 0.3 and 0.65, the threshold chosen before the verifier existed"
CUTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
EMPS = "EMPS"


def fitting_frames() -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(source, frame name, image, labels) of every frame the verifier learns from."""
    families = [family for family in REALISTIC_FAMILIES if family != "large_frames"]
    for family in families:
        for seed in range(FIT_SEED, FIT_SEED + FAMILY_FRAMES):
            yield (family, f"{family}:{seed}", *family_frame(family, seed))
    for preset in PRESETS:
        for seed in range(FIT_SEED, FIT_SEED + PRESET_FRAMES):
            yield (preset, f"{preset}:{seed}", *family_frame(preset, seed))
    for index in range(EMPTY_FRAMES):
        family = EMPTY_FRAME_FAMILIES[index % len(EMPTY_FRAME_FAMILIES)]
        image, labels, _ = make_realistic_frame(FIT_SEED + index, family, without_cavities=True)
        yield ("no cavities", f"empty {family}:{FIT_SEED + index}", image, labels)
    for stem in emps_sources()["stem"]:
        yield (EMPS, stem, *emps_frame(stem))


def frame_examples(detector, image: np.ndarray, labels: np.ndarray) -> dict | None:
    """A frame's detections at the detector's scale (before any verifier), their evidence and
    whether each is a true positive; boxes and truth in the resampled grid (IoU does not change)."""
    scaled = scale_to_255(as_grayscale(image), detector.normalisation)
    if scaled is None:
        return None
    resampled, found = detector.detect_resampled(scaled)
    ratio = np.array([resampled.shape[0] / scaled.shape[0], resampled.shape[1] / scaled.shape[1]] * 2)
    truth = boxes_from_labels(labels)[0] * ratio
    evidence = detection_evidence(
        resampled, found.boxes, found.scores, found.mask_probs, detector.scale_rule.target_px
    )
    true = greedy_matches(box_iou_matrix(truth, found.boxes), PAPER_IOU_THRESHOLD)
    return {"evidence": evidence, "true": true, "boxes": found.boxes, "truth": truth}


def cached_examples(detector) -> list[dict]:
    path = detector_cache(CACHE, detector, verified=False) / "examples.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    start, rows = time.perf_counter(), []
    for source, name, image, labels in fitting_frames():
        examples = frame_examples(detector, image, labels)
        if examples is not None:
            rows.append({"source": source, "name": name, **examples})
        if len(rows) % 100 == 0:
            print(f"{len(rows)} frames, {time.perf_counter() - start:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(rows))
    return rows


def fit(rows: list[dict], cut: float) -> DetectionVerifier:
    evidence = np.vstack([row["evidence"] for row in rows])
    true = np.concatenate([row["true"] for row in rows])
    weight = np.concatenate(
        [np.full(len(row["true"]), EMPS_WEIGHT if row["source"] == EMPS else 1.0) for row in rows]
    )
    frames = pd.Series([row["source"] for row in rows]).value_counts().to_dict()
    return DetectionVerifier.fit_evidence(
        evidence, true, {"frames": frames, "emps_weight": EMPS_WEIGHT}, cut, weight
    )


def synthetic_folds(rows: list[dict]) -> list[list[int]]:
    """Row indices of the synthetic frames in 5 folds (one frame per group)."""
    synthetic = [i for i, row in enumerate(rows) if row["source"] != EMPS]
    return [
        [synthetic[i] for i in test]
        for _, test in GroupKFold(5).split(synthetic, groups=[rows[i]["name"] for i in synthetic])
    ]


def emps_folds(rows: list[dict]) -> list[list[int]]:
    """Row indices of the EMPS images in 5 folds grouped by source paper (none without EMPS rows)."""
    real = [i for i, row in enumerate(rows) if row["source"] == EMPS]
    if not real:
        return []
    sources = emps_sources()
    doi = dict(zip(sources["stem"], sources["doi"]))
    return [
        [real[i] for i in test]
        for _, test in GroupKFold(5).split(real, groups=[doi[rows[i]["name"]] for i in real])
    ]


def held_out_probabilities(rows: list[dict], workers: int = 1) -> list[np.ndarray]:
    """Each frame's detections' probabilities by a verifier fitted without its fold (folds fitted
    on ``workers`` processes at once)."""
    folds = synthetic_folds(rows) + emps_folds(rows)
    probabilities = [None] * len(rows)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        fitted = pool.map(partial(_fit_without, rows), [set(fold) for fold in folds])
        for number, (fold, verifier) in enumerate(zip(folds, fitted), 1):
            for i in fold:
                probabilities[i] = (
                    verifier.probabilities(rows[i]["evidence"]) if len(rows[i]["true"]) else np.zeros(0)
                )
            print(f"fold {number}/{len(folds)} fitted", flush=True)
    return probabilities


def _fit_without(rows: list[dict], held: set[int]) -> DetectionVerifier:
    return fit([row for i, row in enumerate(rows) if i not in held], 0.5)


def f1_table(rows: list[dict], probabilities: list[np.ndarray]) -> pd.DataFrame:
    """Mean F1 per source without a verifier and at each cut (a frame's most probable detection
    kept as the shipped verifier keeps it)."""
    records = []
    for row, probability in zip(rows, probabilities):
        record = {"source": row["source"], "none": match_frame(row["boxes"], row["truth"]).f1}
        for cut in CUTS:
            record[cut] = match_frame(
                row["boxes"][kept_detections(probability, cut, KEEP_BEST_ABOVE)], row["truth"]
            ).f1
        records.append(record)
    return pd.DataFrame(records).groupby("source", sort=False).mean()


def frames_left_empty(rows: list[dict], probabilities: list[np.ndarray], cut: float) -> pd.DataFrame:
    """Per source, frames with objects that keep no detection: without a verifier, with the
    shipped one, and with one that may drop every detection of a frame."""
    records = []
    for row, probability in zip(rows, probabilities):
        if len(row["truth"]):
            records.append(
                {
                    "source": row["source"],
                    "none": not len(row["boxes"]),
                    "shipped": not kept_detections(probability, cut, KEEP_BEST_ABOVE).any(),
                    "without keeping the best": not kept_detections(probability, cut, np.inf).any(),
                }
            )
    return pd.DataFrame(records).groupby("source", sort=False).sum().astype(int)


def chosen_cut(table: pd.DataFrame) -> float:
    """The cut with the best mean of the synthetic sources' mean F1 and EMPS's."""
    synthetic = table.drop(index=EMPS, errors="ignore").mean()
    overall = (synthetic + table.loc[EMPS]) / 2 if EMPS in table.index else synthetic
    return float(overall[list(CUTS)].astype(float).idxmax())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="verifier fits at once (processes)")
    parser.add_argument(
        "--write",
        action="store_true",
        help="store the verifier fitted on every frame in the bundled detector",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="the detector's candidate threshold (default: the model's own); with --write it becomes "
        "the model's own",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = load_detector("default", device="cpu", score_threshold=args.score_threshold)
    rows = cached_examples(detector)
    probabilities = held_out_probabilities(rows, args.workers)
    table = f1_table(rows, probabilities)
    cut = chosen_cut(table)
    left_empty = frames_left_empty(rows, probabilities, cut)
    print(table.round(3).to_string())
    print(left_empty.to_string())
    print(f"chosen cut: {cut}\nreproduce: {COMMAND}")
    if args.write:
        shipped = fit(rows, cut)
        path = default_weights_path()
        header, state_dict = load_checkpoint(path)
        header["verifier"] = shipped.to_header()
        if args.score_threshold is not None:
            header["score_threshold"] = args.score_threshold
            header["score_threshold_choice"] = {
                "rule": "the detection verifier's candidate threshold (the detector proposes down to it, the "
                f"verifier decides), chosen on the verifier benchmark's held-out F1 ({CANDIDATE_THRESHOLDS_TRIED})",
                "command": f"{COMMAND} --score-threshold {args.score_threshold:g} --write",
            }
        save_checkpoint(path, header, state_dict)
        print(f"wrote the detection verifier ({shipped.fitted_on}) into {path}")
    counts = pd.Series([row["source"] for row in rows]).value_counts()
    lines = "\n".join(
        f"| {source} ({counts[source]}) | {values['none']:.3f} | {values[cut]:.3f} | "
        + " | ".join(f"{values[c]:.3f}" for c in CUTS)
        + " |"
        for source, values in table.iterrows()
    )
    with_objects = pd.Series([row["source"] for row in rows if len(row["truth"])]).value_counts()
    empty_lines = "\n".join(
        f"| {source} | {with_objects[source]} | " + " | ".join(str(v) for v in values) + " |"
        for source, values in left_empty.iterrows()
        if values.any()
    )
    write_section(
        "verifier",
        f"""<!-- verifier:start -->
## The detection verifier: F1 on frames its fit never saw

Why: on the model card's frames without cavities the compact detector kept a false detection on
37 of 40 (dark background blotches scored 0.7-0.98), and retraining with such frames cost
over-focus cavities more than it gained. `engines/detection_verifier.py` looks at each detection's
surroundings ({len(EVIDENCE)} numbers: score, size, mask, a ring profile, edge gradient, frame
context) and drops those a small boosted classifier finds unlikely.

`{COMMAND}` (bundled detector, weights {detector.weights_sha256[:8]}). Mean per-frame F1 (paper
matching) per source (frames in brackets), without a verifier, at the shipped probability cut
({cut}: the best mean of the synthetic sources' mean and EMPS's), and at each cut. Every frame is
scored by a verifier fitted without it: synthetic frames in 5 folds, EMPS in 5 folds grouped by
source paper; EMPS detections weigh {EMPS_WEIGHT:g}x in each fit. A frame whose detections would
all be dropped keeps its most probable one if that reaches {KEEP_BEST_ABOVE:g} (below).

The detector proposes candidates down to its own score threshold ({detector.score_threshold:g}) and the verifier
decides. Candidate thresholds compared (`{COMMAND} --score-threshold T`, each at its
chosen cut), mean F1 of the synthetic sources / EMPS / EMPS images left without a detection:
0.65 (the threshold chosen before the verifier existed) 0.880 / 0.766 / 10; 0.3 0.879 / 0.771 / 9
(speckle_jpeg 0.801 -> 0.824, overfocus_rings 0.932 -> 0.944, tiny_cavities 0.896 -> 0.874);
0.15 0.872 / 0.765 / 11. Lower candidates let faint cavities the compact model scores 0.3-0.65
through, where the verifier can tell them from background by their surroundings.

Tree depth compared (these folds, candidates from 0.3, each at its chosen cut), mean
F1 of the synthetic sources / EMPS / frames without cavities / EMPS images left without a
detection: depth 3 (shipped, cut 0.3) 0.879 / 0.771 / 0.441 / 9; depth 5 (cut 0.25) 0.892 / 0.772 /
0.591 / 10 (realistic 0.878 -> 0.897, speckle_jpeg 0.824 -> 0.825). Not shipped: the quality forest
refit on depth 5's detections missed the domain-flag targets (`TREE_DEPTH`). Evidence
tried then and not kept (no held-out gain beyond +-0.005; scikit-learn's histogram trees as a fast
stand-in): ring contrasts as z-scores against 256 random windows of the same size in the same
frame, each detection's difference from the frame's higher-scoring half, within-frame ranks, the
resampling factor, and the edge width at native resolution. On speckle_jpeg every variant stayed
at 0.82-0.83 while keeping only the true candidates would give 0.915. Same stand-in
(cut 0.3; it gives speckle_jpeg 0.820, synthetic mean 0.882, EMPS 0.775): the detector's own
box-head representation of each candidate added to the evidence, all 256 numbers or their 8 or 16
principal components, gave speckle_jpeg 0.823 / 0.824 / 0.821, synthetic mean 0.881 / 0.880 /
0.882, EMPS 0.777 / 0.780 / 0.784; speckle_jpeg detections weighted 3x in the fit 0.821. What
separates true from false candidates there is in neither the surroundings nor the model's features.
Study (`PYTHONPATH=src python benchmarks/patch_verifier_study.py`, the shipped verifier's fit
on these folds): a small CNN trained on each candidate's pixels (a 32 x 32 window reaching 3 box
half-sides, robust z-scores of the frame at the detector's scale), its out-of-fold logit added to
the evidence, gave at cut 0.3 speckle_jpeg 0.824 (unchanged; best cut 0.829), realistic 0.878 ->
0.906, hard_shift 0.605 -> 0.681, frames without cavities 0.441 -> 0.532, synthetic mean 0.879 ->
0.891, EMPS 0.771 -> 0.774. The pixels lift every other family but not speckle_jpeg: there the
true and false candidates look alike to any model tried. Not shipped (a verifier
that changes the detections needs the forest refit and the domain-flag targets rechecked).

| source | none | shipped ({cut}) | {" | ".join(map(str, CUTS))} |
|---|---|---|{"---|" * len(CUTS)}
{lines}

Frames with objects left without any detection (the issue's real-data check counts them), at the
shipped cut: where the verifier would drop all of a frame's detections, the shipped one keeps the
most probable if its probability is at least {KEEP_BEST_ABOVE:g} (`KEEP_BEST_ABOVE`).

| source | frames with objects | no verifier | shipped | dropping all allowed |
|---|---|---|---|---|
{empty_lines}
<!-- verifier:end -->""",
    )


if __name__ == "__main__":
    main()
