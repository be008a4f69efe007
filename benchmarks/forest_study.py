"""The seed paper's study, reproduced on synthetic domains with the bundled detector.

Frames come from every synthetic domain preset at random severities (0 = clean .. 1 = the full
preset), so detection F1 varies the way the paper's splits made it vary. For every frame: the 18
candidate features of the detector's output and the true precision, recall and F1 (paper matching,
IoU >= 0.1). Then the paper's evaluation: repeated random 5-fold CV and leave-one-domain-out CV
for three feature sets, a SHAP feature-count sweep, the reliable-frame classifier at F1 0.5,
interval coverage, the in-domain flag on held-out domains, and natural images as the
out-of-domain check (the paper's COCO test). Finally the default forest is fit on all frames
plus the real EMPS images (``../shared/real-data/emps``): real detections, successes and failures,
that no synthetic frame shows it (without them it is fit on the synthetic frames alone and says so).
Its novelty check stays fit on the synthetic frames: a real image is still novel unless it looks
like them, and then the forest's predictions have learnt from real ones.

Reproduce (resumable: detections are cached per detector, score threshold and frame under benchmarks/cache/study/):

    python benchmarks/forest_study.py                 # 650 frames, writes RESULTS.md section
    python benchmarks/forest_study.py --frames-per-domain 4 --repeats 1 --no-save   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from results_file import EMPS, RESULTS, detector_cache, emps_frame, emps_sources, write_section

from napari_detection_qc.detections.matching import boxes_from_labels, match_frame
from napari_detection_qc.detections.metrics import regression_metrics, reliability_classification
from napari_detection_qc.detections.records import FrameDetections
from napari_detection_qc.engines import load_detector
from napari_detection_qc.quality.explain import feature_ranking
from napari_detection_qc.quality.features import CANDIDATE_FEATURES, PAPER_FEATURES, detections_features
from napari_detection_qc.quality.forest import TARGETS, QualityForest
from napari_detection_qc.quality.forest_choice import MODELS_DIR
from napari_detection_qc.quality.signals import EMBEDDING, stack_signals
from napari_detection_qc.synthetic.study_frames import frame_plan, study_frame

HERE = Path(__file__).parent
CACHE = HERE / "cache" / "study"
TABLE_PATH = HERE / "data" / "synthetic_study_table.csv"
FIGURES = HERE / "figures"
MIN_FEATURES = 8
"""The SHAP sweep's smallest feature count: the paper's forest's. The sweep is flat on synthetic
domains (held-out MAE 0.042-0.048 from 2 to 18 features with the session-16 detector), so it could
pick a forest that sees scores alone; such a forest cannot tell a natural image's detections from
cavities. Measured on the 20 natural images: called in domain 4 with 2 features,
2 with 5, 1 with 8."""
SAME_MAE = 0.003
"""Held-out MAE differences up to this are noise between feature sets (a few changed frames move
the sweep by as much): the paper's 8 features are kept unless another set beats them by more.
They include object sizes, which real failures need: in the signals study the
shipped recipe with the paper's 8 features caught 0.90 of the failing EMPS images of unseen papers,
with the SHAP top-8 (no size feature; 0.001 better on held-out synthetic domains) 0.88."""
PAPER_GROUPED = {"rmse": 0.156, "mae": 0.121, "r2": 0.290, "nrmse": 0.703, "nmae": 0.290}
PAPER_RANDOM = {"rmse": 0.107, "mae": 0.082, "r2": 0.444, "nrmse": 0.575, "nmae": 0.129}
PAPER_ALL = {
    "f1": {"rmse": 0.127, "mae": 0.093, "r2": 0.774, "nrmse": 0.475, "nmae": 0.167},
    "precision": {"rmse": 0.132, "mae": 0.094, "r2": 0.81, "nrmse": 0.435, "nmae": 0.163},
    "recall": {"rmse": 0.192, "mae": 0.140, "r2": 0.57, "nrmse": 0.656, "nmae": 0.198},
}


# -- frames ---------------------------------------------------------------------------------------
def cached_detections(detector, folder: str, key: str, load):
    """The frame's detections, ground-truth boxes and backbone embedding (the "cheap" signal the
    default forest's novelty uses; empty for a blank frame), from cache or by running the detector
    on ``load()`` -> (image, instance labels)."""
    path = detector_cache(CACHE, detector) / folder / f"{key}.npz"
    if path.exists():
        with np.load(path) as saved:
            if "embedding" in saved:  # entries from before embeddings were kept are redone
                frame = FrameDetections(saved["boxes"], saved["scores"], saved["labels"])
                return frame, saved["true_boxes"], saved["embedding"]
    image, truth = load()
    frame = detector.predict(image, signals="cheap")
    embedding = np.asarray(frame.signals.get(EMBEDDING, np.zeros(0)), dtype=np.float32)  # empty: blank frame
    true_boxes, _ = boxes_from_labels(truth)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(
        tmp,
        boxes=frame.boxes,
        scores=frame.scores,
        labels=frame.labels,
        true_boxes=true_boxes,
        embedding=embedding,
    )
    tmp.replace(path)
    return frame, true_boxes, embedding


def frame_rows(detector, frames) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per frame (its spec, features, true quality) and the frames' embeddings (NaN rows
    for blank frames). ``frames``: (spec dict, cache folder, cache key, loader)."""
    rows, embeddings = [], []
    start = time.perf_counter()
    for i, (spec, folder, key, load) in enumerate(frames):
        frame, true_boxes, embedding = cached_detections(detector, folder, key, load)
        embeddings.append(embedding)
        truth = match_frame(frame.boxes, true_boxes)
        rows.append(
            {
                **spec,
                "n_true": len(true_boxes),
                **detections_features(frame),
                "f1": truth.f1,
                "precision": truth.precision,
                "recall": truth.recall,
            }
        )
        if (i + 1) % 50 == 0:
            print(f"  {i + 1} frames ({time.perf_counter() - start:.0f} s)", flush=True)
    size = max(len(e) for e in embeddings)
    return pd.DataFrame(rows), np.stack(
        [e if len(e) else np.full(size, np.nan, np.float32) for e in embeddings]
    )


