"""Detect every frame of every input into its store, skipping frames already stored; serially or on
Dask. Each input is assembled as soon as its last frame is stored, so an interrupted run keeps every
input it finished, and a rerun detects only what is missing."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_detection_qc.batch.run.detector import DetectorSpec, cached_detector
from napari_detection_qc.batch.run.errors import ResourceError, is_resource_exhaustion
from napari_detection_qc.batch.store.format import assemble, write_frame
from napari_detection_qc.batch.store.planning import FrameTask, InputPlan, plan_input, store_names
from napari_detection_qc.io import InputError, read_frame
from napari_detection_qc.io.pixel_sizes import match_pixel_sizes, read_pixel_size_table
from napari_detection_qc.io.writers import MASKS_TIFF, write_label_tiff
from napari_detection_qc.size_report import outlier_warning
from napari_detection_qc.validation import list_regular_inputs

ErrorHandler = Callable[[str], None]


@dataclass(frozen=True)
class FrameOutcome:
    task: FrameTask
    count: int
    error: str | None = None
    out_of_resources: bool = False


def run_frame_task(spec: DetectorSpec, task: FrameTask) -> FrameOutcome:
    """Read, detect and store one frame; the same function runs serially and on Dask workers.
    Input problems and exhausted memory or disk come back as the outcome's ``error`` so the caller
    decides whether to go on."""
    detector = cached_detector(spec)
    where = f"{task.source}: frame {task.index}"
    try:
        frame = read_frame(task.source, task.index)
        detections = detector.predict(frame, object_size=spec.object_size, signals=spec.signals)
        write_frame(
            task.target, detections, detector.last_object_sizes[-1] if detector.last_object_sizes else None
        )
    except InputError as exc:
        return FrameOutcome(task, 0, str(exc))
    except ValueError as exc:  # frames no detector takes: NaN pixels, boolean images, ...
        return FrameOutcome(task, 0, f"{where}: {exc}")
    except (MemoryError, RuntimeError, OSError) as exc:
        if not is_resource_exhaustion(exc):
            raise
        return FrameOutcome(task, 0, f"{where}: out of memory or disk space ({exc})", out_of_resources=True)
    return FrameOutcome(task, detections.count)


@dataclass
class DetectReport:
    stores: list[Path]
    failures: list[str]
    detected_frames: int
    skipped_frames: int
    mis_sized: list[str] = field(default_factory=list)
    """Per complete input whose frames' automatic object sizes disagree: what to tell the user."""


def fail(message: str, on_error: ErrorHandler | None, failures: list[str], resource: bool = False) -> None:
    """Stop (no handler) or report the failure and go on (``--keep-going``)."""
    if on_error is None:
        raise ResourceError(message) if resource else InputError(message)
    failures.append(message)
    on_error(message)


def unique_sources(inputs: Iterable, on_error: ErrorHandler | None, failures: list[str]) -> list[Path]:
    """The files the inputs stand for, each once (a file named twice is detected once)."""
    sources: dict[Path, Path] = {}
    for path in inputs:
        try:
            for source in list_regular_inputs(path):
                sources.setdefault(source.resolve(), source)
        except InputError as exc:
            fail(str(exc), on_error, failures)
    return list(sources.values())


def detect(
    inputs: Iterable,
    out_dir,
    spec: DetectorSpec,
    executor,
    *,
    on_error: ErrorHandler | None = None,
    progress: bool = True,
    pixel_size_table=None,
) -> DetectReport:
    """Detect every frame of every input into ``out_dir``, skipping frames already stored.
    Without ``on_error`` the first unreadable file stops the run with an :class:`InputError`
    (a :class:`ResourceError` when memory or disk ran out).
    ``pixel_size_table``: a CSV/TSV of per-image pixel sizes (``pixel_sizes``) overriding the files'."""
    table = read_pixel_size_table(pixel_size_table) if pixel_size_table is not None else {}
    failures: list[str] = []
    sources = unique_sources(inputs, on_error, failures)
    pixel_sizes = match_pixel_sizes(table, sources, str(pixel_size_table)) if table else {}
    detector_meta = {**cached_detector(spec).metadata(), "object_size": spec.object_size or "auto"}
    plans: list[InputPlan] = []
    for source, name in zip(sources, store_names(sources)):
        try:
            root = Path(out_dir) / name
            threshold = detector_meta["score_threshold"]
            plans.append(
                plan_input(source, root, threshold, detector_meta, pixel_sizes.get(source), spec.signals)
            )
        except InputError as exc:
            fail(str(exc), on_error, failures)
    complete, detected = run_plans(plans, spec, executor, on_error, failures, progress)
    skipped = sum(plan.n_frames - len(plan.pending) for plan in plans)
    mis_sized = (
        []
        if spec.object_size
        else [
            f"{plan.source}: {warning}"
            for plan in complete
            if (warning := outlier_warning(plan.store.object_sizes()))
        ]
    )
    return DetectReport([plan.store.root for plan in complete], failures, detected, skipped, mis_sized)


def assemble_plan(plan: InputPlan) -> None:
    """Write the store's detections.csv and masks.npy unless an earlier run already did, and the
    masks as an ImageJ TIFF label image (``masks.tif``, calibrated in nm where the pixel size is
    known) that Fiji and other programs open. An input replaced or rewritten while it was detected
    (even restored since) is not assembled: the frames this run detected may hold the other file's
    pixels, so they are discarded and the input fails."""
    if plan.changed_since_planned():
        plan.discard_this_runs_frames()
        raise InputError(
            f"{plan.source}: the file changed while it was being detected; its frames from this run were "
            "discarded, rerun to detect it again"
        )
    if not plan.store.is_complete:
        assemble(plan.store, plan.n_frames, plan.image_shape)
    masks_tiff = plan.store.root / MASKS_TIFF
    if not masks_tiff.is_file():
        meta = plan.store.read_meta()
        masks = np.load(plan.store.masks_path, mmap_mode="r", allow_pickle=False)
        write_label_tiff(masks_tiff, masks[0] if meta.get("is_2d") else masks, meta.get("pixel_size_nm"))


def run_plans(
    plans: Sequence[InputPlan],
    spec: DetectorSpec,
    executor,
    on_error: ErrorHandler | None,
    failures: list[str],
    progress: bool,
) -> tuple[list[InputPlan], int]:
    """Run the pending frames of all inputs. Returns the complete inputs and the frames detected."""
    from tqdm.auto import tqdm

    remaining = {plan.source: len(plan.pending) for plan in plans}
    by_source = {plan.source: plan for plan in plans}
    failed: set[Path] = set()
    detected = 0

    def finish(plan: InputPlan) -> None:
        try:
            assemble_plan(plan)
        except InputError as exc:
            failed.add(plan.source)
            fail(str(exc), on_error, failures)

    for plan in plans:
        if not plan.pending:
            finish(plan)
    tasks = [task for plan in plans for task in plan.pending]
    total = sum(plan.n_frames for plan in plans)
    with tqdm(
        total=total, initial=total - len(tasks), unit="frame", desc="detect", disable=not progress
    ) as bar:
        for outcome in executor.map_unordered(functools.partial(run_frame_task, spec), tasks):
            bar.update(1)
            source = outcome.task.source
            if outcome.error is None:
                detected += 1
                remaining[source] -= 1
                if remaining[source] == 0 and source not in failed:
                    finish(by_source[source])
            elif source not in failed:
                failed.add(source)
                fail(outcome.error, on_error, failures, outcome.out_of_resources)
    complete = [plan for plan in plans if remaining[plan.source] == 0 and plan.source not in failed]
    return complete, detected
