"""Evaluation half of signals_study.py: before/after forests, per held-out domain, in the paper's
format, written to the ``signals_study`` section of RESULTS.md."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pandas as pd
from results_file import RESULTS, write_section
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, KFold

from napari_detection_qc.detections.metrics import regression_metrics
from napari_detection_qc.quality.features import SCORE_BIN_NAMES
from napari_detection_qc.quality.forest import TARGETS, QualityForest
from napari_detection_qc.quality.signals import TTA_SIGNALS, SubspaceNovelty, score_histogram_distance

FAIL_F1 = 0.5
SIGNAL_AUROC = {  # signal -> +1 when a high value means "fails", -1 when a low value does
    "tta_iou": -1,
    "tta_share": -1,
    "tta_count_change": 1,
    "score_hist_distance": 1,
    "novelty": 1,
    "predicted_f1_before": -1,
    "predicted_f1_after": -1,
}


def configs(default_features: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], bool, bool, bool]]:
    """(name, features, with embeddings, with the real EMPS frames in training, with the
    synthetic-only second forest where there are real frames) of the forests compared; the first
    is "before", the second the recipe of the bundled forest file."""
    tta = default_features + TTA_SIGNALS
    return [
        ("before", default_features, False, False, False),
        (
            "after: shipped (+ novelty, cheap signals, real EMPS frames, synthetic-only second forest)",
            default_features,
            True,
            True,
            True,
        ),
        ("after: without the second forest (shipped before)", default_features, True, True, False),
        ("after: synthetic frames only (+ novelty, cheap signals)", default_features, True, False, False),
        ("after: shipped + TTA", tta, True, True, True),
        (
            "after: shipped + TTA + histogram + novelty",
            tta + ("score_hist_distance", "novelty"),
            True,
            True,
            True,
        ),
    ]


def fit_predict(features, with_embeddings, second_forest, table, embeddings, train, test) -> pd.DataFrame:
    forest = QualityForest(features=features)
    forest.fit(
        table.iloc[train],
        table.iloc[train][list(TARGETS)],
        embeddings=embeddings[train] if with_embeddings else None,
        novelty_reference=table["kind"].to_numpy()[train] != "emps",
    )  # as the shipped forest
    if not second_forest:
        forest.reference_forest = None  # the recipe before forest_committee.py
    predicted = forest.predict(table.iloc[test], embeddings[test] if with_embeddings else None)
    predicted = predicted.reset_index(drop=True)
    predicted["row"] = test
    bins = table[list(SCORE_BIN_NAMES)].to_numpy()  # for its AUROC, whether or not the forest uses it
    predicted["score_hist_distance"] = score_histogram_distance(bins[test], bins[train])
    return predicted


def summarise(part: pd.DataFrame) -> dict:
    truth, predicted = part["true_f1"].to_numpy(), part["f1"].to_numpy()
    inside = part["in_domain"].to_numpy()
    covered = (truth >= part["f1_low"]) & (truth <= part["f1_high"])
    fails = truth < FAIL_F1
    caught = (predicted < FAIL_F1) | ~inside
    metrics = (
        regression_metrics(truth, predicted)
        if len(part) > 1
        else {"mae": abs(truth - predicted).mean(), "r2": np.nan}
    )
    return {
        "n": len(part),
        "true_f1": truth.mean(),
        "mae": metrics["mae"],
        "r2": metrics["r2"],
        "coverage": covered.mean(),
        "in_domain": inside.mean(),
        "mae_in": np.abs(truth - predicted)[inside].mean() if inside.any() else np.nan,
        "coverage_in": covered[inside].mean() if inside.any() else np.nan,
        "n_fail": int(fails.sum()),
        "n_missed": int((fails & ~caught).sum()),
        "caught": caught[fails].mean() if fails.any() else np.nan,
        "false_alarm": caught[~fails].mean() if (~fails).any() else np.nan,
        "width": (part["f1_high"] - part["f1_low"]).mean(),
    }


def auroc(part: pd.DataFrame, signal: str) -> float:
    fails = part["true_f1"] < FAIL_F1
    if fails.all() or not fails.any() or signal not in part:
        return np.nan
    return float(roc_auc_score(fails, SIGNAL_AUROC[signal] * part[signal]))


class SeedTypicality:
    """Seed 002's typicality (Forte), the novelty model before the signals study, kept here only
    to compare against: PCA (16), per-frame k-NN distance statistics, a Gaussian mixture on the
    reference frames' own statistics; threshold at its 99% quantile."""

    def __init__(self, n_components: int = 16, k: int = 5):
        self.n_components, self.k = n_components, k

    def fit(self, x: np.ndarray):
        from sklearn.mixture import GaussianMixture

        self._mean, self._scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
        z = (x - self._mean) / self._scale
        self._axes = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)[2][
            : min(self.n_components, len(x) - 1)
        ]
        self._reference = z @ self._axes.T
        raw = self._raw(self._reference)
        np.fill_diagonal(raw, np.inf)
        self._radius = np.sort(raw, axis=1)[:, self.k - 1]
        stats = self._stats(raw)
        self._mixture = GaussianMixture(max(1, min(3, len(x) // 20)), reg_covar=1e-3, random_state=0).fit(
            stats
        )
        self.reference_novelty = -self._mixture.score_samples(stats)
        self.threshold = float(np.quantile(self.reference_novelty, 0.99))
        return self

    def _raw(self, points):
        return np.sqrt(((points[:, None, :] - self._reference[None, :, :]) ** 2).sum(axis=2))

    def _stats(self, raw):
        ordered = np.sort(raw, axis=1)
        ratio = ordered[:, 0] / np.maximum(self._radius[raw.argmin(axis=1)], 1e-9)
        inside = (raw <= self._radius[None, :]).sum(axis=1) / self.k
        return np.column_stack(
            [np.log1p(ordered[:, 0]), np.log1p(ordered[:, : self.k].mean(axis=1)), np.log1p(ratio), inside]
        )

    def novelty(self, x: np.ndarray) -> np.ndarray:
        points = ((x - self._mean) / self._scale) @ self._axes.T
        return -self._mixture.score_samples(self._stats(self._raw(points)))


def novelty_comparison(table: pd.DataFrame, embeddings: np.ndarray) -> list[str]:
    """Rows of a table: how well each novelty model tells EMPS (unseen) from synthetic frames of a
    held-out domain (leave-one-domain-out), and how many of each it flags."""
    synthetic = np.flatnonzero(table["kind"] != "emps")
    emps = np.flatnonzero(table["kind"] == "emps")
    domains = table["domain"].to_numpy()
    rows = []
    for name, make in (
        ("seed 002 typicality (before)", SeedTypicality),
        ("subspace residual + k-NN (after)", SubspaceNovelty),
    ):
        scores, flagged = np.zeros(len(synthetic)), np.zeros(len(synthetic), dtype=bool)
        for domain in dict.fromkeys(domains[synthetic]):
            test = synthetic[domains[synthetic] == domain]
            model = make().fit(embeddings[np.setdiff1d(synthetic, test)].astype(np.float64))
            where = np.searchsorted(synthetic, test)
            scores[where] = model.novelty(embeddings[test].astype(np.float64))
            flagged[where] = scores[where] > model.threshold
        model = make().fit(embeddings[synthetic].astype(np.float64))
        unseen = model.novelty(embeddings[emps].astype(np.float64))
        auc = roc_auc_score(np.r_[np.zeros(len(synthetic)), np.ones(len(emps))], np.r_[scores, unseen])
        rows.append(
            f"| {name} | {auc:.2f} | {flagged.mean():.3f} | {(unseen > model.threshold).mean():.2f} |"
        )
    return rows


LABELLED_COUNTS = (0, 20, 50, None)
"""EMPS frames of other papers added to the synthetic training frames (None: all of them)."""


def labelled_domain_rows(table: pd.DataFrame, embeddings: np.ndarray, features: tuple[str, ...]) -> list[str]:
    """What a user gains by labelling frames of the new domain and refitting (the Training step):
    EMPS scored by forests fit on the synthetic frames plus some EMPS frames of *other* papers
    (5 folds grouped by paper), against the same forest without them."""
    synthetic = np.flatnonzero(table["kind"] != "emps")
    emps = np.flatnonzero(table["kind"] == "emps")
    rng = np.random.default_rng(0)
    parts: dict = {count: [] for count in LABELLED_COUNTS}
    for train, test in GroupKFold(5).split(emps, groups=table["group"].to_numpy()[emps]):
        order = rng.permutation(emps[train])
        for count in LABELLED_COUNTS:
            chosen = order if count is None else order[:count]
            part = fit_predict(features, True, True, table, embeddings, np.r_[synthetic, chosen], emps[test])
            part["true_f1"] = table["f1"].to_numpy()[part["row"]]
            parts[count].append(part)
    rows = []
    for count, pieces in parts.items():
        s = summarise(pd.concat(pieces, ignore_index=True))
        label = "all (~290)" if count is None else str(count)
        rows.append(
            f"| {label} | {fmt(s['mae'])} | {fmt(s['in_domain'])} | {fmt(s['mae_in'])} | {fmt(s['coverage_in'])} "
            f"| {fmt(s['caught'])} | {fmt(s['false_alarm'])} |"
        )
    return rows


def shipped_forest_rows(forest: QualityForest, table: pd.DataFrame, embeddings: np.ndarray) -> list[str]:
    """The bundled forest file itself (what users get) on this study's realistic-family frames at
    512 px: other seeds than its training frames. (EMPS is among its training frames; the study's
    per-paper folds score it.)"""
    chosen = np.flatnonzero(table["kind"] == "realistic")
    if not len(chosen):
        return []
    part = forest.predict(table.iloc[chosen], embeddings[chosen]).reset_index(drop=True)
    part["true_f1"] = table["f1"].to_numpy()[chosen]
    s = summarise(part)
    return [
        f"| synthetic realistic families, 512 px | {s['n']} | {s['true_f1']:.2f} | {s['n_fail']} | {fmt(s['caught'])} | "
        f"{s['n_missed']} | {fmt(s['false_alarm'])} | {fmt(s['in_domain'])} | {fmt(s['mae_in'])} | {fmt(s['coverage_in'])} |"
    ]


def evaluate_and_report(table: pd.DataFrame, embeddings: np.ndarray, detector, args) -> None:
    start = time.perf_counter()
    default = QualityForest.load("default")
    compared = configs(tuple(default.features))
    table = table.reset_index(drop=True)
    synthetic = np.flatnonzero(table["kind"] != "emps")
    emps = np.flatnonzero(table["kind"] == "emps")
    domains = list(dict.fromkeys(table.loc[synthetic, "domain"]))
    results = {}
    for name, features, with_embeddings, with_real, second_forest in compared:
        print(f"  {name}", flush=True)
        real = emps if with_real else emps[:0]  # added to every synthetic fold's training frames
        predict = partial(fit_predict, features, with_embeddings, second_forest, table, embeddings)
        held_out = []
        for domain in domains:
            test = synthetic[table.loc[synthetic, "domain"].to_numpy() == domain]
            held_out.append(predict(np.r_[np.setdiff1d(synthetic, test), real], test))
        held_out = pd.concat(held_out, ignore_index=True)
        random_cv = pd.concat(
            [
                predict(np.r_[synthetic[train], real], synthetic[test])
                for train, test in KFold(5, shuffle=True, random_state=0).split(synthetic)
            ],
            ignore_index=True,
        )
        unseen = None
        if len(emps) and with_real:  # EMPS papers held out in turn: the rest are in training
            unseen = pd.concat(
                [
                    predict(np.r_[synthetic, emps[train]], emps[test])
                    for train, test in GroupKFold(5).split(emps, groups=table["group"].to_numpy()[emps])
                ],
                ignore_index=True,
            )
        elif len(emps):
            unseen = predict(synthetic, emps)
        results[name] = {"held_out": held_out, "random": random_cv, "emps": unseen}
    for result in results.values():
        for key in ("held_out", "random", "emps"):
            part = result[key]
            if part is not None:
                part["true_f1"] = table["f1"].to_numpy()[part["row"]]
                part["domain"] = table["domain"].to_numpy()[part["row"]]
                for signal in TTA_SIGNALS:
                    part[signal] = table[signal].to_numpy()[part["row"]]
    command = "nice -n 15 python benchmarks/signals_study.py" + (
        f" --emps {args.emps}" if args.emps != 366 else ""
    )
    extra = {
        "novelty": novelty_comparison(table, embeddings),
        "shipped": shipped_forest_rows(default, table, embeddings),
    }
    if (table["kind"] == "emps").any():
        extra["labelled"] = labelled_domain_rows(table, embeddings, compared[1][1])
    seconds = time.perf_counter() - start
    text = report(table, results, compared, detector, seconds, command, extra)
    print(text)
    if not args.no_save:
        write_section("signals_study", text)
        print(f"wrote {RESULTS}")


def same_rows(predicted: pd.DataFrame, like: pd.DataFrame) -> np.ndarray:
    """``predicted``'s F1 for the frames of ``like``, in its order (matched by table row)."""
    return predicted.set_index("row")["f1"].reindex(like["row"]).to_numpy()


def fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.2f}"


def report(table, results, compared, detector, seconds, command, extra) -> str:
    names = [name for name, *_ in compared]
    before, after = names[0], names[1]  # the forest as shipped before, and as shipped now
    synthetic = table[table["kind"] != "emps"]
    lines = [
        "<!-- signals_study:start -->",
        "## Knowing when it does not know: detector signals, before and after",
        "",
        f"Command: `{command}` with detector `{detector.name}` "
        f"(weights {detector.weights_sha256[:12]}); {len(synthetic)} synthetic frames "
        f"({synthetic['domain'].nunique()} domains: presets at random severity, realistic families at 512x512), "
        f"{int((table['kind'] == 'emps').sum())} EMPS images. Evaluation {seconds / 60:.1f} min on 2 shared cores "
        "(detections and signals cached).",
        "",
        f"Detection time per frame (1 thread): {table['detect_seconds'].mean():.2f} s without signals; the signals "
        f"(3 TTA views + backbone embedding) add {table['signals_seconds'].mean():.2f} s "
        f'({table["signals_seconds"].sum() / table["detect_seconds"].sum():.1f}x). `signals="cheap"` (embedding only) '
        "adds about one backbone pass.",
        "",
        "Forests compared (fit per fold; before = the bundled default forest's features with the feature-row "
        "domain flag and global intervals; after = the same fit with the frames' backbone embeddings "
        '(`signals="cheap"`, the detection default): novelty-weighted intervals and the combined flag, out of '
        "domain when the feature row is far from the training rows, the frame's novelty is above its threshold, or "
        "its F1 interval spans all of 0-1. The shipped recipe also trains on the real EMPS images: each synthetic "
        "fold adds all of them, and EMPS is scored in five folds grouped by source paper (the images of held-out "
        "papers, with the other papers' images in training). With real frames in training, a second forest is fit "
        "on the synthetic frames alone (`forest_committee.py`): each frame's prediction blends the two by the "
        "probability that its embedding is a real image's, its interval spans both, and a frame on which they "
        'disagree by more than 0.15 in F1 is not called in domain. Before and "synthetic frames only" score EMPS '
        "with a forest fit on the synthetic frames alone. Per-domain rows and AUROCs compare before with the "
        "shipped after:",
        "",
    ]
    for name, features, *_ in compared:
        lines.append(f"- **{name}**: {', '.join(features)}")
    lines += [
        "",
        "### Per held-out domain (leave-one-domain-out), F1",
        "",
        "Caught: share of frames with true F1 < 0.5 predicted < 0.5 or flagged out of domain. False alarm: "
        "the same for frames with true F1 >= 0.5. In-domain MAE / coverage: frames the forest calls in domain. "
        "Targets: in-domain MAE <= 0.10, in-domain coverage >= 0.80, caught >= 0.90.",
        "",
        "| held-out domain | n | true F1 | forest | MAE | R2 | in-domain rate | in-domain MAE | in-domain coverage "
        "| failing | caught | false alarm | mean width |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for domain in dict.fromkeys(synthetic["domain"]):
        for name in (before, after):
            part = results[name]["held_out"]
            s = summarise(part[part["domain"] == domain])
            lines.append(
                f"| {domain} | {s['n']} | {s['true_f1']:.2f} | {name.split(':')[0]} | {fmt(s['mae'])} | "
                f"{fmt(s['r2'])} | {fmt(s['in_domain'])} | {fmt(s['mae_in'])} | {fmt(s['coverage_in'])} | "
                f"{s['n_fail']} | {fmt(s['caught'])} | {fmt(s['false_alarm'])} | {fmt(s['width'])} |"
            )
    lines += [
        "",
        "### All forests, pooled",
        "",
        "| forest | random 5-fold F1 MAE | random 5-fold in-domain rate | held-out MAE | held-out in-domain MAE | held-out in-domain coverage "
        "| held-out caught | held-out false alarm | EMPS MAE | EMPS in-domain rate | EMPS in-domain MAE "
        "| EMPS in-domain coverage | EMPS caught | EMPS false alarm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = results[name]
        random_mae = regression_metrics(r["random"]["true_f1"], r["random"]["f1"])["mae"]
        h = summarise(r["held_out"])
        e = summarise(r["emps"]) if r["emps"] is not None else dict.fromkeys(h, np.nan)
        lines.append(
            f"| {name} | {random_mae:.3f} | {r['random']['in_domain'].mean():.2f} | {fmt(h['mae'])} | {fmt(h['mae_in'])} | {fmt(h['coverage_in'])} | "
            f"{fmt(h['caught'])} | {fmt(h['false_alarm'])} | {fmt(e['mae'])} | {fmt(e['in_domain'])} | "
            f"{fmt(e['mae_in'])} | {fmt(e['coverage_in'])} | {fmt(e['caught'])} | {fmt(e['false_alarm'])} |"
        )
    lines += [
        "",
        '### The bundled forest file (`QualityForest.load("default")`) on frames outside its training',
        "",
        "What users get: the shipped forest (fit by `forest_study.py` on 650 other synthetic frames and the "
        "EMPS images), not refit per fold. Missed: failing frames predicted >= 0.5 and called in domain.",
        "",
        "| frames | n | true F1 | failing | caught | missed | false alarm | in-domain rate | in-domain MAE "
        "| in-domain coverage |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *extra["shipped"],
    ]
    lines += [
        "",
        '### AUROC of each signal for "this frame fails" (true F1 < 0.5)',
        "",
        "Novelty and the histogram distance are against the training frames of each fold; predicted F1 is "
        "each forest's out-of-fold prediction.",
        "",
        "| signal | synthetic held-out (pooled) | EMPS |",
        "|---|---|---|",
    ]
    pooled = results[after]["held_out"].copy()
    pooled["predicted_f1_after"] = pooled["f1"]
    pooled["predicted_f1_before"] = same_rows(results[before]["held_out"], pooled)
    unseen = results[after]["emps"]
    if unseen is not None:
        unseen = unseen.copy()
        unseen["predicted_f1_after"] = unseen["f1"]
        unseen["predicted_f1_before"] = same_rows(results[before]["emps"], unseen)  # folds differ in order
    for signal in SIGNAL_AUROC:
        lines.append(
            f"| {signal} | {fmt(auroc(pooled, signal))} | {fmt(auroc(unseen, signal) if unseen is not None else None)} |"
        )
    if (table["kind"] == "emps").any():
        lines += [
            "",
            "### Novelty models: EMPS (unseen) against held-out synthetic domains",
            "",
            "Each synthetic domain scored by a model fitted on the other domains; EMPS by one fitted on all of them. "
            "Flagged: novelty above the model's threshold (both aim at 1% of in-domain frames).",
            "",
            "| novelty model | AUROC, EMPS vs held-out synthetic | synthetic held-out flagged | EMPS flagged |",
            "|---|---|---|---|",
            *extra["novelty"],
        ]
        lines += [
            "",
            "### EMPS after labelling frames of other papers and refitting (default features, novelty, cheap signals)",
            "",
            "Five folds grouped by source paper: each fold's papers are scored by a forest fit on the synthetic "
            "frames plus N labelled EMPS frames drawn from the other papers (the Training step's refit).",
            "",
            "| labelled EMPS frames | MAE | in-domain rate | in-domain MAE | in-domain coverage | caught "
            "| false alarm |",
            "|---|---|---|---|---|---|---|",
            *extra["labelled"],
        ]
    lines += ["<!-- signals_study:end -->"]
    return "\n".join(lines)
