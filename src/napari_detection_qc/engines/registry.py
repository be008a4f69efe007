"""``load_detector(spec)``: the one place that knows which engine reads which weights.

Engines import only :mod:`.base`; this module imports the engines, so nothing imports its own
factory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from napari_detection_qc.engines.base import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD, Detector
from napari_detection_qc.engines.checkpoint import DetectorLoadError


def default_weights_path() -> Path:
    """The bundled default model inside the installed package."""
    return Path(str(resources.files("napari_detection_qc") / "models" / "default_detector.pt"))


def load_detector(
    spec="default",
    *,
    device="auto",
    score_threshold: float | None = None,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    batch_size: int | None = None,
    second_look: bool = True,
) -> Detector:
    """A ready detector from ``"default"`` (the bundled model), a torchvision-engine checkpoint
    path, a detectron2 ``model_final.pth`` path, or a ``(config_yaml, weights_pth)`` pair.

    detectron2 weights run on detectron2 when it is installed, otherwise they are imported into the
    torchvision engine (no detectron2 needed). ``score_threshold=None`` is the model's own
    (fine-tuned checkpoints carry one), else 0.1. A detector loaded from a file knows its path
    (``weights_path``), so the forest fitted for it beside the file can be found.
    ``second_look=False`` keeps every detection the model's verifier would drop
    (``detection_verifier.py``), for frames where it drops real objects.
    """
    detector = _load(
        spec,
        dict(
            device=device,
            score_threshold=score_threshold,
            max_detections=max_detections,
            batch_size=batch_size,
        ),
    )
    if not second_look:
        detector.verifier = None
    return detector


def _load(spec, options: dict) -> Detector:
    from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector

    if isinstance(spec, str) and spec == "default":
        path = default_weights_path()
        if not path.is_file():
            raise DetectorLoadError(f"the bundled default model is missing from the installation ({path})")
        return TorchvisionDetector.from_checkpoint(path, **options)
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise ValueError("a detectron2 spec is a (config_yaml, weights_pth) pair")
        config, weights = (Path(p) for p in spec)
        detector = load_detectron2_weights(weights, config, options)
        detector.weights_path = str(weights.resolve())
        return detector
    path = Path(spec)
    if path.suffix == ".pth":
        detector = load_detectron2_weights(path, None, options)
    else:
        detector = TorchvisionDetector.from_checkpoint(path, **options)
    detector.weights_path = str(path.resolve())
    return detector


def load_detectron2_weights(weights: Path, config: Path | None, options: dict) -> Detector:
    """detectron2 weights on the detectron2 engine if importable, else through the import."""
    from napari_detection_qc.engines.detectron2_engine import Detectron2Detector, detectron2_available

    if detectron2_available():
        threshold = options["score_threshold"]
        return Detectron2Detector(
            weights,
            config,
            **{**options, "score_threshold": DEFAULT_SCORE_THRESHOLD if threshold is None else threshold},
        )
    from napari_detection_qc.engines.detectron2_checkpoint import import_detectron2_checkpoint
    from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector

    header, state_dict = import_detectron2_checkpoint(weights, config)
    return TorchvisionDetector(header, state_dict, **options)
