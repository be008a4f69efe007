"""Fit the bundled "li2025" forest: the quality forest for the seed paper's own cavity detector.

The authors' detectron2 Mask R-CNN (R50-FPN, confidence threshold 0.1) was scored on 832 real TEM
images; their corrected training table holds that detector's output features and true F1,
precision and recall per image. This script fits the model chosen in
``benchmarks/paper_reproduction.py`` (the improvement study) on the whole table, records its
provenance and cross-validated accuracy in the file's metadata, and writes it into the package.

    python scripts/fit_li2025_forest.py                     # ~2 min on 2 cores
    python scripts/fit_li2025_forest.py --data /path/to/li2025_rf_training_table.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_detection_qc.quality.features import PAPER_FEATURES
from napari_detection_qc.quality.forest import QualityForest
from napari_detection_qc.quality.forest_choice import MODELS_DIR
from napari_detection_qc.reference_data import load_reference_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "reference-data" / "li2025_rf_training_table.csv"

# The choice, from the improvement study: no shippable variant beat the paper's 8 features by more
# than the fold noise, and the table's circularity columns follow another convention than
# features.py, so shape features would be read differently at prediction time.
FEATURES = tuple(PAPER_FEATURES)
N_ESTIMATORS = 100
FOREST_PARAMS = {"min_samples_leaf": 2}
SEED = 0

DETECTOR = {
    "name": "li2025-cavity-maskrcnn-r50fpn",
    "engine": "detectron2",
    "score_threshold": 0.1,
    "architecture": "Mask R-CNN R50-FPN (detectron2), one class (cavity)",
    "trained_on": "the splits of the paper's Table 1 (sets A, B, C of TEM cavity images)",
}
CITATION = (
    "Ni Li, Ryan Jacobs, Matthew Lynch, Vidit Agrawal, Kevin Field, Dane Morgan. Predicting performance "
    "of object detection models in electron microscopy using random forests. Digital Discovery 4 (2025). "
    "doi:10.1039/D4DD00351A"
)


def cv_summary(forest: QualityForest, features, targets, info, repeats: int) -> dict:
    """F1/P/R accuracy and interval coverage under the three schemes of the benchmark."""
    schemes = {
        "random_5fold": dict(scheme="random", n_repeats=repeats),
        "image_grouped_5fold": dict(scheme="group_kfold", groups=info["names"], n_repeats=repeats),
        "leave_one_split_out": dict(scheme="grouped", groups=info["label"]),
    }
    out = {}
    for name, kwargs in schemes.items():
        result = forest.cross_validate(features, targets, **kwargs)
        predictions = result.predictions
        covered = (predictions["true_f1"] >= predictions["f1_low"]) & (
            predictions["true_f1"] <= predictions["f1_high"]
        )
        out[name] = {
            "f1_mae": round(float(result.summary.loc["f1", "mae"]), 4),
            "f1_rmse": round(float(result.summary.loc["f1", "rmse"]), 4),
            "f1_r2": round(float(result.summary.loc["f1", "r2"]), 4),
            "precision_mae": round(float(result.summary.loc["precision", "mae"]), 4),
            "recall_mae": round(float(result.summary.loc["recall", "mae"]), 4),
            "f1_interval_coverage": round(float(covered.mean()), 4),
            "repeats": kwargs.get("n_repeats", 1),
        }
        print(f"  {name}: {out[name]}", flush=True)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the corrected training table")
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "li2025_forest.skops")
    parser.add_argument("--cv-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.time()

    features, targets, info = load_reference_table(args.data)
    if info.attrs["version"] != "corrected":
        raise SystemExit(f"{args.data} is the original table; fit on the corrected one")
    forest = QualityForest(FEATURES, N_ESTIMATORS, SEED, detector=DETECTOR, forest_params=FOREST_PARAMS)
    print("cross-validating ...", flush=True)
    cv = cv_summary(forest, features, targets, info, args.cv_repeats)
    forest.fit(features, targets, groups=info["label"])
    forest.metadata = {
        "description": "Quality forest for the Li et al. 2025 detectron2 cavity Mask R-CNN at confidence >= 0.1",
        "citation": CITATION,
        "doi": "10.1039/D4DD00351A",
        "data_doi": "10.6084/m9.figshare.27281400",
        "training_data": (
            f"authors' corrected random-forest training table, {info.attrs['n_rows']} rows (real TEM images "
            f"x detector splits), {info['names'].nunique()} distinct images; {info.attrs['n_f1_was_nan']} rows "
            "with NaN F1 (TP = 0) taken as F1 = 0; training_groups = the split label of each row"
        ),
        "cross_validation": cv,
        "fit_script": "scripts/fit_li2025_forest.py",
        "benchmark": "benchmarks/paper_reproduction.py (benchmarks/RESULTS.md)",
    }
    path = forest.save(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
