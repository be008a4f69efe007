"""Default detector benchmark: held-out F1 per synthetic family at native resolution with the
automatic object size, and CPU time per 1024, 2048 and 4096 px frame; writes the model card.

    PYTHONPATH=src python benchmarks/bench_detector.py [--frames 30] [--threads 2] [--write-card]

Held-out frames use seeds >= 1_000_000 (training used 0, 1, 2, ...). F1 is the paper's matching
(box IoU >= 0.1), mean over frames of the per-frame F1. Targets: >= 0.85 on every
realistic family, >= 0.9 on "clean"; <= 1.5 s per 2048 x 2048 and <= 6 s per 4096 x 4096 frame on
a 2-core CPU. Synthetic numbers; then the same scores on the real EMPS particle images
(``../shared/real-data/emps``, skipped when absent): real EM images, though of particles, not cavities.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from results_file import emps_frame, emps_sources

from napari_detection_qc.detections.matching import boxes_from_labels, match_frame
from napari_detection_qc.engines import default_weights_path, load_checkpoint, load_detector
from napari_detection_qc.synthetic import (
    EMPTY_FRAME_FAMILIES,
    PRESETS,
    REALISTIC_FAMILIES,
    family_frame,
    make_realistic_frame,
)

HELD_OUT_SEED = 1_000_000
COMMAND = "PYTHONPATH=src python benchmarks/bench_detector.py --write-card"
SLOW_FAMILIES = {"large_frames": 8}
"""Frames per family where one frame takes seconds (capped so the benchmark stays minutes long)."""


def held_out_frames(source: str, count: int, first: int = 0):
    """(image, labels) of ``count`` held-out frames of a realistic family or an older named preset,
    from held-out frame ``first`` on."""
    for index in range(first, first + count):
        yield family_frame(source, HELD_OUT_SEED + index)


def family_scores(detector, frames) -> dict:
    """Mean per-frame F1 (and its standard error: one failed frame in ten moves the mean by 0.1),
    precision and recall, pooled F1, frames with objects but no detection, and the mean F1 of the
    frames that hold objects (a frame without any scores 0 for a single false detection, so this
    tells misses on objects apart from false alarms on empty frames)."""
    matches, missed, seconds, pixels, holds_objects = [], 0, 0.0, 0, []
    for image, labels in frames:
        start = time.perf_counter()
        detections = detector.predict(image)
        seconds += time.perf_counter() - start
        pixels += image.size
        truth = boxes_from_labels(labels)[0]
        matches.append(match_frame(detections.boxes, truth))
        missed += int(len(truth) > 0 and detections.count == 0)
        holds_objects.append(len(truth) > 0)
    tp, fp, fn = (sum(getattr(m, k) for m in matches) for k in ("tp", "fp", "fn"))
    return {
        "frames": len(matches),
        "mean_f1": float(np.mean([m.f1 for m in matches])),
        "f1_standard_error": float(np.std([m.f1 for m in matches], ddof=1) / np.sqrt(len(matches)))
        if len(matches) > 1
        else 0.0,
        "mean_precision": float(np.mean([m.precision for m in matches])),
        "mean_recall": float(np.mean([m.recall for m in matches])),
        "pooled_f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "frames_with_cavities_but_no_detection": missed,
        "frames_with_objects": int(sum(holds_objects)),
        "mean_f1_with_objects": float(
            np.mean([m.f1 for m, held in zip(matches, holds_objects) if held] or [np.nan])
        ),
        "seconds_per_megapixel": seconds / (pixels / 1e6),
    }


def empty_frame_scores(detector, count: int) -> dict:
    """Held-out frames without any cavity (``EMPTY_FRAME_FAMILIES`` in turn): the share that keeps
    a detection (each such frame has F1 0 by the paper's definition) and false detections per frame."""
    counts = np.array(
        [
            detector.predict(
                make_realistic_frame(
                    HELD_OUT_SEED + index,
                    EMPTY_FRAME_FAMILIES[index % len(EMPTY_FRAME_FAMILIES)],
                    without_cavities=True,
                )[0]
            ).count
            for index in range(count)
        ]
    )
    return {
        "frames": count,
        "share_with_detections": float((counts > 0).mean()),
        "mean_false_detections": float(counts.mean()),
    }


def time_frames(detector, sides=(1024, 2048, 4096), repeats: int = 2) -> dict:
    """Median wall time of ``predict`` (auto object size) on realistic frames of each size."""
    timings = {}
    for side in sides:
        image, labels, info = make_realistic_frame(HELD_OUT_SEED + 500 + side, "realistic", (side, side))
        detector.predict(image)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            detections = detector.predict(image)
            times.append(time.perf_counter() - start)
        timings[f"{side}x{side}"] = {
            "median_s": statistics.median(times),
            "detections": detections.count,
            "true_cavities": int(len(np.unique(labels)) - 1),
            "object_size_px": detector.last_object_sizes[0],
            "true_diameter_px": info.get("diameter_px"),
            "dtype": str(image.dtype),
        }
    return timings


def cpu_name() -> str:
    """The CPU's model name (speed differs twofold between the 2-core machines this card has run on)."""
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'unknown'} ({platform.machine()}) CPU"


