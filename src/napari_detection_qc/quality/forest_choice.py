"""Which quality forest scores a detector's output, and loading it once per process.

Qt-free and light to import (no scikit-learn until a forest is loaded), so the viewer can decide
on the UI thread and load in a worker. The viewer's forest picker and the CLI's ``--forest`` both
go through ``forest_reference`` and ``load_forest``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_detection_qc.quality.forest import QualityForest

BUNDLED_FORESTS = {"default": "default_forest.skops", "li2025": "li2025_forest.skops"}
MODELS_DIR = Path(__file__).parent.parent / "models"


class ForestChoice(StrEnum):
    """How the user chose the forest."""

    AUTO = "auto"  # the forest that belongs to the detector of the detections
    DEFAULT = "default"
    LI2025 = "li2025"
    FILE = "file"


@dataclass(frozen=True)
class ForestReference:
    """A forest to load (``key``: a bundled name or a file path) and an honest name for the user."""

    key: str
    name: str


def detector_family(description: dict | None) -> str:
    """``"detectron2"`` for detectron2 models (run on detectron2 or imported from their
    checkpoint, named ``detectron2:<file>``), else ``"torchvision"``."""
    description = description or {}
    engine = str(description.get("engine", ""))
    name = str(description.get("name") or description.get("detector") or "")
    return "detectron2" if engine == "detectron2" or name.startswith("detectron2:") else "torchvision"


def companion_forest_path(weights_path) -> Path:
    """Where the forest fitted for a weights file lives: ``model.pt`` -> ``model.forest.skops``."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.stem + ".forest.skops")


def forest_for_detector(detector_description: dict | None) -> str:
    """What ``auto`` means: the forest saved beside the detector's weights file when there is one
    (fine-tuned models), else the bundled forest for its family."""
    weights_path = (detector_description or {}).get("weights_path")
    if weights_path:
        companion = companion_forest_path(weights_path)
        if companion.is_file():
            return str(companion)
    return bundled_forest_for(detector_description)


def bundled_forest_for(detector_description: dict | None) -> str:
    """The bundled forest that belongs to a detector: ``"li2025"`` for detectron2 models (the
    authors' cavity model), ``"default"`` for the bundled torchvision-engine model."""
    return "li2025" if detector_family(detector_description) == "detectron2" else "default"


def forest_reference(choice: ForestChoice, detector: dict | None = None, path=None) -> ForestReference:
    """The forest a choice means for detections of ``detector``; ``path`` for ``FILE``. A missing
    file is a ValueError for the user."""
    if choice is ForestChoice.FILE:
        if not path or not Path(path).is_file():
            raise ValueError("choose a forest file (.skops)")
        return ForestReference(str(Path(path).resolve()), f"loaded from {Path(path).name}")
    if choice is ForestChoice.DEFAULT:
        return ForestReference("default", "bundled default")
    if choice is ForestChoice.LI2025:
        return ForestReference("li2025", "li2025 (authors' detectron2 model)")
    key = forest_for_detector(detector)
    if key in BUNDLED_FORESTS:
        return ForestReference(key, f"bundled {key} (matches the detector)")
    return ForestReference(key, f"{Path(key).name} (saved beside the detector)")


_loaded: dict[str, tuple[float | None, QualityForest]] = {}
_loading = threading.Lock()


def load_forest(key: str) -> QualityForest:
    """``QualityForest.load(key)``, once per process for each file (again when the file changes);
    thread-safe, so a warm-up worker and a scoring worker share one load."""
    from napari_detection_qc.quality.forest import QualityForest

    path = MODELS_DIR / BUNDLED_FORESTS[key] if key in BUNDLED_FORESTS else Path(key)
    with _loading:
        try:
            stamp = path.stat().st_mtime
        except OSError:
            stamp = None
        cached = _loaded.get(key)
        if cached is not None and stamp is not None and cached[0] == stamp:
            return cached[1]
        forest = QualityForest.load(key)
        _loaded[key] = (stamp, forest)
        return forest


def is_loaded(key: str) -> bool:
    """Whether ``load_forest(key)`` would return at once."""
    return key in _loaded
