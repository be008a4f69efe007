"""Estimated true counts with calibrated intervals, p_true per detection and the label-next order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.quality.counts import (
    NO_DETECTIONS_NOTE,
    NO_PRECISION_RECALL_NOTE,
    OUT_OF_DOMAIN_NOTE,
    CountCalibration,
    count_estimates,
    count_nonconformity,
    stack_summary,
    with_count_estimates,
)
from napari_detection_qc.quality.p_true import (
    SHIPPED,
    PTrueCalibration,
    detection_p_true,
    weighted_mean_diameter,
)
from napari_detection_qc.quality.ranking import rank_frames, ranked_table


def quality(count, p, r, p_width=0.1, r_width=0.1, in_domain=True) -> pd.DataFrame:
    count, p, r = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (count, p, r))
    return pd.DataFrame(
        {
            "frame": np.arange(len(count)),
            "count": count,
            "f1": 2 * p * r / np.maximum(p + r, 1e-9),
            "precision": p,
            "precision_low": np.clip(p - p_width, 0, 1),
            "precision_high": np.clip(p + p_width, 0, 1),
            "recall": r,
            "recall_low": np.clip(r - r_width, 0, 1),
            "recall_high": np.clip(r + r_width, 0, 1),
            "in_domain": np.broadcast_to(in_domain, count.shape),
        }
    )


def test_estimate_is_count_times_precision_over_recall_inside_its_interval():
    got = count_estimates(quality([40, 10], [0.5, 1.0], [0.8, 1.0]))
    np.testing.assert_allclose(got["count_estimate"], [25.0, 10.0])
    assert (got["count_low"] < got["count_estimate"]).all() and (
        got["count_estimate"] < got["count_high"]
    ).all()
    assert (got["count_note"] == "").all()


def test_interval_widens_with_the_forests_uncertainty_and_with_the_scale():
    narrow = count_estimates(quality(40, 0.8, 0.8, 0.02, 0.02))
    wide = count_estimates(quality(40, 0.8, 0.8, 0.2, 0.2))
    assert (wide["count_high"] - wide["count_low"]).item() > (
        narrow["count_high"] - narrow["count_low"]
    ).item()
    scaled = count_estimates(quality(40, 0.8, 0.8, 0.2, 0.2), CountCalibration(scale=2.0))
    assert scaled["count_high"].item() > wide["count_high"].item()


def test_recall_near_zero_widens_without_blowing_up():
    got = count_estimates(quality(20, 0.9, 0.0, 0.05, 0.0))
    assert np.isfinite(got[["count_estimate", "count_low", "count_high"]].to_numpy()).all()
    assert got["count_estimate"].item() == pytest.approx(20 * 0.9 / 0.05)
    assert (
        got["count_high"].item() > got["count_estimate"].item()
        and "recall near 0" in got["count_note"].item()
    )


def test_frame_without_detections_is_estimated_from_recall_alone():
    good, poor = count_estimates(quality([0, 0], [0.0, 0.0], [0.95, 0.2], 0.0, 0.02)).itertuples()
    assert good.count_estimate == 0 and poor.count_estimate == 0 and good.count_low == 0
    assert good.count_note == NO_DETECTIONS_NOTE
    assert 0 < good.count_high < poor.count_high < np.inf  # a poor detector could have missed more


def test_out_of_domain_frames_say_so_and_missing_precision_recall_gives_no_estimate():
    got = count_estimates(quality([10, 10], [0.9, 0.9], [0.9, 0.9], in_domain=False))
    assert got["count_note"].str.startswith(OUT_OF_DOMAIN_NOTE).all()
    f1_only = quality(10, 0.9, 0.9).drop(columns=["precision", "recall_low"])
    got = count_estimates(f1_only)
    assert got["count_estimate"].isna().all() and (got["count_note"] == NO_PRECISION_RECALL_NOTE).all()


def test_nonconformity_is_zero_at_the_estimate_and_one_at_the_raw_bounds():
    table = quality([40], [0.5], [0.8])
    args = [
        table[c].to_numpy()
        for c in (
            "count",
            "precision",
            "precision_low",
            "precision_high",
            "recall",
            "recall_low",
            "recall_high",
        )
    ]
    bounds = count_estimates(table, CountCalibration(scale=1.0))
    assert count_nonconformity([25], *args)[0] == 0
    np.testing.assert_allclose(count_nonconformity(bounds["count_high"], *args), [1.0])
    np.testing.assert_allclose(count_nonconformity(bounds["count_low"], *args), [1.0])


def test_density_needs_a_pixel_size_and_the_stack_summary_averages_frames():
    table = quality([40, 20], [0.5, 1.0], [0.8, 1.0])
    counts_only = with_count_estimates(table, (1000, 1000), None)
    assert "density_estimate_per_um2" not in counts_only
    per_frame = stack_summary(counts_only)
    assert per_frame.per == "frame" and per_frame.mean == pytest.approx(22.5)
    with_density = with_count_estimates(table, (1000, 1000), 1.0)  # 1 µm² frames
    np.testing.assert_allclose(with_density["density_estimate_per_um2"], with_density["count_estimate"])
    summary = stack_summary(with_density)
    assert summary.mean == pytest.approx(22.5) and summary.low < summary.mean < summary.high
    assert "22.5 per µm²" in summary.describe()


def test_p_true_is_calibrated_where_the_score_is_not():
    rng = np.random.default_rng(0)
    scores, truth = [], []
    for _ in range(200):  # detectors that score everything high; half of it is wrong
        s = rng.uniform(0.8, 1.0, 20)
        scores.append(s)
        truth.append(rng.random(20) < 0.5)
    calibration = PTrueCalibration.fit(scores, truth)
    p = np.concatenate([calibration.probabilities(s) for s in scores])
    y = np.concatenate(truth)
    assert abs(p.mean() - y.mean()) < 0.05
    assert np.mean((p - y) ** 2) < np.mean((np.concatenate(scores) - y) ** 2)
    assert detection_p_true(np.zeros(0)).shape == (0,)
    assert ((detection_p_true([0.3, 0.99]) >= 0) & (detection_p_true([0.3, 0.99]) <= 1)).all()
    assert SHIPPED.fitted_on


def test_weighted_mean_diameter_discounts_doubtful_detections():
    assert weighted_mean_diameter([10, 30], [1.0, 0.0]) == 10
    assert weighted_mean_diameter([10, 30], [0.5, 0.5]) == 20
    assert np.isnan(weighted_mean_diameter([], []))


def test_rank_puts_failing_and_unknown_frames_first_and_spreads_over_variety():
    table = quality(np.full(6, 10), [0.9, 0.2, 0.21, 0.9, 0.9, 0.5], np.full(6, 0.9), 0.05, 0.05)
    table["f1"] = [0.9, 0.2, 0.21, 0.9, 0.9, 0.5]
    table["f1_low"], table["f1_high"] = table["f1"] - 0.05, table["f1"] + 0.05
    table["in_domain"] = [True, True, True, True, False, True]
    variety = np.array([[0.0], [5.0], [5.0], [0.0], [9.0], [2.0]])  # frames 1 and 2 look alike
    ranked = rank_frames(table.assign(source="s"), variety)
    order = [r.frame for r in ranked]
    assert order[0] == 1 and order.index(2) > order.index(5)  # the look-alike waits
    assert "out of domain" in ranked[order.index(4)].reason
    assert list(ranked_table(ranked).columns) == ["source", "frame", "reason"] and sorted(order) == list(
        range(6)
    )
    assert rank_frames(table.iloc[:0]) == []
