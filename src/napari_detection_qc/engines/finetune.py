"""Fine-tune a torchvision-engine detector on a user's labelled frames (no Qt).

The user's frames are put at the scale inference will see them (the model's object-size rule
applied to the ground truth's typical diameter, or the model's own resize rule, or native), then
random crops with flips/90-degree rotations, intensity jitter and a small scale jitter train a
copy of the parent's weights: the parent is never modified. One or two frames (more for larger
sets) are held out: every so often the copy is scored on them with the paper's matching, the best
weights are kept (early stopping), and the score threshold that maximises their mean F1 becomes
the new model's own threshold. With a single labelled frame there is nothing to hold out: it
trains on that frame, keeps the parent's threshold, and says so in the result.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import torch

from napari_detection_qc.detections.matching import boxes_from_labels, match_frame
from napari_detection_qc.detections.records import FrameDetections
from napari_detection_qc.engines.base import as_grayscale, resolve_device
from napari_detection_qc.engines.checkpoint import state_dict_sha256
from napari_detection_qc.engines.intensity import scale_to_255
from napari_detection_qc.engines.scaling import ScaleRule
from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector, resize_scale
from napari_detection_qc.engines.training import (
    at_trained_scale,
    batch_losses,
    intensity_jitter,
    learning_rate,
    random_crop,
    typical_diameter,
)

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
THRESHOLD_CANDIDATES = tuple(np.round(np.arange(0.1, 0.951, 0.05), 2))
SCALE_JITTER = (0.8, 1.0, 1.25)
"""Extra resampling factors each training frame is kept at: the automatic size estimate is not exact."""
DEFAULT_MINUTES = 10.0


class FinetuneError(ValueError):
    """Input that cannot be fine-tuned on, or a model that cannot be fine-tuned."""


class FinetuneCancelled(Exception):
    """Raised when ``cancelled()`` turned true; the parent model is untouched."""


@dataclass(frozen=True)
class FinetuneSettings:
    """Optimiser and sampling choices (defaults: minutes on 2 CPU cores for the bundled model)."""

    batch_size: int = 4
    crop_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup: float = 0.05
    clip: float = 5.0
    evaluations: int = 10
    """Held-out evaluations over the budget (early stopping and the curves)."""
    patience: int = 4
    """Stop after this many evaluations without a better held-out F1 ..."""
    earliest_stop: float = 0.5
    """... but not before this share of the budget: one or two held-out frames are noisy judges."""


@dataclass
class FinetuneProgress:
    """One report to the progress callback: after every step, and after every held-out evaluation."""

    step: int
    fraction: float
    """Share of the step or time budget used, 0..1."""
    elapsed_s: float
    row: dict[str, float]
    """The history row: step, elapsed_s, lr, loss_total and the loss parts; ``val_*`` columns when
    the held-out frames were just evaluated."""
    message: str = ""


@dataclass
class FinetuneResult:
    detector: TorchvisionDetector
    header: dict[str, Any]
    history: pd.DataFrame
    before: dict[str, float] | None
    after: dict[str, float] | None
    score_threshold: float
    validation_frames: list[int]
    training_frames: list[int]
    notes: list[str] = field(default_factory=list)


@dataclass
class LabelledFrame:
    image: np.ndarray
    """0..255 float32 frame at the model's input scale."""
    labels: np.ndarray
    native: np.ndarray
    """The frame as given (for held-out detection, exactly as a user would run it)."""
    native_labels: np.ndarray
    diameter: float | None


