"""The synthetic-domain study's pipeline (benchmarks/forest_study.py) on a tiny configuration."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_detection_qc.quality.features import CANDIDATE_FEATURES, PAPER_FEATURES
from napari_detection_qc.quality.forest import TARGETS
from napari_detection_qc.synthetic import DEFAULT, PRESETS
from napari_detection_qc.synthetic.study_frames import STUDY_FAMILIES, blend, frame_plan

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
forest_study = pytest.importorskip("forest_study")


def test_blend_goes_from_clean_to_the_preset():
    shifted = PRESETS["low_dose"]
    assert blend(DEFAULT, shifted, 0.0).read_noise == DEFAULT.read_noise
    full = blend(DEFAULT, shifted, 1.0)
    assert full.dose == pytest.approx(shifted.dose) and full.read_noise == pytest.approx(shifted.read_noise)
    half = blend(DEFAULT, shifted, 0.5)
    assert half.dose == pytest.approx(np.sqrt(DEFAULT.dose * shifted.dose))  # geometric
    assert blend(DEFAULT, PRESETS["overfocus"], 0.3).focus == "over"


def test_plan_is_seeded_and_covers_every_domain():
    plan = frame_plan(3)
    domains = set(PRESETS) | set(STUDY_FAMILIES)
    assert len(plan) == 3 * len(domains) and set(plan["domain"]) == domains
    assert plan["seed"].is_unique and (plan.loc[plan["domain"] == "clean", "severity"] == 0).all()
    pd.testing.assert_frame_equal(plan, frame_plan(3))


def test_table_from_detections_and_evaluation(tmp_path, monkeypatch):
    from napari_detection_qc.engines import load_detector

    monkeypatch.setattr(forest_study, "CACHE", tmp_path)
    detector = load_detector("default", device="cpu")
    plan = forest_study.frame_plan(1).iloc[[0, 7]]  # clean and hard_shift
    table, embeddings = forest_study.build_table(detector, plan)
    assert list(table["domain"]) == ["clean", "hard_shift"]
    assert embeddings.shape[0] == 2 and np.isfinite(embeddings).all()
    assert table[list(CANDIDATE_FEATURES) + list(TARGETS)].notna().all().all()
    assert table.loc[0, "f1"] > table.loc[1, "f1"]
    cached, cached_embeddings = forest_study.build_table(detector, plan)  # second pass reads the cache
    pd.testing.assert_frame_equal(cached, table)
    np.testing.assert_array_equal(cached_embeddings, embeddings)

    study = pd.read_csv(BENCHMARKS / "data" / "synthetic_study_table.csv")
    small = study.groupby("domain").head(12).reset_index(drop=True)
    result = forest_study.evaluate_set("paper 8", PAPER_FEATURES, small, repeats=1)
    assert set(result["grouped"].folds["group"]) == set(small["domain"])
    assert result["random"].summary.loc["f1", "mae"] < 0.3
