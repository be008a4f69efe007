"""The detector of a batch run: a hashable spec, checked before loading, and loaded once per process."""

from __future__ import annotations

from dataclasses import dataclass

from napari_detection_qc.paper import DEFAULT_MAX_DETECTIONS


def check_device(device: str) -> None:
    """A device torch knows and this machine has; a clear error otherwise (``--device banana``,
    ``cuda`` without a GPU, ``cuda:7`` on a machine with two)."""
    import torch

    from napari_detection_qc.engines import DetectorLoadError

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise DetectorLoadError(f"device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= available:
            raise DetectorLoadError(
                f"device {device!r} is not available: this machine has {available} CUDA device(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DetectorLoadError(f"device {device!r} is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise DetectorLoadError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class DetectorSpec:
    """How to load a detector; hashable, so each process keeps one loaded model per spec."""

    model: str = "default"
    config: str | None = None
    device: str = "auto"
    score_threshold: float | None = None
    """None: the model's own (fine-tuned checkpoints carry one), else 0.1."""
    max_detections: int = DEFAULT_MAX_DETECTIONS
    object_size: float | None = None
    """Typical object diameter in native pixels; None estimates it per frame (``auto``)."""
    signals: str = "none"
    """The detector's label-free signals stored with each frame: none, cheap (backbone embedding)
    or all (and TTA agreement, adding about 0.8x the detection time (box-only passes)); see ``signals.py``."""
    second_look: bool = True
    """False keeps the detections the model's verifier would drop (``load_detector``)."""

    def load(self):
        from napari_detection_qc.engines import load_detector

        check_device(self.device)
        spec = self.model if self.config is None else (self.config, self.model)
        return load_detector(
            spec,
            device=self.device,
            score_threshold=self.score_threshold,
            max_detections=self.max_detections,
            second_look=self.second_look,
        )


_loaded_detectors: dict = {}


def cached_detector(spec: DetectorSpec):
    """The detector for ``spec``, loaded on first use in this process (a Dask worker loads it once)."""
    if spec not in _loaded_detectors:
        _loaded_detectors[spec] = spec.load()
    return _loaded_detectors[spec]
