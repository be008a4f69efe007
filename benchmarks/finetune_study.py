"""Fine-tuning on real EM images (EMPS): the learning curve and the fitted forest, held out by paper.

Images of one paper look alike, so the split groups by ``doi`` (sources.csv): a fixed, seeded
share of the papers is held out, and ``--test-images`` of their images (seeded choice) are the
test set. For each k, the detector is fine-tuned from the given weights on the first k images of
a seeded order of the training papers' images (nested sets) for at most the given minutes, its
forest is fitted (synthetic study frames + the k labelled frames), and both are scored on the
test images: mean per-image F1/precision/recall (paper matching, box IoU >= 0.1) at the model's
own score threshold, and the forest's predicted vs true per-image F1 (MAE, R2, 90% interval
coverage, share of frames with true F1 < 0.5 that the forest calls < 0.5).

    PYTHONPATH=src nice -n 15 python benchmarks/finetune_study.py --points 5:3,10:5,20:10,50:12
    PYTHONPATH=src nice -n 15 python benchmarks/finetune_study.py --points 20:10,all:60,20:10:scratch

A point ``k:minutes:scratch`` starts from freshly initialised weights of the same architecture
(the comparison with the bundled training).

Each finished point is cached under benchmarks/cache/finetune/ (rerun to resume); the section
in RESULTS.md is rewritten from the cached points at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from results_file import EMPS, RESULTS, emps_frame, write_section

from napari_detection_qc.detections.matching import boxes_from_labels, match_frame
from napari_detection_qc.detections.metrics import regression_metrics
from napari_detection_qc.engines import load_detector
from napari_detection_qc.engines.checkpoint import state_dict_sha256
from napari_detection_qc.engines.finetune import finetune
from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector, build_maskrcnn
from napari_detection_qc.finetune.detector_forest import fit_detector_forest
from napari_detection_qc.quality.features import detections_features

HERE = Path(__file__).parent
CACHE = HERE / "cache" / "finetune"
SPLIT_SEED = 15
HELD_OUT_PAPER_SHARE = 0.2
TARGETS = {"20 images, <= 10 min": 0.60, "all images, <= 60 min": 0.75}


def split(test_images: int) -> tuple[list[str], list[str]]:
    """(training stems in a seeded order, test stems): papers held out as whole groups."""
    sources = pd.read_csv(EMPS / "sources.csv")
    rng = np.random.default_rng(SPLIT_SEED)
    papers = sorted(sources["doi"].unique())
    held_papers = set(rng.choice(papers, round(HELD_OUT_PAPER_SHARE * len(papers)), replace=False))
    held = sources[sources["doi"].isin(held_papers)]["stem"].tolist()
    train = sources[~sources["doi"].isin(held_papers)]["stem"].tolist()
    test = sorted(rng.choice(held, min(test_images, len(held)), replace=False))
    return [train[i] for i in rng.permutation(len(train))], test


def score_on_test(detector, test: list[str], forest=None) -> pd.DataFrame:
    """Per test image: true F1/P/R of the detector's output; with a forest, its prediction."""
    rows = []
    for stem in test:
        image, labels = emps_frame(stem)
        found = detector.predict(image)
        truth = match_frame(found.boxes, boxes_from_labels(labels)[0])
        row = {
            "stem": stem,
            "f1": truth.f1,
            "precision": truth.precision,
            "recall": truth.recall,
            "detections": found.count,
            **{f"feature_{k}": v for k, v in detections_features(found).items()},
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    if forest is not None:
        features = table[[c for c in table if c.startswith("feature_")]].rename(columns=lambda c: c[8:])
        predicted = forest.predict(features)
        for column in ("f1", "f1_low", "f1_high", "in_domain"):
            table[f"predicted_{column}"] = predicted[column].to_numpy()
    return table


def forest_quality(table: pd.DataFrame) -> dict[str, float]:
    metrics = regression_metrics(table["f1"], table["predicted_f1"])
    inside = (table["f1"] >= table["predicted_f1_low"]) & (table["f1"] <= table["predicted_f1_high"])
    poor = table["f1"] < 0.5
    caught = float((table.loc[poor, "predicted_f1"] < 0.5).mean()) if poor.any() else float("nan")
    return {
        "mae": metrics["mae"],
        "r2": metrics["r2"],
        "coverage": float(inside.mean()),
        "caught_poor": caught,
        "n_poor": int(poor.sum()),
        "in_domain": float(table["predicted_in_domain"].mean()),
    }


def summary(table: pd.DataFrame) -> dict[str, float]:
    return {
        "f1": float(table["f1"].mean()),
        "median_f1": float(table["f1"].median()),
        "precision": float(table["precision"].mean()),
        "recall": float(table["recall"].mean()),
    }


def from_scratch(parent: TorchvisionDetector, seed: int) -> TorchvisionDetector:
    """The parent's architecture and input rule with freshly initialised weights: what fine-tuning
    would start from without the bundled training."""
    torch.manual_seed(seed)
    state = build_maskrcnn(parent.architecture).state_dict()
    header = {
        k: v
        for k, v in parent.header.items()
        if k not in ("sha256", "score_threshold", "score_threshold_choice")
    }
    header.update(name=f"{parent.name} architecture, from scratch", sha256=state_dict_sha256(state))
    return TorchvisionDetector(header, state, device="cpu")


def run_point(args, k: int, minutes: float, scratch: bool, train: list[str], test: list[str]) -> dict:
    path = CACHE / f"k{k}_m{minutes:g}_{args.tag}{'_scratch' if scratch else ''}.json"
    if path.exists():
        return json.loads(path.read_text())
    parent = load_detector(args.model, device="cpu")
    if scratch:
        parent = from_scratch(parent, args.seed)
    stems = train[:k]
    pairs = [emps_frame(s) for s in stems]
    print(f"k={k}: fine-tuning for <= {minutes} min on {len(stems)} images", flush=True)
    start = time.monotonic()
    result = finetune(
        parent, [p[0] for p in pairs], [p[1] for p in pairs], minutes=minutes, device="cpu", seed=args.seed
    )
    train_minutes = (time.monotonic() - start) / 60
    print(
        f"  {result.header['finetune']['steps']} steps in {train_minutes:.1f} min "
        f"({result.header['finetune']['stopped']}); held-out-frame F1 {result.before} -> {result.after}",
        flush=True,
    )
    start = time.monotonic()
    forest = fit_detector_forest(
        result.detector, [p[0] for p in pairs], [p[1] for p in pairs], frames_per_domain=args.synthetic_frames
    )
    forest_minutes = (time.monotonic() - start) / 60
    table = score_on_test(result.detector, test, forest)
    point = {
        "k": k,
        "from_scratch": scratch,
        "budget_minutes": minutes,
        "train_minutes": train_minutes,
        "forest_minutes": forest_minutes,
        "steps": result.header["finetune"]["steps"],
        "stopped": result.header["finetune"]["stopped"],
        "score_threshold": result.score_threshold,
        **summary(table),
        "forest": forest_quality(table),
    }
    print(f"  test: {point}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    table.to_csv(CACHE / f"k{k}_m{minutes:g}_{args.tag}_test.csv", index=False)
    forest.training_features.join(forest.training_targets).assign(group=forest.training_groups).to_csv(
        CACHE / f"k{k}_m{minutes:g}_{args.tag}_forest_rows.csv", index=False
    )
    path.write_text(json.dumps(point, indent=1))
    return point


def baseline(args, test: list[str]) -> dict:
    parent = load_detector(args.model, device="cpu")
    path = CACHE / f"baseline_{args.tag}_t{parent.score_threshold:g}.json"
    if path.exists():
        return json.loads(path.read_text())
    point = {"k": 0, "score_threshold": parent.score_threshold, **summary(score_on_test(parent, test))}
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(point, indent=1))
    return point


def report(args, base: dict, points: list[dict], n_train: int, n_test: int, command: str) -> str:
    lines = [
        "<!-- finetune_study:start -->",
        "## Fine-tuning on real EM images (EMPS), held out by paper",
        "",
        f"`{command}`",
        "",
        f"Detector `{args.model}` fine-tuned from its weights on k training images ({n_train} available from "
        f"{1 - HELD_OUT_PAPER_SHARE:.0%} of the papers); test: {n_test} images of the other papers (seeded). "
        "2-core CPU shared with other jobs (one torch thread, nice 15), so minutes are wall time under contention. "
        "F1/precision/recall: mean per test image, paper matching (box IoU >= 0.1), at the model's own score "
        "threshold (chosen on its held-out training frames). Forest: fitted for each fine-tuned detector on "
        f"{8 * args.synthetic_frames} synthetic study frames + the k labelled frames, scored on the test images.",
        "",
        "| k | budget (min) | trained (min) | steps | stopped | threshold | F1 | median F1 | precision | recall "
        "| forest MAE | R2 | 90% coverage | caught F1<0.5 | in domain | forest fit (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| 0 (parent) | - | - | - | - | {base['score_threshold']:g} | {base['f1']:.3f} | {base['median_f1']:.3f} | {base['precision']:.3f} | "
        f"{base['recall']:.3f} | | | | | | |",
    ]
    for p in points:
        f = p["forest"]
        lines.append(
            f"| {p['k']}{' (from scratch)' if p.get('from_scratch') else ''} | {p['budget_minutes']:g} | {p['train_minutes']:.1f} | {p['steps']} | {p['stopped']} | "
            f"{p['score_threshold']:g} | {p['f1']:.3f} | {p['median_f1']:.3f} | {p['precision']:.3f} | "
            f"{p['recall']:.3f} | {f['mae']:.3f} | {f['r2']:.2f} | {f['coverage']:.2f} | {f['caught_poor']:.2f} "
            f"({f['n_poor']}) | {f['in_domain']:.2f} | {p['forest_minutes']:.1f} |"
        )
    missing = [] if any(p["k"] == n_train for p in points) else [f"k = all ({n_train} images)"]
    if not any(p.get("from_scratch") for p in points):
        missing.append("training from scratch")
    lines += [
        "",
        "Targets: "
        + "; ".join(f"{k}: F1 >= {v}" for k, v in TARGETS.items())
        + "; forest MAE <= 0.12 and coverage >= 0.80."
        + (f" Not run here: {', '.join(missing)}." if missing else ""),
        "<!-- finetune_study:end -->",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--points",
        default="5:3,10:5,20:10,50:12",
        help="k:minutes[:scratch],... (k=all for every image; scratch: from freshly initialised "
        "weights of the parent's architecture instead of its trained weights)",
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--test-images", type=int, default=30)
    parser.add_argument("--synthetic-frames", type=int, default=3, help="per domain, for each forest")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="bundled", help="names the cached points (one per parent model)")
    args = parser.parse_args(argv)
    if not EMPS.is_dir():
        raise SystemExit(f"{EMPS} is not here; this study needs the EMPS training images")
    torch.set_num_threads(args.threads)
    train, test = split(args.test_images)
    print(f"{len(train)} training images, {len(test)} test images", flush=True)
    base = baseline(args, test)
    print(f"parent on the test images: {base}", flush=True)
    points = []
    for item in args.points.split(","):
        k, minutes, *scratch = item.split(":")
        points.append(
            run_point(
                args,
                len(train) if k == "all" else int(k),
                float(minutes),
                scratch == ["scratch"],
                train,
                test,
            )
        )
    given = sys.argv[1:] if argv is None else argv
    command = "PYTHONPATH=src nice -n 15 python benchmarks/finetune_study.py " + " ".join(given)
    write_section("finetune_study", report(args, base, points, len(train), len(test), command.strip()))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
