"""The paper's regression metrics (section 2.4): RMSE, MAE, R2, NRMSE = RMSE / std(true),
NMAE = MAE / mean(true), and the "reliable frame" classifier view at an F1 threshold."""

from __future__ import annotations

import numpy as np


def regression_metrics(truth, predicted) -> dict[str, float]:
    """RMSE, MAE, R2, NRMSE and NMAE of one fold (NaN where a normaliser is zero)."""
    truth = np.asarray(truth, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if truth.shape != predicted.shape or truth.size == 0:
        raise ValueError("truth and prediction must be non-empty and of one shape")
    error = predicted - truth
    rmse = float(np.sqrt(np.mean(error**2)))
    mae = float(np.mean(np.abs(error)))
    variance = float(np.var(truth))
    r2 = float(1.0 - np.mean(error**2) / variance) if variance > 0 else float("nan")
    std, mean = float(np.std(truth)), float(np.mean(truth))
    return {
        "rmse": rmse,
        "mae": mae,
        "r2": r2,
        "nrmse": rmse / std if std > 0 else float("nan"),
        "nmae": mae / mean if mean > 0 else float("nan"),
    }


def reliability_classification(truth, predicted, threshold: float = 0.5) -> dict[str, float]:
    """Precision and recall of calling a frame reliable (F1 >= threshold) from its predicted F1,
    as the paper's Figure 8."""
    truth = np.asarray(truth) >= threshold
    called = np.asarray(predicted) >= threshold
    tp = int(np.sum(truth & called))
    precision = tp / called.sum() if called.sum() else float("nan")
    recall = tp / truth.sum() if truth.sum() else float("nan")
    return {"precision": float(precision), "recall": float(recall), "n_reliable": int(truth.sum())}
