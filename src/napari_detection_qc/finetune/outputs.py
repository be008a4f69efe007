"""What a fine-tuning run reads and writes, for the CLI and the viewer alike: labelled frames from
image files and a label folder named like them or a COCO file, the model with its forest beside it, and the
training curves (CSV, and one drawing used both for the PNG and for the viewer's live graphs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from napari_detection_qc.engines.checkpoint import DetectorLoadError, load_checkpoint
from napari_detection_qc.io import InputError, as_frame_stack, read_frames
from napari_detection_qc.io.atomic import atomic_path
from napari_detection_qc.labels.ground_truth import label_files_by_stem
from napari_detection_qc.quality.forest import QualityForest
from napari_detection_qc.quality.forest_choice import companion_forest_path
from napari_detection_qc.validation import list_regular_inputs

CURVE_PANELS = (
    ("total loss", ("loss_total",)),
    ("classification / box regression", ("loss_classifier", "loss_box_reg")),
    ("mask", ("loss_mask",)),
    ("RPN (objectness / box)", ("loss_objectness", "loss_rpn_box_reg")),
    ("held-out quality", ("val_f1", "val_precision", "val_recall")),
)
"""Each graph's title and columns; a loss column's held-out twin (``val_<name>``) is drawn dashed."""
SMOOTHING_STEPS = 10


@dataclass
class LabelledFrames:
    """Frames with their ground truth for fine-tuning: ``names`` are ``stem`` or ``stem#t``;
    ``notes`` say how the annotations were read (box-only annotations drawn as ellipses)."""

    images: list[np.ndarray]
    truths: list[np.ndarray]
    names: list[str]
    notes: list[str] = field(default_factory=list)


def read_labelled_frames(images, ground_truth) -> LabelledFrames:
    """Frames of every image file (stacks give several) and their ground truth: a folder of label
    images named like the inputs (same stem), or a COCO JSON file (polygons, RLE or boxes only;
    a box-only annotation trains the mask head on the ellipse inscribed in its box)."""
    images = [images] if isinstance(images, (str, Path)) else list(images)
    files = [path for item in images for path in list_regular_inputs(item)]
    ground_truth = Path(ground_truth)
    if ground_truth.is_file() and ground_truth.suffix.lower() == ".json":
        return _frames_with_coco(files, ground_truth)
    if not ground_truth.is_dir():
        raise InputError(
            f"{ground_truth}: the ground truth must be a folder of label images named like the inputs, "
            "or a COCO JSON file"
        )
    by_stem = label_files_by_stem(ground_truth)
    frames = LabelledFrames([], [], [])
    for path in files:
        if path.stem not in by_stem:
            raise InputError(f"{ground_truth}: no label image named {path.stem}.* for {path}")
        stack = as_frame_stack(read_frames(path)[0], path)
        label_path = by_stem[path.stem]
        labels = as_frame_stack(read_frames(label_path)[0], label_path)
        if len(labels) != len(stack):
            raise InputError(f"{label_path} holds {len(labels)} frame(s) but {path} holds {len(stack)}")
        _add_frames(frames, path, stack, labels)
    return frames


def _frames_with_coco(files: list[Path], coco_path: Path) -> LabelledFrames:
    from napari_detection_qc.detections.coco import CocoGroundTruth

    coco = CocoGroundTruth.load(coco_path)
    frames, box_only = LabelledFrames([], [], []), 0
    for path in files:
        stack = as_frame_stack(read_frames(path)[0], path)
        labels = coco.stack_labels(
            path.name, len(stack), stack.shape[1:3], sole_input=len(files) == 1, box_mask="ellipse"
        )
        box_only += coco.box_only_count(coco.images_for(path.name, len(stack), sole_input=len(files) == 1))
        _add_frames(frames, path, stack, labels)
    if box_only:
        frames.notes.append(
            f"{box_only} box-only annotation(s): the box head learns their boxes, the mask head the "
            "ellipse inscribed in each box"
        )
    return frames


def _add_frames(frames: LabelledFrames, path: Path, stack, labels) -> None:
    for t, (frame, truth) in enumerate(zip(stack, labels, strict=True)):
        frames.images.append(np.asarray(frame))
        frames.truths.append(np.asarray(truth))
        frames.names.append(path.stem if len(stack) == 1 else f"{path.stem}#{t}")


def draw_curves(figure: Figure, history: pd.DataFrame, side_by_side: bool = False) -> None:
    """The training graphs: losses on training crops (smoothed) and held-out crops (dashed), and
    held-out F1/precision/recall, against the step; one above the other (a page), or side by side
    (a wide, low dock)."""
    figure.clear()
    axes = (
        figure.subplots(1, len(CURVE_PANELS))
        if side_by_side
        else figure.subplots(len(CURVE_PANELS), 1, sharex=True)
    )
    for ax, (title, columns) in zip(axes, CURVE_PANELS, strict=True):
        ax.set_title(title, fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
        if history is None or history.empty:
            continue
        steps = history["step"].to_numpy()
        for column in columns:
            if column not in history:
                continue
            values = history[column]
            if column.startswith("val_"):
                held = values.notna().to_numpy()
                ax.plot(steps[held], values[held], marker="o", ms=3, lw=1, label=column[4:])
                ax.set_ylim(-0.02, 1.02)
                continue
            (line,) = ax.plot(
                steps, values.rolling(SMOOTHING_STEPS, min_periods=1).mean(), lw=1, label=column
            )
            twin = f"val_{column}"
            if twin in history and history[twin].notna().any():
                held = history[twin].notna().to_numpy()
                ax.plot(
                    steps[held],
                    history[twin][held],
                    ls="--",
                    marker=".",
                    color=line.get_color(),
                    lw=1,
                    label="held-out",
                )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper right", frameon=False)
    for ax in axes if side_by_side else axes[-1:]:
        ax.set_xlabel("step", fontsize=8)


def write_curves(history: pd.DataFrame, csv_path, png_path) -> None:
    with atomic_path(Path(csv_path)) as temporary:
        history.to_csv(temporary, index=False)
    figure = Figure(figsize=(6, 9), tight_layout=True)
    draw_curves(figure, history)
    with atomic_path(Path(png_path)) as temporary:
        figure.savefig(temporary, format="png", dpi=110)


def curve_paths(model_path) -> tuple[Path, Path]:
    """``model.pt`` -> ``model.curves.csv``, ``model.curves.png``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".curves.csv"), model_path.with_name(
        model_path.stem + ".curves.png"
    )


def save_finetuned(result, forest: QualityForest | None, model_path) -> list[Path]:
    """Write the fine-tuned model, its forest beside it and the curves; refuses to overwrite the
    parent's own file. Returns the paths written."""
    model_path = Path(model_path)
    parent = result.detector.header["finetune"]["parent"]
    if model_path.is_file():
        try:
            existing = load_checkpoint(model_path)[0].get("sha256")
        except DetectorLoadError:
            existing = None
        if existing == parent["weights_sha256"]:
            raise InputError(f"{model_path} holds the parent model; save the fine-tuned one to another file")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_path) as temporary:
        result.detector.save(temporary)
    written = [model_path]
    if forest is not None:
        written.append(forest.save(companion_forest_path(model_path)))
    csv_path, png_path = curve_paths(model_path)
    write_curves(result.history, csv_path, png_path)
    return [*written, csv_path, png_path]