def build_table(detector, plan: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The synthetic study frames: one row per frame (features, true quality) and embeddings."""
    return frame_rows(
        detector,
        (
            (
                spec._asdict(),
                spec.domain,
                str(spec.seed),
                partial(study_frame, spec.domain, spec.severity, spec.seed),
            )
            for spec in plan.itertuples(index=False)
        ),
    )


def emps_table(detector) -> tuple[pd.DataFrame, np.ndarray]:
    """The real EMPS images (``../shared``; empty when absent), grouped by source paper: real
    detections the default forest learns from besides the synthetic frames."""
    sources = emps_sources()
    if sources.empty:
        return pd.DataFrame(), np.zeros((0, 0), np.float32)
    return frame_rows(
        detector,
        (
            ({"domain": f"emps:{row.doi}", "stem": row.stem}, "emps", row.stem, partial(emps_frame, row.stem))
            for row in sources.itertuples()
        ),
    )


# -- evaluation -----------------------------------------------------------------------------------
def evaluate_set(name, features, table, repeats):
    forest = QualityForest(features=features)
    x, y, groups = table[list(CANDIDATE_FEATURES)], table[list(TARGETS)], table["domain"].to_numpy()
    random_cv = forest.cross_validate(x, y, scheme="random", n_splits=5, n_repeats=repeats)
    grouped_cv = forest.cross_validate(x, y, scheme="grouped", groups=groups)
    return {"name": name, "features": list(features), "random": random_cv, "grouped": grouped_cv}


def f1_sweep(ranking: list[str], table: pd.DataFrame, repeats: int) -> pd.DataFrame:
    """F1 MAE (random and grouped CV) of forests on the top-k SHAP-ranked features (Figure 4)."""
    x, y, groups = table[list(CANDIDATE_FEATURES)], table[list(TARGETS)], table["domain"].to_numpy()
    rows = []
    for k in range(1, len(ranking) + 1):
        forest = QualityForest(features=ranking[:k], n_estimators=50)
        random_mae = forest.cross_validate(x, y, "random", n_repeats=repeats).summary.loc["f1", "mae"]
        grouped_mae = forest.cross_validate(x, y, "grouped", groups=groups).summary.loc["f1", "mae"]
        rows.append({"k": k, "added": ranking[k - 1], "random_mae": random_mae, "grouped_mae": grouped_mae})
        print(f"  top-{k}: random MAE {random_mae:.3f}, grouped MAE {grouped_mae:.3f}", flush=True)
    return pd.DataFrame(rows)


def coverage(predictions: pd.DataFrame, target: str = "f1") -> tuple[float, float]:
    inside = (predictions[f"true_{target}"] >= predictions[f"{target}_low"]) & (
        predictions[f"true_{target}"] <= predictions[f"{target}_high"]
    )
    return float(inside.mean()), float((predictions[f"{target}_high"] - predictions[f"{target}_low"]).mean())


def preferred_set(sets: list[dict]) -> dict:
    """The paper's 8 features unless a set's held-out (grouped) F1 MAE is lower by over ``SAME_MAE``;
    then the best set (``sets`` sorted best last)."""
    mae = {s["name"]: s["grouped"].summary.loc["f1", "mae"] for s in sets}
    paper = next(s for s in sets if s["name"] == "paper 8")
    return paper if mae["paper 8"] - mae[sets[-1]["name"]] <= SAME_MAE else sets[-1]


def natural_images_check(detector, forest: QualityForest) -> pd.DataFrame:
    """Predicted F1 on scikit-image's natural images, where no cavity exists (true F1 = 0)."""
    from skimage import data

    names = [
        "astronaut",
        "camera",
        "cat",
        "chelsea",
        "coffee",
        "coins",
        "grass",
        "gravel",
        "brick",
        "moon",
        "page",
        "rocket",
        "text",
        "hubble_deep_field",
        "immunohistochemistry",
        "horse",
        "clock",
        "retina",
        "colorwheel",
        "logo",
    ]
    rows = []
    for name in names:
        try:
            image = np.asarray(getattr(data, name)())
        except Exception as exc:  # noqa: BLE001 (some images need optional downloads; skip those, say which)
            print(f"  skipped {name}: {exc}")
            continue
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        frame = detector.predict(image, signals="cheap")
        _, embeddings = stack_signals([frame])
        predicted = forest.predict(pd.DataFrame([detections_features(frame)]), embeddings)
        rows.append(
            {
                "image": name,
                "detections": frame.count,
                "predicted_f1": float(predicted["f1"].iloc[0]),
                "in_domain": bool(predicted["in_domain"].iloc[0]),
            }
        )
    return pd.DataFrame(rows)


# -- report ---------------------------------------------------------------------------------------
def metrics_row(summary_row) -> str:
    return " | ".join(f"{summary_row[m]:.3f}" for m in ("rmse", "mae", "r2", "nrmse", "nmae"))


def pooled(predictions: pd.DataFrame, target: str) -> dict[str, float]:
    return regression_metrics(predictions[f"true_{target}"], predictions[target])


def write_plots(table, best):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(exist_ok=True)
    predictions = best["random"].predictions
    predictions = predictions[predictions["repeat"] == 0].copy()
    predictions["domain"] = table["domain"].to_numpy()[predictions["row"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for domain, part in predictions.groupby("domain"):
        axes[0].scatter(part["true_f1"], part["f1"], s=8, alpha=0.6, label=domain)
    axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[0].set(
        xlabel="true F1", ylabel="predicted F1 (random 5-fold CV)", title="Parity, coloured by domain"
    )
    axes[0].legend(fontsize=7, markerscale=2)
    grouped = best["grouped"].predictions
    for domain, part in grouped.groupby("group"):
        axes[1].errorbar(
            part["true_f1"].mean(),
            part["f1"].mean(),
            xerr=part["true_f1"].std(),
            yerr=part["f1"].std(),
            fmt="o",
            capsize=3,
            label=domain,
        )
    axes[1].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[1].set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean true F1",
        ylabel="mean predicted F1 (domain held out)",
        title="Per domain, leave-one-domain-out",
    )
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "study_parity.png", dpi=110)
    plt.close(fig)


def report(table, sets, best, sweep, natural, seconds, command) -> str:
    lines = [
        "<!-- forest_study:start -->",
        "## Synthetic-domain study: our detector, our generator",
        "",
        f"Command: `{command}` — {len(table)} frames over {table['domain'].nunique()} domains, "
        f"{seconds / 60:.1f} min on this 2-core CPU (detections cached; a rerun from cache is faster).",
        "",
        "Mean true F1 of the bundled detector per domain (what the forest has to learn):",
        "",
        "| domain | frames | mean true F1 | std |",
        "|---|---|---|---|",
    ]
    for domain, part in table.groupby("domain", sort=False):
        lines.append(f"| {domain} | {len(part)} | {part['f1'].mean():.3f} | {part['f1'].std():.3f} |")
    lines += [
        "",
        "### Table 2 format: F1, averaged over folds (paper's numbers beside ours)",
        "",
        "| feature set | CV | RMSE | MAE | R2 | NRMSE | NMAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sets:
        lines.append(
            f"| {s['name']} ({len(s['features'])}) | random 5-fold | {metrics_row(s['random'].summary.loc['f1'])} |"
        )
        lines.append(
            f"| {s['name']} ({len(s['features'])}) | leave-one-domain-out | {metrics_row(s['grouped'].summary.loc['f1'])} |"
        )
    lines.append(f"| paper | average of random splits | {metrics_row(PAPER_RANDOM)} |")
    lines.append(f"| paper | average of grouped splits | {metrics_row(PAPER_GROUPED)} |")
    lines += [
        "",
        f"The default forest's features: {best['name']} (the paper's 8 unless another set's held-out MAE "
        f"is lower by over {SAME_MAE}; the SHAP candidate has at least {MIN_FEATURES} features).",
        "",
        f"Per held-out domain ({best['name']}):",
        "",
        "| held-out domain | n | RMSE | MAE | R2 | NRMSE | NMAE | in-domain flag rate | interval coverage |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    folds = best["grouped"].folds
    grouped_predictions = best["grouped"].predictions
    for _, row in folds[folds["target"] == "f1"].iterrows():
        part = grouped_predictions[grouped_predictions["group"] == row["group"]]
        cov, _ = coverage(part)
        lines.append(
            f"| {row['group']} | {row['n']} | {metrics_row(row)} | {part['in_domain'].mean():.2f} | {cov:.2f} |"
        )
    lines += [
        "",
        "### Table 3 format: precision, recall, F1 (pooled over random 5-fold CV, all frames)",
        "",
        "| target | ours RMSE | ours MAE | ours R2 | paper RMSE | paper MAE | paper R2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        ours = pooled(best["random"].predictions, target)
        paper = PAPER_ALL[target]
        lines.append(
            f"| {target} | {ours['rmse']:.3f} | {ours['mae']:.3f} | {ours['r2']:.3f} | "
            f"{paper['rmse']:.3f} | {paper['mae']:.3f} | {paper['r2']:.3f} |"
        )
    random_predictions = best["random"].predictions
    classifier = reliability_classification(random_predictions["true_f1"], random_predictions["f1"], 0.5)
    cov, width = coverage(random_predictions)
    gcov, gwidth = coverage(grouped_predictions)
    lines += [
        "",
        "### Reliable-frame classifier at F1 0.5 (paper's Figure 8: precision 0.89, recall 0.91)",
        "",
        f"Ours ({best['name']}, random CV): precision {classifier['precision']:.3f}, recall "
        f"{classifier['recall']:.3f} ({classifier['n_reliable']} of {len(random_predictions)} "
        "out-of-fold predictions truly reliable).",
        "",
        "### Intervals and the in-domain flag",
        "",
        f"90% conformal interval on held-out folds: coverage {cov:.3f} (mean width {width:.3f}) with random "
        f"CV; {gcov:.3f} (mean width {gwidth:.3f}) with the whole domain held out. In-domain flag rate: "
        f"{random_predictions['in_domain'].mean():.3f} of random-CV test frames, "
        f"{grouped_predictions['in_domain'].mean():.3f} of held-out-domain frames. These cross-validated forests "
        "are fit without the frames' embeddings (global intervals, feature-row flag); the shipped forest's "
        "novelty check is evaluated in the signals study below.",
        "",
        "### Feature-count sweep by SHAP rank (paper's Figure 4), F1 MAE",
        "",
        "| k | feature added | random 5-fold | leave-one-domain-out |",
        "|---|---|---|---|",
    ]
    for row in sweep.itertuples():
        lines.append(f"| {row.k} | {row.added} | {row.random_mae:.3f} | {row.grouped_mae:.3f} |")
    in_domain_f1 = table.loc[table["domain"] == "clean", "f1"]
    lines += [
        "",
        "### Out of domain: natural images (the paper's COCO test)",
        "",
        f"The default forest on {len(natural)} scikit-image natural images (true F1 = 0: no cavities): "
        f"predicted F1 median {natural['predicted_f1'].median():.3f}, max {natural['predicted_f1'].max():.3f}, "
        f"{(natural['predicted_f1'] < 0.5).mean():.0%} below 0.5, {(~natural['in_domain']).mean():.0%} flagged "
        f"out of domain; the clean domain's true F1 has median {in_domain_f1.median():.3f}.",
        "",
        "| image | detections | predicted F1 | in domain |",
        "|---|---|---|---|",
    ]
    for row in natural.itertuples():
        lines.append(
            f"| {row.image} | {row.detections} | {row.predicted_f1:.3f} | {'yes' if row.in_domain else 'no'} |"
        )
    lines += ["", "![parity](figures/study_parity.png)", "<!-- forest_study:end -->"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-per-domain", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10, help="repeats of random 5-fold CV")
    parser.add_argument("--model", default="default", help="detector spec (default: the bundled model)")
    parser.add_argument("--no-save", action="store_true", help="do not write the forest, table or RESULTS.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import torch

    torch.manual_seed(0)
    detector = load_detector(args.model)
    plan = frame_plan(args.frames_per_domain)
    print(f"{len(plan)} frames over {plan['domain'].nunique()} domains with {detector}", flush=True)
    table, embeddings = build_table(detector, plan)

    print("evaluating feature sets", flush=True)
    extended = tuple(CANDIDATE_FEATURES)
    all_forest = QualityForest(features=extended).fit(table[list(CANDIDATE_FEATURES)], table[list(TARGETS)])
    ranking = list(feature_ranking(all_forest).index)
    sweep = f1_sweep(ranking, table, max(1, args.repeats // 5))
    best_k = int(sweep[sweep["k"] >= MIN_FEATURES].sort_values(["grouped_mae", "random_mae"]).iloc[0]["k"])
    candidates = [
        ("paper 8", PAPER_FEATURES),
        ("all 18", extended),
        (f"SHAP top-{best_k}", tuple(ranking[:best_k])),
    ]
    sets = [evaluate_set(name, features, table, args.repeats) for name, features in candidates]
    sets.sort(key=lambda s: s["grouped"].summary.loc["f1", "mae"], reverse=True)  # best last
    best = preferred_set(sets)
    for s in sets:
        print(
            f"  {s['name']}: random F1 MAE {s['random'].summary.loc['f1', 'mae']:.3f}, "
            f"grouped F1 MAE {s['grouped'].summary.loc['f1', 'mae']:.3f}"
        )

    print("detecting the real EMPS images for the default forest", flush=True)
    real, real_embeddings = emps_table(detector)
    known = (
        np.isfinite(real_embeddings).all(axis=1) if len(real) else np.zeros(0, bool)
    )  # blank images have none
    if not known.any():
        print(
            f"  warning: no EMPS images at {EMPS}: the default forest is fit on synthetic frames only",
            flush=True,
        )
    fit_table = pd.concat([table, real[known]], ignore_index=True)
    fit_embeddings = np.concatenate([embeddings, real_embeddings[known]]) if known.any() else embeddings
    forest = QualityForest(features=best["features"], detector=detector.metadata())
    forest.fit(
        fit_table[list(CANDIDATE_FEATURES)],
        fit_table[list(TARGETS)],
        groups=fit_table["domain"],
        embeddings=fit_embeddings,
        novelty_reference=np.arange(len(fit_table)) < len(table),
    )
    forest.metadata.update(
        {
            "name": "default",
            "description": "Bundled default forest for the bundled synthetic-trained detector; fit on the "
            "synthetic-domain study and the real EMPS images (benchmarks/forest_study.py).",
            "feature_set": best["name"],
            "cv_random_f1": best["random"].summary.loc["f1"].to_dict(),
            "cv_grouped_f1": best["grouped"].summary.loc["f1"].to_dict(),
            "study_frames": len(table),
            "real_frames": int(known.sum()),
        }
    )
    natural = natural_images_check(detector, forest)
    seconds = time.perf_counter() - start
    print(natural.to_string(index=False))
    if args.no_save:
        return
    TABLE_PATH.parent.mkdir(exist_ok=True)
    table.to_csv(TABLE_PATH, index=False)
    forest.save(MODELS_DIR / "default_forest.skops")
    write_plots(table, best)
    command = "python benchmarks/forest_study.py"
    write_section("forest_study", report(table, sets, best, sweep, natural, seconds, command))
    (HERE / "data" / "synthetic_study_summary.json").write_text(
        json.dumps(
            {
                s["name"]: {
                    "features": s["features"],
                    "random_f1": s["random"].summary.loc["f1"].to_dict(),
                    "grouped_f1": s["grouped"].summary.loc["f1"].to_dict(),
                }
                for s in sets
            },
            indent=2,
        )
    )
    print(f"done in {seconds / 60:.1f} min; wrote {RESULTS}, {TABLE_PATH} and the default forest")


if __name__ == "__main__":
    main()
