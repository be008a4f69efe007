"""The whole loop on the bundled synthetic stack: detect, predict quality, compare with the truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from napari_detection_qc.batch.run.detector import DetectorSpec, cached_detector
from napari_detection_qc.batch.run.quality import forest_name
from napari_detection_qc.detections.records import StackDetections
from napari_detection_qc.quality.forest import ForestLoadError, QualityForest
from napari_detection_qc.quality.scoring import predicted_quality, true_quality
from napari_detection_qc.synthetic.sample_data import SAMPLE_FRAME_PRESETS, _sample_stack_arrays


@dataclass
class DemoResult:
    """Per-frame true (and, with a forest, predicted) quality of the bundled sample stack."""

    true: pd.DataFrame
    predicted: pd.DataFrame | None
    presets: tuple[str, ...]
    forest_note: str | None

    @property
    def f1_mae(self) -> float | None:
        if self.predicted is None:
            return None
        return float(np.mean(np.abs(self.predicted["f1"].to_numpy() - self.true["f1"].to_numpy())))


def run_demo(
    n_frames: int | None, spec: DetectorSpec, forest_choice: str = "auto", progress: bool = True
) -> DemoResult:
    """A missing forest still gives the true quality, with a note why there is no prediction."""
    from tqdm.auto import tqdm

    images, truth = _sample_stack_arrays()
    n = len(images) if n_frames is None else max(1, min(int(n_frames), len(images)))
    detector = cached_detector(spec)
    frames = tqdm(
        detector.predict_many(images[:n], spec.object_size),
        total=n,
        unit="frame",
        desc="detect",
        disable=not progress,
    )
    stack = StackDetections.from_frames(list(frames))
    true = true_quality(stack, truth[:n])
    try:
        forest = QualityForest.load(forest_name(forest_choice, detector.metadata()))
    except ForestLoadError as exc:
        return DemoResult(true, None, SAMPLE_FRAME_PRESETS[:n], f"no predicted quality: {exc}")
    predicted, _ = predicted_quality(stack, forest)
    return DemoResult(
        true, predicted, SAMPLE_FRAME_PRESETS[:n], forest.detector_mismatch(detector.metadata())
    )