def score_rows(scores: dict) -> str:
    """Model-card table rows of ``family_scores`` results."""
    return "\n".join(
        f"| {name} | {s['frames']} | {s['mean_f1']:.3f} ± {s['f1_standard_error']:.3f} | {s['mean_precision']:.3f} | {s['mean_recall']:.3f} | "
        f"{s['pooled_f1']:.3f} | {s['frames_with_cavities_but_no_detection']} | "
        f"{s['frames_with_objects']}: {s['mean_f1_with_objects']:.3f} |"
        for name, s in scores.items()
    )


def inference_note(arch: dict) -> str:
    """The card's line on the inference shortcuts an architecture takes (low-rank 3x3 convolutions,
    RPN proposals dropped below an objectness)."""
    parts = [
        f"{site} 3x3 conv through rank {rank} (`scripts/compress_default_detector.py`)"
        for site, rank in arch.get("low_rank", {}).items()
    ]
    if arch["rpn"].get("score_thresh_test"):
        parts.append(
            f"RPN proposals under objectness {arch['rpn']['score_thresh_test']:g} dropped before their NMS"
        )
    return ("Inference: " + "; ".join(parts) + ".") if parts else ""


def verifier_note(header: dict) -> str:
    """The card's line on the detection verifier in a model's header (none: empty)."""
    verifier = header.get("verifier")
    if verifier is None:
        return ""
    return (
        "\n- Detection verifier (`engines/detection_verifier.py`): boosted trees over each detection's surroundings drop "
        f"detections below probability {verifier['min_probability']:g}; fitted by `benchmarks/bench_verifier.py --write` "
        f"on {verifier['fitted_on']['detections']} detections of frames this card does not score."
    )


