"""The seed paper's results, reproduced on the authors' own table, and the attempt to beat them.

Real evidence: 832 TEM images scored by the authors' detectron2 Mask R-CNN models (the corrected
training table in ``../shared/reference-data``). With ``QualityForest`` and the core's metrics:

1. Table 2 (all data, each split label as a subset, grouped/random averages), Fig. 6b, Table 3
   and the Fig. 8 classifier view, from repeated random 5-fold CV, as the paper did.
2. Stricter schemes for the same model: 5 folds grouped by image name (one image's rows never
   straddle folds) and leave-one-split-label-out (the test split never seen in training), with
   interval coverage and width and the in-domain flag's rate on the left-out split.
3. The improvement study: feature sets, forest settings, other model families and target
   handling, all on the same image-grouped and leave-one-split-out folds.

    python benchmarks/paper_reproduction.py                       # ~10 min on 2 cores
    python benchmarks/paper_reproduction.py --repeats 1 --grouped-repeats 1 --no-save   # smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the shared machine: gradient boosting on one core

import numpy as np
import pandas as pd
from results_file import RESULTS, write_section
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
from sklearn.preprocessing import StandardScaler

from napari_detection_qc.detections.metrics import regression_metrics, reliability_classification
from napari_detection_qc.quality.features import CANDIDATE_FEATURES, PAPER_FEATURES
from napari_detection_qc.quality.forest import TARGETS, QualityForest
from napari_detection_qc.reference_data import GROUPED_SPLITS, RANDOM_SPLITS, load_reference_table

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "figures"
DATA_DIR = HERE.parents[1] / "shared" / "reference-data"
MARKER = "paper_reproduction"

# The paper's Table 2 (rmse, mae, r2, nrmse, nmae, n), its Table 3 and Figs. 6b and 8.
PAPER_TABLE2 = {
    "All data": (0.127, 0.093, 0.774, 0.475, 0.167, 833),
    "A&B_C": (0.130, 0.096, 0.714, 0.457, 0.221, 368),
    "A:over_under": (0.138, 0.096, -0.012, 0.753, 0.147, 107),
    "A:under_over": (0.136, 0.116, 0.600, 0.566, 0.247, 39),
    "B_A": (0.228, 0.188, -0.099, 1.024, 0.460, 28),
    "A_B": (0.147, 0.108, 0.247, 0.715, 0.377, 19),
    "Average of grouped splits": (0.156, 0.121, 0.290, 0.703, 0.290, 112.2),
    "A&B_A&B": (0.092, 0.069, 0.652, 0.550, 0.098, 195),
    "A_A": (0.098, 0.077, 0.666, 0.441, 0.118, 29),
    "B_B": (0.100, 0.077, 0.645, 0.639, 0.102, 19),
    "A:under_under": (0.103, 0.077, -0.150, 0.702, 0.105, 18),
    "A:over_over": (0.141, 0.110, 0.409, 0.543, 0.223, 11),
    "Average of random splits": (0.107, 0.082, 0.444, 0.575, 0.129, 54.4),
}
PAPER_TABLE3 = {
    "precision": (0.132, 0.094, 0.81, 0.435, 0.163),
    "recall": (0.192, 0.140, 0.57, 0.656, 0.198),
    "f1": (0.127, 0.093, 0.774, 0.475, 0.167),
}
PAPER_SPLIT_MEANS = {"mae": 0.047, "rmse": 0.062, "r2": 0.831}
PAPER_CLASSIFIER = {"precision": 0.89, "recall": 0.91}
METRICS = ("rmse", "mae", "r2", "nrmse", "nmae")


# -- 1. the paper's evaluation ---------------------------------------------------------------------
def per_split_table(predictions: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """Table 2: metrics of the out-of-fold F1 per split label (all folds of one repeat pooled,
    then averaged over repeats), and the plain mean of those rows per split type."""
    frame = predictions.assign(label=labels.to_numpy()[predictions["row"]])
    rows = {}
    for label in GROUPED_SPLITS + RANDOM_SPLITS:
        subset = frame[frame["label"] == label]
        per_repeat = [regression_metrics(g["true_f1"], g["f1"]) for _, g in subset.groupby("repeat")]
        rows[label] = {**pd.DataFrame(per_repeat).mean().to_dict(), "n": int((labels == label).sum())}
    table = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    table.loc["Average of grouped splits"] = table.loc[list(GROUPED_SPLITS)].mean()
    table.loc["Average of random splits"] = table.loc[list(RANDOM_SPLITS)].mean()
    return table


def table2(random_cv, labels: pd.Series) -> pd.DataFrame:
    """The "All data" row (metrics per fold, averaged, as the paper) above the per-split rows."""
    all_data = random_cv.summary.loc[["f1"]].rename(index={"f1": "All data"}).assign(n=len(labels))
    return pd.concat([all_data, per_split_table(random_cv.predictions, labels)])


def split_means_metrics(predictions: pd.DataFrame, labels: pd.Series) -> dict:
    """Fig. 6b: per split, mean predicted vs mean true F1 (per repeat, averaged)."""
    frame = predictions.assign(label=labels.to_numpy()[predictions["row"]])
    per_repeat = []
    for _, g in frame.groupby("repeat"):
        means = g.groupby("label")[["true_f1", "f1"]].mean()
        per_repeat.append(regression_metrics(means["true_f1"], means["f1"]))
    return pd.DataFrame(per_repeat).mean().to_dict()


def classifier_view(predictions: pd.DataFrame, threshold: float = 0.5) -> dict:
    """Fig. 8: calling a frame reliable (F1 >= 0.5) from its predicted F1, per repeat, averaged."""
    per_repeat = [
        reliability_classification(g["true_f1"], g["f1"], threshold) for _, g in predictions.groupby("repeat")
    ]
    return pd.DataFrame(per_repeat).mean().to_dict()


def interval_summary(predictions: pd.DataFrame) -> dict:
    """Coverage and mean width of the 90% intervals on held-out rows, per target."""
    out = {}
    for target in TARGETS:
        truth = predictions[f"true_{target}"]
        inside = (truth >= predictions[f"{target}_low"] - 1e-12) & (
            truth <= predictions[f"{target}_high"] + 1e-12
        )
        out[target] = {
            "coverage": float(inside.mean()),
            "width": float((predictions[f"{target}_high"] - predictions[f"{target}_low"]).mean()),
        }
    return out


def with_original_bug(table):
    """The original table as the authors fit it: the 29 A_A rows rotated back to the bug."""
    features, targets, info = table
    rows = info["rotation_fixed"].to_numpy()
    targets, features = targets.copy(), features.copy()
    precision, recall, area_ratio = (
        targets.loc[rows, "precision"].to_numpy(),
        targets.loc[rows, "recall"].to_numpy(),
        features.loc[rows, "area_ratio"].to_numpy(),
    )
    targets.loc[rows, "precision"], targets.loc[rows, "recall"] = area_ratio, precision
    features.loc[rows, "area_ratio"] = recall
    return features, targets


# -- 2. the improvement study ----------------------------------------------------------------------
FitPredict = Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], np.ndarray]


@dataclass
class Variant:
    """One model choice: ``fit_predict(train_features, train_targets, test_features) -> F1``."""

    name: str
    shippable: bool
    fit_predict: FitPredict
    note: str = ""


def quality_forest(features, n_estimators=100, **forest_params) -> FitPredict:
    """The F1 model of ``QualityForest(features, n_estimators, forest_params=...)``: the same scaler +
    forest, without the P/R models and calibration the study does not score (``run_study`` checks
    that the predictions are identical)."""

    def fit_predict(x_train, y_train, x_test):
        a, b = _scaled(features, x_train, x_test)
        forest = RandomForestRegressor(n_estimators=n_estimators, random_state=0, n_jobs=1, **forest_params)
        return forest.fit(a, y_train["f1"].to_numpy()).predict(b)

    fit_predict.quality_forest = QualityForest(features, n_estimators, forest_params=forest_params)
    return fit_predict


def _scaled(features, x_train, x_test):
    scaler = StandardScaler().fit(x_train[list(features)])
    return scaler.transform(x_train[list(features)]), scaler.transform(x_test[list(features)])


def forest_on(features, target_transform=None, aggregate="mean", train_rows=None, **params) -> FitPredict:
    """Scaler + random forest with a choice the QualityForest cannot express: a transformed target
    (``(forward, inverse)``), the median of the trees, or a subset of the training rows."""

    def fit_predict(x_train, y_train, x_test):
        keep = np.ones(len(x_train), bool) if train_rows is None else train_rows(x_train, y_train)
        a, b = _scaled(features, x_train[keep], x_test)
        y = y_train["f1"].to_numpy()[keep]
        forward, inverse = target_transform or (lambda v: v, lambda v: v)
        forest = RandomForestRegressor(n_estimators=100, random_state=0, n_jobs=1, **params).fit(
            a, forward(y)
        )
        if aggregate == "median":
            return inverse(np.median([tree.predict(b) for tree in forest.estimators_], axis=0))
        return inverse(forest.predict(b))

    return fit_predict


def quantile_forest_median(features) -> FitPredict:
    """Quantile regression forest (Meinshausen 2006): the weighted median of the training targets
    that share a leaf with the test row, the MAE-optimal point instead of the mean."""

    def fit_predict(x_train, y_train, x_test):
        a, b = _scaled(features, x_train, x_test)
        y = y_train["f1"].to_numpy()
        forest = RandomForestRegressor(n_estimators=100, random_state=0, n_jobs=1).fit(a, y)
        train_leaves, test_leaves = forest.apply(a), forest.apply(b)
        order = np.argsort(y)
        out = np.empty(len(b))
        for i, leaves in enumerate(test_leaves):
            same = train_leaves == leaves
            weights = (same / same.sum(axis=0)).sum(axis=1)[order]
            cumulative = np.cumsum(weights)
            out[i] = y[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
        return out

    return fit_predict


def precision_recall_forests(features) -> FitPredict:
    """Forests for precision and recall; F1 = 2PR / (P + R)."""

    def fit_predict(x_train, y_train, x_test):
        a, b = _scaled(features, x_train, x_test)
        p, r = (
            RandomForestRegressor(n_estimators=100, random_state=0, n_jobs=1)
            .fit(a, y_train[target].to_numpy())
            .predict(b)
            for target in ("precision", "recall")
        )
        return np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)

    return fit_predict


def boosting(features, loss="squared_error", monotone=None) -> FitPredict:
    def fit_predict(x_train, y_train, x_test):
        constraints = None if monotone is None else [monotone.get(f, 0) for f in features]
        model = HistGradientBoostingRegressor(
            loss=loss, max_iter=300, learning_rate=0.05, random_state=0, monotonic_cst=constraints
        )
        model.fit(x_train[list(features)].to_numpy(), y_train["f1"].to_numpy())
        return model.predict(x_test[list(features)].to_numpy())

    return fit_predict


def extra_trees(features) -> FitPredict:
    def fit_predict(x_train, y_train, x_test):
        a, b = _scaled(features, x_train, x_test)
        model = ExtraTreesRegressor(n_estimators=200, min_samples_leaf=2, random_state=0, n_jobs=1)
        return model.fit(a, y_train["f1"].to_numpy()).predict(b)

    return fit_predict


def mean_of(*members: FitPredict) -> FitPredict:
    return lambda x_train, y_train, x_test: np.mean([m(x_train, y_train, x_test) for m in members], axis=0)


def with_counts(features) -> tuple[str, ...]:
    """Absolute counts of high- and low-confidence detections (not among the 18 candidates)."""
    return tuple(features) + ("n_high", "n_low", "log_count")


def with_batch(features) -> tuple[str, ...]:
    return tuple(features) + tuple(f"batch_{f}" for f in features)


def add_derived_columns(features: pd.DataFrame, batches: pd.Series) -> pd.DataFrame:
    """Columns for the non-shippable variants. ``batch_*``: the mean of each paper feature over the
    image's split label, i.e. over the batch one detector processed; it uses features only (no
    labels), as a tool that scores a whole stack or folder at once could."""
    out = features.copy()
    out["n_high"] = out["frac_score_0.9"] * out["count"]
    out["n_low"] = out["count"] - out["n_high"]
    out["log_count"] = np.log1p(out["count"])
    means = out.groupby(batches.to_numpy())[list(PAPER_FEATURES)].transform("mean")
    out[[f"batch_{f}" for f in PAPER_FEATURES]] = means.to_numpy()
    return out


def study_variants() -> list[Variant]:
    paper = tuple(PAPER_FEATURES)
    every = tuple(CANDIDATE_FEATURES)
    no_shape = tuple(f for f in every if "circularity" not in f)
    paper_shape = paper + ("mean_circularity", "std_circularity")
    eps = 0.02
    logit = (
        lambda v: np.log((v * (1 - 2 * eps) + eps) / (1 - v * (1 - 2 * eps) - eps)),
        lambda z: (1 / (1 + np.exp(-z)) - eps) / (1 - 2 * eps),
    )
    monotone = {"frac_score_0.9": 1, "mean_score": 1, "image_confidence": 1, "std_score": -1}
    return [
        Variant("paper: 8 features, RF(100)", True, quality_forest(paper), "the paper's method"),
        Variant("all 18 candidates", True, quality_forest(every)),
        Variant("16 candidates (no circularity)", True, quality_forest(no_shape)),
        Variant(
            "paper 8 + mean/std circularity",
            True,
            quality_forest(paper_shape),
            "circularity adds nothing beyond fold noise",
        ),
        Variant("paper 8, min_samples_leaf=2", True, quality_forest(paper, min_samples_leaf=2)),
        Variant("paper 8, min_samples_leaf=5", True, quality_forest(paper, min_samples_leaf=5)),
        Variant("paper 8, max_features=0.5", True, quality_forest(paper, max_features=0.5)),
        Variant("paper 8, max_samples=0.5", True, quality_forest(paper, max_samples=0.5)),
        Variant("all 18, max_features=0.33", True, quality_forest(every, max_features=0.33)),
        Variant("paper 8, 500 trees", True, quality_forest(paper, n_estimators=500)),
        Variant("paper 8, RF criterion absolute_error", False, forest_on(paper, criterion="absolute_error")),
        Variant("paper 8, median of the trees", False, forest_on(paper, aggregate="median")),
        Variant("paper 8, quantile forest median", False, quantile_forest_median(paper)),
        Variant("paper 8, logit target", False, forest_on(paper, target_transform=logit)),
        Variant(
            "paper 8, NaN-F1 rows left out of training",
            False,
            forest_on(paper, train_rows=lambda x, y: y["f1"].to_numpy() > 0),
        ),
        Variant("forests for P and R, F1 = 2PR/(P+R)", False, precision_recall_forests(paper)),
        Variant("paper 8 + absolute high/low counts", False, forest_on(with_counts(paper))),
        Variant("ExtraTrees(200, leaf 2)", False, extra_trees(paper)),
        Variant("gradient boosting, squared error", False, boosting(paper)),
        Variant("gradient boosting, absolute error", False, boosting(paper, "absolute_error")),
        Variant(
            "gradient boosting, absolute error, monotone",
            False,
            boosting(paper, "absolute_error", monotone),
            "+ frac 0.9, mean score, image conf; - std score",
        ),
        Variant(
            "mean of RF and boosting (abs. error)",
            False,
            mean_of(quality_forest(paper), boosting(paper, "absolute_error")),
        ),
        Variant(
            "mean of quantile forest median and boosting",
            False,
            mean_of(quantile_forest_median(paper), boosting(paper, "absolute_error")),
        ),
        Variant(
            "paper 8 + batch means, RF", False, forest_on(with_batch(paper)), "transductive: needs the batch"
        ),
        Variant(
            "paper 8 + batch means, RF + boosting",
            False,
            mean_of(forest_on(with_batch(paper)), boosting(with_batch(paper), "absolute_error")),
            "transductive: needs the batch",
        ),
    ]


def image_grouped_folds(names: pd.Series, repeats: int, seed: int = 0):
    """5 folds grouped by image name, the seeds ``QualityForest.cross_validate`` uses."""
    index = np.arange(len(names))
    for repeat in range(repeats):
        kfold = GroupKFold(n_splits=5, shuffle=True, random_state=seed + repeat)
        for train, test in kfold.split(index, groups=names):
            yield repeat, train, test


def check_matches_quality_forest(variants, features, targets, train, test) -> None:
    """The study's forest F1 is what the real QualityForest predicts: checked on one fold for the first
    shippable variant (all of them are built by ``quality_forest``)."""
    for variant in variants:
        forest = getattr(variant.fit_predict, "quality_forest", None)
        if forest is None:
            continue
        ours = variant.fit_predict(features.iloc[train], targets.iloc[train], features.iloc[test])
        shipped = forest.fit(features.iloc[train], targets.iloc[train]).predict(features.iloc[test])["f1"]
        if not np.allclose(np.clip(ours, 0, 1), shipped, atol=1e-12):
            raise AssertionError(f"variant {variant.name!r} differs from its QualityForest")
        break


def run_study(variants, features, targets, info, repeats: int) -> pd.DataFrame:
    """Every variant on the same folds: F1 metrics per fold, averaged (image-grouped 5-fold) and
    per left-out split label, averaged over the ten labels (leave-one-split-out)."""
    truth = targets["f1"].to_numpy()
    grouped_folds = list(image_grouped_folds(info["names"], repeats))
    split_folds = list(LeaveOneGroupOut().split(features, groups=info["label"]))
    check_matches_quality_forest(variants, features, targets, *split_folds[0])
    rows = []
    for variant in variants:
        start = time.time()

        def fold_metrics(train, test, fit_predict=variant.fit_predict):
            predicted = fit_predict(features.iloc[train], targets.iloc[train], features.iloc[test])
            return regression_metrics(truth[test], np.clip(predicted, 0.0, 1.0))

        grouped = pd.DataFrame([{"repeat": r, **fold_metrics(tr, te)} for r, tr, te in grouped_folds])
        split_out = pd.DataFrame([fold_metrics(tr, te) for tr, te in split_folds])
        by_repeat = grouped.groupby("repeat")["mae"].mean().to_numpy()
        paired = by_repeat - (rows[0]["by_repeat"] if rows else by_repeat)
        rows.append(
            {
                "variant": variant.name,
                "shippable": variant.shippable,
                "by_repeat": by_repeat,
                "grouped_mae": grouped["mae"].mean(),
                "grouped_mae_sd": by_repeat.std(ddof=1),
                "delta": paired.mean(),
                "delta_sd": paired.std(ddof=1),
                "grouped_rmse": grouped["rmse"].mean(),
                "grouped_r2": grouped["r2"].mean(),
                "split_out_mae": split_out["mae"].mean(),
                "split_out_rmse": split_out["rmse"].mean(),
                "seconds": time.time() - start,
                "note": variant.note,
            }
        )
        row = rows[-1]
        print(
            f"  {variant.name:48s} image-grouped MAE {row['grouped_mae']:.4f}  "
            f"split-out MAE {row['split_out_mae']:.4f}  ({row['seconds']:.0f} s)",
            flush=True,
        )
    return pd.DataFrame(rows).drop(columns="by_repeat")


# -- report ----------------------------------------------------------------------------------------
def _fmt(value, digits=3) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def parity_plot(
    random_predictions: pd.DataFrame, split_out_predictions: pd.DataFrame, labels: pd.Series, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    colours = plt.get_cmap("tab10")
    panels = (
        (random_predictions[random_predictions["repeat"] == 0], "random 5-fold CV (repeat 0)"),
        (split_out_predictions, "leave-one-split-out CV"),
    )
    for ax, (frame, title) in zip(axes, panels):
        frame_labels = labels.to_numpy()[frame["row"]]
        for i, label in enumerate(GROUPED_SPLITS + RANDOM_SPLITS):
            chosen = frame_labels == label
            marker = "o" if label in GROUPED_SPLITS else "^"
            ax.scatter(
                frame["true_f1"][chosen],
                frame["f1"][chosen],
                s=12,
                alpha=0.7,
                marker=marker,
                color=colours(i),
                label=label,
            )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        mae = np.mean(np.abs(frame["f1"] - frame["true_f1"]))
        ax.set(
            xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="true F1", title=f"{title}: pooled MAE {mae:.3f}"
        )
        ax.set_aspect("equal")
    axes[0].set_ylabel("predicted F1 (QualityForest, paper's 8 features)")
    axes[0].legend(fontsize=7, loc="upper left", title="split (o grouped, ^ random)", title_fontsize=7)
    fig.suptitle("Li et al. 2025 training table (832 real TEM images): out-of-fold predicted vs true F1")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict) -> str:
    r = results
    lines = [
        f"<!-- {MARKER}:start -->",
        "## The paper's own data: reproduction on the authors' table, and beyond",
        "",
        "Data: the authors' corrected random-forest training table (832 rows = real TEM images, each scored "
        "by one of the detectron2 Mask R-CNN models of the paper's Table 1 at confidence >= 0.1; "
        "Li et al., *Digital Discovery* 2025, doi:10.1039/D4DD00351A; data doi:10.6084/m9.figshare.27281400), "
        "read by `napari_detection_qc.reference_data.load_reference_table`. "
        f"{r['loader']}",
        "",
        f"Model: `QualityForest()` (StandardScaler + RandomForestRegressor(100), the paper's 8 features); "
        f"metrics from `napari_detection_qc.detections.metrics`. Random 5-fold CV repeated {r['repeats']} times "
        "(seeds 0..), metrics per fold averaged; per-split rows pool a repeat's five test folds, "
        "then average the repeats. Reproduce: `python benchmarks/paper_reproduction.py` "
        f"({r['minutes']:.1f} min on 2 shared cores).",
        "",
        "### Table 2: F1, random 5-fold CV, by split (paper | ours)",
        "",
        "| Data subset | RMSE | MAE | R² | NRMSE | NMAE | n | | RMSE | MAE | R² | NRMSE | NMAE | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table2 = r["table2"]
    for name, paper in PAPER_TABLE2.items():
        ours = table2.loc[name]
        paper_cells = [_fmt(v) for v in paper[:5]] + [str(paper[5])]
        our_cells = [_fmt(ours[m]) for m in METRICS] + [_fmt(ours["n"], 1 if "Average" in name else 0)]
        bold = "**" if name in ("All data",) or "Average" in name else ""
        lines.append(
            f"| {bold}{name}{bold} | " + " | ".join(paper_cells) + " | | " + " | ".join(our_cells) + " |"
        )
    means = r["split_means"]
    lines += [
        "",
        "The all-data row reproduces the paper. Per split, RMSE and MAE agree within about 0.01 (0.02 on "
        "the 11-19-image splits); R² does not. The paper does not say how its per-split rows were computed: "
        "pooling a repeat's folds (shown) gives A:over_under R² 0.43 against the paper's -0.01 (per fold: "
        "0.41), and scoring per fold makes the small splits' R² absurd (A:under_under: -150 from folds of "
        "3-4 images). R² on a split with a narrow F1 range is unstable either way.",
        "",
        f"Fig. 6b (mean predicted vs mean true F1 per split): paper MAE {PAPER_SPLIT_MEANS['mae']}, "
        f"RMSE {PAPER_SPLIT_MEANS['rmse']}, R² {PAPER_SPLIT_MEANS['r2']}; ours MAE {means['mae']:.3f}, "
        f"RMSE {means['rmse']:.3f}, R² {means['r2']:.3f}.",
        "",
        "### Table 3: one forest per target, random 5-fold CV (paper | ours, corrected table | ours, "
        f"original 833-row table with the A_A rotation bug kept, as the authors fit it, {r['grouped_repeats']} repeats)",
        "",
        "| Target | RMSE | MAE | R² | NRMSE | NMAE | | RMSE | MAE | R² | NRMSE | NMAE | | MAE | R² |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for target, paper in PAPER_TABLE3.items():
        ours, buggy = r["table3"].loc[target], r["table3_original"].loc[target]
        lines.append(
            f"| {target} | "
            + " | ".join(_fmt(v) for v in paper)
            + " | | "
            + " | ".join(_fmt(ours[m]) for m in METRICS)
            + f" | | {_fmt(buggy['mae'])} | {_fmt(buggy['r2'])} |"
        )
    clf = r["classifier"]
    lines += [
        "",
        "F1 matches; precision and recall are predicted worse than the paper reports, on both versions "
        "of the table, with the same 8 features and forest. We found no cause in the table or the paper.",
        "",
        f"Fig. 8 (frame called reliable when predicted F1 >= 0.5, truth F1 >= 0.5): paper precision "
        f"{PAPER_CLASSIFIER['precision']}, recall {PAPER_CLASSIFIER['recall']}; ours precision "
        f"{clf['precision']:.3f}, recall {clf['recall']:.3f} ({clf['n_reliable']:.0f} of 832 frames reliable).",
        "",
        "### Stricter evaluation of the paper's model",
        "",
        "| Scheme | F1 RMSE | F1 MAE | F1 R² | P MAE | R MAE | F1 90% interval coverage | mean width |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scheme, summary, intervals in r["schemes"]:
        lines.append(
            f"| {scheme} | {_fmt(summary.loc['f1', 'rmse'])} | {_fmt(summary.loc['f1', 'mae'])} | "
            f"{_fmt(summary.loc['f1', 'r2'])} | {_fmt(summary.loc['precision', 'mae'])} | "
            f"{_fmt(summary.loc['recall', 'mae'])} | {_fmt(intervals['f1']['coverage'])} | "
            f"{_fmt(intervals['f1']['width'])} |"
        )
    lines += [
        "",
        "Interval coverage per target (precision / recall): "
        + "; ".join(
            f"{scheme}: {iv['precision']['coverage']:.3f} / {iv['recall']['coverage']:.3f}"
            for scheme, _, iv in r["schemes"]
        )
        + ".",
        "",
        "Leave-one-split-out, per left-out split (the detector/test pair never seen in training; the same "
        "image may occur under another split label in training):",
        "",
        "| Left-out split | type | n | F1 MAE | F1 R² | F1 interval coverage | in-domain rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["split_out_rows"].itertuples():
        lines.append(
            f"| {row.label} | {row.split_type} | {row.n} | {_fmt(row.mae)} | {_fmt(row.r2)} | "
            f"{_fmt(row.coverage)} | {_fmt(row.in_domain)} |"
        )
    study = r["study"]
    lines += [
        "",
        "### Improvement study (F1; same folds for every variant)",
        "",
        f"Image-grouped: 5 folds grouped by image name, {r['grouped_repeats']} repeats, metrics per fold averaged "
        "(± = sd of the repeat means; Δ = difference to the paper's model on the same folds, ± its sd over "
        "repeats). Split-out: leave one split label out, averaged over the 10 labels. "
        "Shippable = expressible as a `QualityForest` (random forest on some of the 18 candidates). "
        "Goal: image-grouped MAE <= 0.085 and split-out no worse than the paper's model.",
        "",
        "| Variant | shippable | image-grouped MAE | Δ | RMSE | R² | split-out MAE | RMSE | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in study.itertuples():
        bold = "**" if row.Index == r["best_index"] else ""
        lines.append(
            f"| {bold}{row.variant}{bold} | {'yes' if row.shippable else 'no'} | "
            f"{row.grouped_mae:.4f} ± {row.grouped_mae_sd:.4f} | {row.delta:+.4f} ± {row.delta_sd:.4f} | "
            f"{row.grouped_rmse:.4f} | {row.grouped_r2:.3f} | "
            f"{row.split_out_mae:.4f} | {row.split_out_rmse:.4f} | {row.note} |"
        )
    lines += [
        "",
        r["verdict"],
        "",
        "![parity](figures/paper_reproduction_parity.png)",
        f"<!-- {MARKER}:end -->",
    ]
    return "\n".join(lines)


def verdict(study: pd.DataFrame) -> tuple[int, str]:
    """The best variant by image-grouped MAE among those no worse than the paper's model when a split
    is left out, and a plain statement of whether the goal was met."""
    paper = study.iloc[0]
    fair = study[study["split_out_mae"] <= paper["split_out_mae"] + 1e-9]
    best = fair["grouped_mae"].idxmin()
    best_shippable = fair[fair["shippable"]]["grouped_mae"].idxmin()
    row, ship = study.loc[best], study.loc[best_shippable]
    met = "met" if row["grouped_mae"] <= 0.085 else "not met"
    text = (
        f"Goal {met}. The paper's model scores image-grouped MAE {paper['grouped_mae']:.4f} and split-out "
        f"{paper['split_out_mae']:.4f}. Best variant that is no worse on split-out: **{row['variant']}** "
        f"({row['grouped_mae']:.4f} / {row['split_out_mae']:.4f}, "
        f"{'shippable' if row['shippable'] else 'not a QualityForest'}). Best shippable: {ship['variant']} "
        f"({ship['grouped_mae']:.4f} / {ship['split_out_mae']:.4f}). Image-grouped differences to the paper's "
        f"model below about {2 * study['delta_sd'].iloc[1:].median():.4f} (two paired sds) are noise. What "
        "ships as `li2025`, and why: `src/napari_detection_qc/models/li2025_forest.md`."
    )
    return best, text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR / "li2025_rf_training_table.csv")
    parser.add_argument("--original", type=Path, default=DATA_DIR / "li2025_rf_training_table_original.csv")
    parser.add_argument("--repeats", type=int, default=10, help="repeats of random 5-fold CV (the paper: 10)")
    parser.add_argument(
        "--grouped-repeats",
        type=int,
        default=3,
        help="repeats of image-grouped CV (and of random CV on the original table)",
    )
    parser.add_argument(
        "--no-save", action="store_true", help="print only; do not write RESULTS.md or figures"
    )
    args = parser.parse_args(argv)
    started = time.time()

    table = load_reference_table(args.data)
    original = load_reference_table(args.original)
    features, targets, info = table
    loader = (
        f"Corrected table: {info.attrs['n_rows']} rows, {info.attrs['n_f1_was_nan']} with NaN F1 (TP = 0) set to 0, "
        f"{info.attrs['n_duplicate']} exact duplicate row, {info['names'].nunique()} distinct images. Original "
        f"table: {original.info.attrs['n_rows']} rows, {original.info.attrs['n_rotation_fixed']} rotated A_A rows "
        f"repaired, {original.info.attrs['n_duplicate']} exact duplicates, no shape columns; after the repair "
        "it equals the corrected table plus one duplicated A_A row."
    )
    print(loader)

    paper_forest = QualityForest()
    print(f"random 5-fold CV x {args.repeats} ...", flush=True)
    random_cv = paper_forest.cross_validate(features, targets, "random", n_repeats=args.repeats)
    original_cv = paper_forest.cross_validate(
        *with_original_bug(original), "random", n_repeats=args.grouped_repeats
    )
    print(random_cv.summary.round(4))
    print(f"image-grouped 5-fold CV x {args.grouped_repeats} and leave-one-split-out ...", flush=True)
    grouped_cv = paper_forest.cross_validate(
        features, targets, "group_kfold", groups=info["names"], n_repeats=args.grouped_repeats
    )
    split_cv = paper_forest.cross_validate(features, targets, "grouped", groups=info["label"])

    split_rows = []
    for label, frame in split_cv.predictions.groupby("group"):
        metrics = regression_metrics(frame["true_f1"], frame["f1"])
        split_rows.append(
            {
                "label": label,
                "split_type": "grouped" if label in GROUPED_SPLITS else "random",
                "n": len(frame),
                "mae": metrics["mae"],
                "r2": metrics["r2"],
                "coverage": interval_summary(frame)["f1"]["coverage"],
                "in_domain": float(frame["in_domain"].mean()),
            }
        )
    order = {label: i for i, label in enumerate(GROUPED_SPLITS + RANDOM_SPLITS)}
    split_rows = pd.DataFrame(split_rows).sort_values("label", key=lambda s: s.map(order))

    print(
        f"improvement study ({args.grouped_repeats} image-grouped repeats + leave-one-split-out) ...",
        flush=True,
    )
    study = run_study(
        study_variants(), add_derived_columns(features, info["label"]), targets, info, args.grouped_repeats
    )
    best, statement = verdict(study)
    print(statement)

    results = {
        "loader": loader,
        "repeats": args.repeats,
        "grouped_repeats": args.grouped_repeats,
        "table2": table2(random_cv, info["label"]),
        "split_means": split_means_metrics(random_cv.predictions, info["label"]),
        "table3": random_cv.summary,
        "table3_original": original_cv.summary,
        "classifier": classifier_view(random_cv.predictions),
        "schemes": [
            (f"random 5-fold x {args.repeats}", random_cv.summary, interval_summary(random_cv.predictions)),
            (
                f"image-grouped 5-fold x {args.grouped_repeats}",
                grouped_cv.summary,
                interval_summary(grouped_cv.predictions),
            ),
            ("leave-one-split-out", split_cv.summary, interval_summary(split_cv.predictions)),
        ],
        "split_out_rows": split_rows,
        "study": study,
        "best_index": best,
        "verdict": statement,
    }
    results["minutes"] = (time.time() - started) / 60
    text = report(results)
    print(text)
    if not args.no_save:
        parity_plot(
            random_cv.predictions,
            split_cv.predictions,
            info["label"],
            FIGURES / "paper_reproduction_parity.png",
        )
        write_section(MARKER, text)
        print(f"wrote {RESULTS} and {FIGURES / 'paper_reproduction_parity.png'}")
    print(f"done in {results['minutes']:.1f} min")


if __name__ == "__main__":
    main()