# -- input checks ----------------------------------------------------------------------------------
def check_inputs(images: Sequence, ground_truth: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    """(grayscale frame, int64 labels) pairs; one clear error for every kind of bad input."""
    images, ground_truth = list(images), list(ground_truth)
    if len(images) == 0:
        raise FinetuneError("no labelled frames given")
    if len(images) != len(ground_truth):
        raise FinetuneError(
            f"{len(images)} frames but {len(ground_truth)} ground-truth frames; give one label image per frame"
        )
    pairs, total = [], 0
    for index, (image, labels) in enumerate(zip(images, ground_truth, strict=True)):
        try:
            gray = as_grayscale(image)
        except ValueError as error:
            raise FinetuneError(f"frame {index}: {error}") from None
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape != gray.shape:
            raise FinetuneError(
                f"frame {index}: ground truth of shape {labels.shape} does not match the frame's {gray.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise FinetuneError(
                f"frame {index}: ground truth must be an integer label image, got {labels.dtype}"
            )
        if labels.size and labels.min() < 0:
            raise FinetuneError(
                f"frame {index}: ground truth holds negative ids; ids must be 0 (background) or positive"
            )
        labels = labels.astype(np.int64)
        total += len(np.unique(labels[labels > 0]))
        pairs.append((gray, labels))
    if total == 0:
        raise FinetuneError("the ground truth holds no objects; label at least one object to fine-tune on")
    return pairs


def validation_count(n_frames: int) -> int:
    """Frames held out: none for one frame, 1 up to 9 frames, then a tenth, at most 4."""
    if n_frames < 2:
        return 0
    return int(np.clip(n_frames // 10, 1, 4))


def split_frames(n_frames: int, validation, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) frame indices; ``validation`` is "auto", a count, or explicit indices."""
    if isinstance(validation, str):
        if validation != "auto":
            raise FinetuneError(
                f'validation must be "auto", a number of frames or a list of frames, got {validation!r}'
            )
        count = validation_count(n_frames)
    elif isinstance(validation, (int, np.integer)):
        count = int(validation)
    else:
        held = sorted({int(v) for v in validation})
        if any(not 0 <= v < n_frames for v in held):
            raise FinetuneError(f"validation frames {held} are not all among the {n_frames} labelled frames")
        if len(held) >= n_frames:
            raise FinetuneError("every labelled frame is held out; keep at least one to train on")
        return [i for i in range(n_frames) if i not in held], held
    if not 0 <= count < n_frames:
        raise FinetuneError(
            f"cannot hold out {count} of {n_frames} labelled frames; keep at least one to train on"
        )
    held = sorted(int(i) for i in np.random.default_rng([seed, 11]).choice(n_frames, count, replace=False))
    return [i for i in range(n_frames) if i not in held], held


def input_factor(detector: TorchvisionDetector, shape: tuple[int, int], diameter: float | None) -> float:
    """The resampling inference applies to a frame: the object-size rule (at the ground truth's
    typical diameter), or the architecture's own resize rule, or none."""
    if detector.scale_rule is not None:
        return detector.scale_rule.factor_for(diameter)
    return resize_scale(*shape, detector.architecture["resize"])


def prepare(detector: TorchvisionDetector, gray: np.ndarray, labels: np.ndarray) -> LabelledFrame:
    image = scale_to_255(gray, detector.normalisation)
    if image is None:  # a constant frame: nothing to see, but it may still teach "no objects"
        image = np.full(gray.shape, 128.0, dtype=np.float32)
    diameter = typical_diameter(labels)
    scaled, scaled_labels = at_trained_scale(image, labels, input_factor(detector, gray.shape, diameter))
    return LabelledFrame(scaled, scaled_labels, gray, labels, diameter)


def training_architecture(arch: dict) -> dict:
    """The architecture with its resize rule off: crops are already at the model's input scale."""
    return {**arch, "resize": {**arch["resize"], "shortest_edge": None, "max_size": None}}


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """BatchNorm layers keep their running statistics: a few small crops would corrupt them."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


# -- held-out scoring ------------------------------------------------------------------------------
def held_out_detections(
    evaluator: TorchvisionDetector, frames: Sequence[LabelledFrame]
) -> list[FrameDetections]:
    """Detections of the held-out frames at their ground truth's object size, as inference runs."""
    out = []
    for frame in frames:
        size = frame.diameter if evaluator.scale_rule is not None else None
        out.append(evaluator.predict(frame.native, object_size=size if size is not None else "auto"))
    return out


def mean_quality(
    detections: Sequence[FrameDetections], frames: Sequence[LabelledFrame], threshold: float
) -> dict[str, float]:
    """Mean per-frame F1, precision and recall (paper matching, box IoU >= 0.1) above a score threshold."""
    results = [
        match_frame(found.boxes[found.scores >= threshold], boxes_from_labels(frame.native_labels)[0])
        for found, frame in zip(detections, frames, strict=True)
    ]
    return {
        "f1": float(np.mean([r.f1 for r in results])),
        "precision": float(np.mean([r.precision for r in results])),
        "recall": float(np.mean([r.recall for r in results])),
    }


def best_candidate(f1_by_candidate: Sequence[float]) -> int:
    """Index of the candidate score threshold whose neighbourhood (itself and the candidates either
    side) has the highest F1, the lowest on ties: a spike on one or two frames is noise."""
    f1 = np.asarray(f1_by_candidate, dtype=float)
    smoothed = np.convolve(np.pad(f1, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    return int(np.argmax(smoothed))


def best_threshold(
    detections: Sequence[FrameDetections], frames: Sequence[LabelledFrame]
) -> tuple[float, dict]:
    """The best candidate score threshold on held-out frames, and the mean quality there."""
    qualities = [mean_quality(detections, frames, t) for t in THRESHOLD_CANDIDATES]
    best = best_candidate([q["f1"] for q in qualities])
    return float(THRESHOLD_CANDIDATES[best]), qualities[best]


def held_out_losses(
    model, frames: Sequence[LabelledFrame], arch: dict, normalisation: dict, device, crop_size: int
) -> dict[str, float]:
    """Training losses on fixed central crops of the held-out frames (no gradient)."""
    rng = np.random.default_rng(0)
    crops = [random_crop(rng, f.image, f.labels, crop_size) for f in frames]
    with torch.no_grad():
        losses = batch_losses(
            model, [c[0] for c in crops], [c[1] for c in crops], arch, normalisation, device
        )
    values = {name: float(value) for name, value in losses.items()}
    values["loss_total"] = sum(values.values())
    return values


# -- the loop --------------------------------------------------------------------------------------
def out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate" in text


def finetune(
    detector: TorchvisionDetector,
    images: Sequence,
    ground_truth: Sequence,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    device="auto",
    progress: Callable[[FinetuneProgress], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    validation="auto",
    seed: int = 0,
    settings: FinetuneSettings = FinetuneSettings(),
) -> FinetuneResult:
    """Fine-tune a copy of ``detector`` on labelled frames for ``steps`` optimiser steps and/or
    ``minutes`` (whichever ends first; 10 minutes when neither is given).

    ``images``: 2-D frames (any dtype, as a user opens them); ``ground_truth``: instance label
    images of the same shapes (0 = background; gaps between ids are fine). ``progress`` gets a
    :class:`FinetuneProgress` after every step; ``cancelled()`` is checked before every step and
    raises :class:`FinetuneCancelled`. Raises :class:`FinetuneError` on bad input or out of memory.
    """
    if not isinstance(detector, TorchvisionDetector):
        raise FinetuneError(
            f"fine-tuning needs a torchvision-engine model, got {type(detector).__name__}; detectron2 weights "
            "load into the torchvision engine when detectron2 is not installed"
        )
    if steps is not None and steps < 1:
        raise FinetuneError(f"steps must be at least 1, got {steps}")
    if minutes is not None and not minutes > 0:
        raise FinetuneError(f"minutes must be positive, got {minutes}")
    if steps is None and minutes is None:
        minutes = DEFAULT_MINUTES
    pairs = check_inputs(images, ground_truth)
    train_idx, held_idx = split_frames(len(pairs), validation, seed)
    notes = (
        []
        if held_idx
        else [
            "one labelled frame: trained without held-out frames (no early stopping, the parent's score threshold kept)"
        ]
    )
    frames = [prepare(detector, gray, labels) for gray, labels in pairs]
    if not any(frames[i].labels.any() for i in train_idx):
        raise FinetuneError("the frames left for training hold no objects; label objects on more frames")

    device = resolve_device(device)
    try:
        return _train(
            detector,
            frames,
            train_idx,
            held_idx,
            notes,
            steps,
            minutes,
            device,
            progress,
            cancelled,
            seed,
            settings,
        )
    except RuntimeError as error:
        if out_of_memory(error):
            largest = max((f.native.shape for f in frames), key=lambda s: s[0] * s[1])
            raise FinetuneError(
                f"out of memory on {device} while fine-tuning (crops of {settings.crop_size} px, batch "
                f"{settings.batch_size}, largest frame {largest}): use the CPU, a smaller crop or batch, "
                "or smaller frames"
            ) from error
        raise


def _train(
    detector, frames, train_idx, held_idx, notes, steps, minutes, device, progress, cancelled, seed, settings
) -> FinetuneResult:
    train_frames = [frames[i] for i in train_idx]
    held = [frames[i] for i in held_idx]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = training_architecture(detector.architecture)
    evaluator = TorchvisionDetector(
        detector.header,
        detector.model.state_dict(),
        device=device,
        score_threshold=min(THRESHOLD_CANDIDATES[0], detector.score_threshold),
        max_detections=detector.max_detections,
    )
    model = evaluator.model  # a copy of the parent's weights: the parent is never touched
    pyramid = scale_pyramid(train_frames, detector.scale_rule)
    before = (
        mean_quality(held_out_detections(detector, held), held, detector.score_threshold) if held else None
    )

    def evaluate() -> dict[str, float]:
        model.eval()
        _, quality = best_threshold(held_out_detections(evaluator, held), held)
        model.train()
        freeze_batchnorm(model)
        losses = held_out_losses(model, held, arch, detector.normalisation, device, settings.crop_size)
        return {**{f"val_{k}": v for k, v in quality.items()}, **{f"val_{k}": v for k, v in losses.items()}}

    start = time.monotonic()
    model.train()
    freeze_batchnorm(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, float]] = []
    best_f1, best_state, stale = -1.0, None, 0
    step, stopped = 0, "budget"
    next_evaluation = 1.0 / settings.evaluations

    def fraction_done() -> float:
        by_steps = step / steps if steps else 0.0
        by_time = (time.monotonic() - start) / (60 * minutes) if minutes else 0.0
        return min(1.0, max(by_steps, by_time))

    def keep_if_best(row) -> bool:
        """Remember the weights when the held-out F1 improved; True when patience ran out."""
        nonlocal best_f1, best_state, stale
        if row["val_f1"] >= best_f1:  # on a tie the later, longer-trained weights
            best_f1, best_state, stale = row["val_f1"], copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        return stale >= settings.patience and fraction_done() >= settings.earliest_stop

    while fraction_done() < 1.0 and stopped == "budget":
        if cancelled is not None and cancelled():
            raise FinetuneCancelled("fine-tuning cancelled; the parent model is unchanged")
        lr = learning_rate(settings.lr, fraction_done(), settings.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        crops = [training_crop(rng, pyramid, settings.crop_size) for _ in range(settings.batch_size)]
        losses = batch_losses(
            model, [c[0] for c in crops], [c[1] for c in crops], arch, detector.normalisation, device
        )
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FinetuneError(
                f"the training loss became {float(loss)} at step {step + 1}; try a lower learning rate"
            )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
        optimizer.step()
        step += 1
        row = {
            "step": step,
            "elapsed_s": time.monotonic() - start,
            "lr": lr,
            "loss_total": float(loss.detach()),
            **{name: float(losses[name].detach()) for name in LOSS_NAMES if name in losses},
        }
        done = fraction_done()
        if held and done >= next_evaluation:
            next_evaluation = (math.floor(done * settings.evaluations) + 1) / settings.evaluations
            row.update(evaluate())
            if keep_if_best(row):
                stopped = "early stopping"
        history.append(row)
        if progress is not None:
            progress(FinetuneProgress(step, done, row["elapsed_s"], row))
    if held and history and "val_f1" not in history[-1]:
        history[-1].update(evaluate())
        keep_if_best(history[-1])
        if progress is not None:
            progress(FinetuneProgress(step, 1.0, time.monotonic() - start, history[-1]))
    minutes_used = (time.monotonic() - start) / 60
    model.eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    threshold, after = detector.score_threshold, None
    if held:
        threshold, after = best_threshold(held_out_detections(evaluator, held), held)
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    provenance = {
        "parent": {"name": detector.name, "weights_sha256": detector.weights_sha256},
        "frames": len(frames),
        "training_frames": train_idx,
        "validation_frames": held_idx,
        "frame_shapes": sorted({tuple(int(s) for s in f.native.shape) for f in frames}),
        "steps": step,
        "minutes": round(minutes_used, 2),
        "stopped": stopped,
        "device": str(device),
        "seed": seed,
        "settings": asdict(settings),
        "validation_before": before,
        "validation_after": after,
        "score_threshold": threshold,
        "notes": notes,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    header = {key: value for key, value in detector.header.items() if key != "sha256"}
    header.update(
        name=f"{detector.name} fine-tuned",
        score_threshold=threshold,
        finetune=provenance,
        sha256=state_dict_sha256(state),
    )
    tuned = TorchvisionDetector(
        header,
        state,
        device=detector.device,
        score_threshold=threshold,
        max_detections=detector.max_detections,
        batch_size=detector.batch_size,
    )
    return FinetuneResult(
        tuned, header, pd.DataFrame(history), before, after, threshold, held_idx, train_idx, notes
    )


def scale_pyramid(
    frames: Sequence[LabelledFrame], rule: ScaleRule | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each training frame at ``SCALE_JITTER`` around its input scale (within the rule's range)."""
    out = []
    for frame in frames:
        for jitter in SCALE_JITTER:
            if rule is not None and frame.diameter is not None:
                base = rule.factor_for(frame.diameter)
                jitter = float(np.clip(base * jitter, rule.min_factor, rule.max_factor)) / base
            out.append(
                (frame.image, frame.labels)
                if jitter == 1.0
                else at_trained_scale(frame.image, frame.labels, jitter)
            )
    return out


def training_crop(rng: np.random.Generator, pyramid, size: int) -> tuple[np.ndarray, np.ndarray]:
    image, labels = pyramid[int(rng.integers(len(pyramid)))]
    image, labels = random_crop(rng, image, labels, size)
    return intensity_jitter(rng, image), labels