def model_card(
    path: Path, scores: dict, empty: dict, real: dict, timings: dict, threads: int, bfloat16: bool
) -> str:
    header, _ = load_checkpoint(path)
    arch, training, scale = header["architecture"], header["training"], header["input"]["object_size"]
    threshold = header.get("score_threshold", 0.1)
    chosen = header.get("score_threshold_choice")
    if chosen and "command" in chosen:
        choice = f": {chosen['rule']}, `{chosen['command']}`"
    elif chosen:
        choice = (
            f", chosen by `scripts/choose_score_threshold.py` on validation seeds {chosen['validation_seeds']}: "
            f"mean F1 over sources {chosen['mean_f1_at_0.1']:.3f} at 0.1, {chosen['mean_f1']:.3f} at {threshold:g}"
        )
    else:
        choice = ""
    real_section = (
        f"""
## Real EM images: EMPS (particles, not cavities; the detector never trained on them)
The same scores on the EMPS images in `../shared/real-data/emps` (an unseen domain: the detector was
trained on synthetic cavities only; fine-tune it on such images to do better). The size chooser in
the model's header was fitted on these images' size ladders and its detection verifier on their
detections (with synthetic frames), so this row is partly in-sample; `benchmarks/bench_size_rules.py`
and `benchmarks/bench_verifier.py` score them on papers they never saw. Reproduce: `{COMMAND}`.

| images | frames | mean F1 ± s.e. | mean precision | mean recall | pooled F1 | frames with objects, no detection | frames with objects: their mean F1 |
|---|---|---|---|---|---|---|---|
{score_rows(real)}
"""
        if real
        else ""
    )
    empty_section = (
        f"""
## Held-out frames without cavities
Frames of the same seeds and families ({", ".join(EMPTY_FRAME_FAMILIES)}, in turn) rendered without any
cavity (`make_realistic_frame(..., without_cavities=True)`): any detection is a false positive, and
makes the frame's F1 0. Reproduce: `{COMMAND}`.

| frames | share with any detection | false detections per frame |
|---|---|---|
| {empty["frames"]} | {empty["share_with_detections"]:.2f} | {empty["mean_false_detections"]:.1f} |
"""
        if empty
        else ""
    )
    speed = "\n".join(
        f"| {k} | {t['median_s']:.2f} | {t['detections']} | {t['true_cavities']} | "
        f"{t['object_size_px'] or 0:.1f} | {t['true_diameter_px'] or 0:.1f} |"
        for k, t in timings.items()
    )
    return f"""# Default detector: compact cavity Mask R-CNN

- File: `default_detector.pt` ({path.stat().st_size / 1e6:.1f} MB, float16 weights), torchvision engine,
  sha256 of the weights `{header["sha256"]}`.
- Architecture `{arch["name"]}`: compact ResNet-like backbone (stem {arch["backbone"]["stem_widths"]},
  stages {arch["backbone"]["stage_widths"]}, BatchNorm), FPN {arch["fpn_channels"]} channels (P2-P5 + pool),
  anchors {arch["anchor_sizes"]} x ratios {arch["aspect_ratios"]}, RPN IoU 0.3/0.7, ROI IoU 0.4,
  128 ROIs/image, box head {arch["roi"]["box_head_dim"]}, mask head {arch["roi"]["mask_head_widths"]}, aligned RoIAlign.
  {inference_note(arch)}
- Input: robust intensity (median -> 128, one robust sigma (1.4826 MAD) -> 30 grey levels), 3 identical
  channels; each frame resampled so its typical cavity is {scale["target_px"]:g} px across (factor
  {scale["min_factor"]:g}-{scale["max_factor"]:g}; object size `auto` estimates it per frame with the model
  itself and the size chooser in its header), detected in tiles of at most 1024 px overlapping by at least 128 px, results mapped back to
  the native pixel grid.{verifier_note(header)}
- Arithmetic: on CPUs with native bfloat16 (AVX512-BF16 or AMX) the convolutions of backbone, FPN,
  RPN head and mask head run in bfloat16 (boxes, scores and embeddings stay float32); elsewhere
  everything is float32. This card: {"bfloat16" if bfloat16 else "float32"}.
- Purpose: a detector that installs with the plugin and runs offline. Trained on synthetic frames only
  (randomized to cover what real TEM cavity micrographs look like); fine-tune it on your corrected
  frames, or use your own weights (e.g. the seed paper's detectron2 `model_final.pth` through
  `load_detector((config_yaml, weights))`).

## Training
{chr(10).join(f"- {k}: {v}" for k, v in training.items())}
- Command: see `scripts/train_default_detector.py` (step-scheduled and resumable).

## Held-out synthetic frames at native resolution, object size `auto`
Seeds >= {HELD_OUT_SEED}; score threshold {threshold:g} (the model's own{choice}); paper matching (box IoU >= 0.1); F1 is the mean of
per-frame F1, ± its standard error over frames. Realistic families come from `make_realistic_frame` (8/16-bit, 512-4096 px); the others
are the older named presets (512 x 512). Reproduce: `{COMMAND}`.

| family | frames | mean F1 ± s.e. | mean precision | mean recall | pooled F1 | frames with cavities, no detection | frames with cavities: their mean F1 |
|---|---|---|---|---|---|---|---|
{score_rows(scores)}
{empty_section}{real_section}
## Speed ({cpu_name()}, {threads} threads, {"bfloat16" if bfloat16 else "float32"}, torch {torch.__version__}, object size `auto`)

| frame | median s | detections | true cavities | auto size px | true median diameter px |
|---|---|---|---|---|---|
{speed}
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="default", help="detector spec for load_detector")
    parser.add_argument("--frames", type=int, default=30, help="held-out frames per family (0: skip F1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--empty", type=int, default=40, help="held-out frames without cavities (0: none)")
    parser.add_argument("--emps", type=int, default=366, help="EMPS images to score (0: none)")
    parser.add_argument("--write-card", action="store_true", help="write models/default_detector.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector = load_detector(args.spec, device="cpu")
    scores = {}
    if args.frames:
        print(
            f"{'family':16s} {'mean F1':>8s} {'s.e.':>6s} {'precision':>9s} {'recall':>7s} {'pooled F1':>9s} {'missed':>6s} with objects: F1"
        )
        for source in (*REALISTIC_FAMILIES, *PRESETS):
            count = min(args.frames, SLOW_FAMILIES.get(source, args.frames))
            scores[source] = family_scores(detector, held_out_frames(source, count))
            print_scores(source, scores[source])
    empty = empty_frame_scores(detector, args.empty) if args.empty else {}
    if empty:
        print(
            f"frames without cavities: {empty['share_with_detections']:.2f} keep a detection, "
            f"{empty['mean_false_detections']:.1f} false detections per frame",
            flush=True,
        )
    real = {}
    stems = emps_sources()["stem"][: args.emps]
    if len(stems):
        real["EMPS"] = family_scores(detector, (emps_frame(stem) for stem in stems))
        print_scores("EMPS (real)", real["EMPS"])
    timings = time_frames(detector, repeats=args.repeats)
    for name, t in timings.items():
        print(
            f"{name}: {t['median_s']:.2f} s median, {t['detections']} detections / {t['true_cavities']} true",
            flush=True,
        )
    print(json.dumps({"held_out": scores, "empty": empty, "real": real, "timing": timings}))
    print(f"reproduce: {COMMAND}")
    if args.write_card and args.spec == "default":
        path = default_weights_path()
        card = model_card(
            path, scores, empty, real, timings, args.threads, getattr(detector, "bfloat16", False)
        )
        path.with_suffix(".md").write_text(card)
        print(f"wrote {path.with_suffix('.md')}")


def print_scores(name: str, s: dict) -> None:
    print(
        f"{name:16s} {s['mean_f1']:8.3f} ±{s['f1_standard_error']:.3f} {s['mean_precision']:9.3f} {s['mean_recall']:7.3f} "
        f"{s['pooled_f1']:9.3f} {s['frames_with_cavities_but_no_detection']:6d} "
        f"{s['frames_with_objects']:4d}: {s['mean_f1_with_objects']:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
