"""Batch mode without Qt: detect over files and folders into a resumable store, score the store with
a quality forest, evaluate it against ground truth; serially, on local processes or on a Dask cluster.

One store folder per input file under the output folder::

    <out>/<stem>/meta.json          source, n_frames, image_shape, pixel_size_nm, detector, score_threshold
    <out>/<stem>/frames/000123.npz  one frame: labels, boxes, scores, circularity
    <out>/<stem>/detections.csv     every detection, once all frames are done
    <out>/<stem>/masks.npy          (T, Y, X) instance masks in the smallest unsigned dtype

Every file is written under a temporary name in its folder and renamed into place, so an interrupted
run leaves no half-written file, and a rerun detects only the frames that are missing.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import __version__
from .atomic import atomic_path
from .coco import CocoGroundTruth
from .detections import FrameDetections, StackDetections, smallest_label_dtype
from .engines import DEFAULT_MAX_DETECTIONS, DEFAULT_SCORE_THRESHOLD, Detector, load_detector
from .features import (
    CANDIDATE_FEATURES,
    PAPER_FEATURES,
    SCORE_BIN_NAMES,
    clipped_box_areas,
    mask_circularities,
    score_bin_index,
)
from .forest import TARGETS, ForestLoadError, QualityForest, bundled_forest_for
from .io import InputError, describe, list_inputs, read_frame, read_frames
from .matching import PAPER_IOU_THRESHOLD, boxes_from_labels, match_frame
from .pixel_sizes import match_pixel_sizes, read_pixel_size_table
from .sample_data import SAMPLE_FRAME_PRESETS, _sample_stack_arrays
from .scoring import QUALITY_COLUMNS, TRUE_COLUMNS, ground_truth_frames, predicted_quality, true_quality

DETECTION_COLUMNS = ("frame", "label", "y_min", "x_min", "y_max", "x_max", "score", "circularity")
BOX_COLUMNS = ["y_min", "x_min", "y_max", "x_max"]
FRAME_ARRAYS = ("labels", "boxes", "scores", "circularity")

ErrorHandler = Callable[[str], None]
# pandas 3 parses floats exactly by default and deprecates the option older versions need for it
EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


# -- atomic files ----------------------------------------------------------------------------------
def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2))


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


# -- the detector, once per process ----------------------------------------------------------------
@dataclass(frozen=True)
class DetectorSpec:
    """How to load a detector; hashable, so each process keeps one loaded model per spec."""

    model: str = "default"
    config: str | None = None
    device: str = "auto"
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    max_detections: int = DEFAULT_MAX_DETECTIONS

    def load(self) -> Detector:
        spec = self.model if self.config is None else (self.config, self.model)
        return load_detector(
            spec, device=self.device, score_threshold=self.score_threshold, max_detections=self.max_detections
        )


_loaded_detectors: dict[DetectorSpec, Detector] = {}


def cached_detector(spec: DetectorSpec) -> Detector:
    """The detector for ``spec``, loaded on first use in this process (a Dask worker loads it once)."""
    if spec not in _loaded_detectors:
        _loaded_detectors[spec] = spec.load()
    return _loaded_detectors[spec]


# -- the store -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Store:
    """The detections of one input file, in the folder layout described in this module's docstring."""

    root: Path

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def table_path(self) -> Path:
        return self.root / "detections.csv"

    @property
    def masks_path(self) -> Path:
        return self.root / "masks.npy"

    def frame_path(self, index: int) -> Path:
        return self.frames_dir / f"{index:06d}.npz"

    @property
    def is_complete(self) -> bool:
        return self.table_path.is_file() and self.masks_path.is_file()

    def read_meta(self) -> dict:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.root}: not a detections folder (meta.json unreadable: {exc})") from exc

    def read_table(self) -> pd.DataFrame:
        """detections.csv with exact floats (boxes and scores round-trip bit for bit)."""
        if not self.is_complete:
            raise InputError(f"{self.root}: detection is not finished; rerun `napari-detection-qc detect`")
        dtypes = {name: np.float64 for name in DETECTION_COLUMNS} | {"frame": np.int64, "label": np.int64}
        try:
            return pd.read_csv(self.table_path, dtype=dtypes, **EXACT_FLOATS)
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.table_path}: unreadable detections table ({exc})") from exc


def store_detections(store: Store) -> tuple[str, StackDetections]:
    """A finished store's input file name and detections (masks memory-mapped, frame by frame)."""
    meta = store.read_meta()
    table = store.read_table()
    masks = np.load(store.masks_path, mmap_mode="r", allow_pickle=False)
    starts = np.searchsorted(table["frame"].to_numpy(), np.arange(len(masks) + 1))  # ordered by frame
    boxes, scores = table[BOX_COLUMNS].to_numpy(), table["score"].to_numpy()
    frames = [
        FrameDetections(boxes[starts[t] : starts[t + 1]], scores[starts[t] : starts[t + 1]], masks[t])
        for t in range(len(masks))
    ]
    return Path(meta["source"]).name, StackDetections.from_frames(frames, is_2d=bool(meta.get("is_2d")))


def find_stores(path) -> list[Store]:
    """A store folder itself, or a ``detect`` output folder holding one store per input."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return [Store(path)]
    stores = [Store(p.parent) for p in sorted(path.glob("*/meta.json"))] if path.is_dir() else []
    if not stores:
        raise InputError(f"{path}: no detections here (expected the output folder of `detect`)")
    return stores


def write_frame(path: Path, detections: FrameDetections) -> None:
    """One frame's detections with the masks' Heywood circularity, computed once here."""
    circularity = mask_circularities(detections.labels, np.arange(1, detections.count + 1))
    labels = detections.labels.astype(smallest_label_dtype(detections.count), copy=False)
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(
                handle,
                labels=labels,
                boxes=detections.boxes,
                scores=detections.scores,
                circularity=circularity,
            )


def frame_is_done(path: Path) -> bool:
    """The frame's file exists and opens with all its arrays (a damaged file is redone)."""
    try:
        with np.load(path, allow_pickle=False) as frame:
            return set(FRAME_ARRAYS) <= set(frame.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def assemble(store: Store, n_frames: int, image_shape: Sequence[int]) -> None:
    """Join the frame files into detections.csv and masks.npy; the masks go frame by frame into a
    memory-mapped file, so a long series never needs all its masks in memory."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in DETECTION_COLUMNS}
    max_count = 0
    for t in range(n_frames):
        with np.load(store.frame_path(t), allow_pickle=False) as frame:
            boxes, scores = frame["boxes"].reshape(-1, 4), frame["scores"]
            count = len(scores)
            columns["frame"].append(np.full(count, t, dtype=np.int64))
            columns["label"].append(np.arange(1, count + 1, dtype=np.int64))
            for j, name in enumerate(BOX_COLUMNS):
                columns[name].append(boxes[:, j])
            columns["score"].append(scores)
            columns["circularity"].append(frame["circularity"])
        max_count = max(max_count, count)
    write_csv(
        store.table_path, pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})
    )
    with atomic_path(store.masks_path) as temporary:
        masks = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=smallest_label_dtype(max_count), shape=(n_frames, *image_shape)
        )
        for t in range(n_frames):
            with np.load(store.frame_path(t), allow_pickle=False) as frame:
                masks[t] = frame["labels"]
        masks.flush()
        del masks


# -- detection jobs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameTask:
    """One frame to detect: workers read it from ``source`` themselves and write ``target``."""

    source: Path
    index: int
    target: Path
    detector: DetectorSpec


@dataclass(frozen=True)
class FrameOutcome:
    task: FrameTask
    count: int
    error: str | None = None


def run_frame_task(task: FrameTask) -> FrameOutcome:
    """Read, detect and store one frame; the same function runs serially and on Dask workers.
    Input problems come back as the outcome's ``error`` so the caller decides whether to go on."""
    detector = cached_detector(task.detector)
    try:
        detections = detector.predict(read_frame(task.source, task.index))
    except InputError as exc:
        return FrameOutcome(task, 0, str(exc))
    except ValueError as exc:  # frames no detector takes: NaN pixels, boolean images, ...
        return FrameOutcome(task, 0, f"{task.source}: frame {task.index}: {exc}")
    write_frame(task.target, detections)
    return FrameOutcome(task, detections.count)


@dataclass
class InputPlan:
    """One input file: its store and the frames still to detect."""

    source: Path
    store: Store
    n_frames: int
    image_shape: tuple[int, int]
    pending: list[FrameTask]

    def assemble(self) -> None:
        """Write the store's detections.csv and masks.npy unless an earlier run already did."""
        if not self.store.is_complete:
            assemble(self.store, self.n_frames, self.image_shape)


def store_names(paths: Sequence[Path]) -> list[str]:
    """Store folder per input: the file's stem, or its full name where two inputs share a stem."""
    stems = Counter(p.stem for p in paths)
    return [p.stem if stems[p.stem] == 1 else p.name for p in paths]


def plan_input(
    source: Path, root: Path, spec: DetectorSpec, detector_meta: dict, pixel_size_nm: float | None = None
) -> InputPlan:
    """Describe the input, write (or check) its store's meta.json and list the frames not yet done.
    A store made by another detector, or for another input, is refused rather than mixed.
    ``pixel_size_nm`` (from a pixel-size table) replaces the one the file records."""
    info = describe(source)
    store = Store(root)
    meta = {
        "source": str(source.resolve()),
        "n_frames": info.n_frames,
        "image_shape": list(info.frame_shape),
        "is_2d": info.is_2d,
        "pixel_size_nm": pixel_size_nm or info.pixel_size_nm,
        "detector": detector_meta,
        "score_threshold": spec.score_threshold,
        "created_by": f"napari-detection-qc {__version__}",
    }
    if store.meta_path.is_file():
        previous = store.read_meta()
        identity = ("source", "n_frames", "image_shape", "detector")
        if any(previous.get(key) != json.loads(json.dumps(meta[key])) for key in identity):
            raise InputError(
                f"{store.root} holds detections of another input or detector than {source}; "
                "choose another output folder or delete this one"
            )
    store.frames_dir.mkdir(parents=True, exist_ok=True)
    for stale in store.root.glob("**/.*.tmp"):  # left by a killed process; never a finished file
        stale.unlink(missing_ok=True)
    write_json(store.meta_path, meta)
    frames = [] if store.is_complete else range(info.n_frames)  # a finished input needs no frame checks
    pending = [
        FrameTask(source, t, store.frame_path(t), spec)
        for t in frames
        if not frame_is_done(store.frame_path(t))
    ]
    return InputPlan(source, store, info.n_frames, info.frame_shape, pending)


@dataclass
class DetectReport:
    stores: list[Path]
    failures: list[str]
    detected_frames: int
    skipped_frames: int


def _fail(message: str, on_error: ErrorHandler | None, failures: list[str]) -> None:
    """Stop (no handler) or report the failure and go on (``--keep-going``)."""
    if on_error is None:
        raise InputError(message)
    failures.append(message)
    on_error(message)


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
    Without ``on_error`` the first unreadable file stops the run with an :class:`InputError`.
    ``pixel_size_table``: a CSV of per-image pixel sizes (``pixel_sizes``) overriding the files'."""
    table = read_pixel_size_table(pixel_size_table) if pixel_size_table is not None else {}
    failures: list[str] = []
    sources: list[Path] = []
    for path in inputs:
        try:
            sources.extend(list_inputs(path))
        except InputError as exc:
            _fail(str(exc), on_error, failures)
    pixel_sizes = match_pixel_sizes(table, sources, str(pixel_size_table)) if table else {}
    detector_meta = cached_detector(spec).metadata()
    plans: list[InputPlan] = []
    for source, name in zip(sources, store_names(sources)):
        try:
            plans.append(plan_input(source, Path(out_dir) / name, spec, detector_meta, pixel_sizes.get(source)))
        except InputError as exc:
            _fail(str(exc), on_error, failures)
    complete, detected = run_plans(plans, executor, on_error, failures, progress)
    skipped = sum(plan.n_frames - len(plan.pending) for plan in plans)
    return DetectReport([plan.store.root for plan in complete], failures, detected, skipped)


def run_plans(
    plans: Sequence[InputPlan], executor, on_error: ErrorHandler | None, failures: list[str], progress: bool
) -> tuple[list[InputPlan], int]:
    """Run the pending frames of all inputs; each input is assembled as soon as its last frame is
    stored, so an interrupted run keeps every input it finished. Returns the complete inputs and
    the number of frames detected."""
    remaining = {plan.source: len(plan.pending) for plan in plans}
    by_source = {plan.source: plan for plan in plans}
    failed: set[Path] = set()
    detected = 0
    for plan in plans:
        if not plan.pending:
            plan.assemble()
    tasks = [task for plan in plans for task in plan.pending]
    total = sum(plan.n_frames for plan in plans)
    with tqdm(
        total=total, initial=total - len(tasks), unit="frame", desc="detect", disable=not progress
    ) as bar:
        for outcome in executor.map_unordered(run_frame_task, tasks):
            bar.update(1)
            source = outcome.task.source
            if outcome.error is None:
                detected += 1
                remaining[source] -= 1
                if remaining[source] == 0 and source not in failed:
                    by_source[source].assemble()
            elif source not in failed:
                failed.add(source)
                _fail(outcome.error, on_error, failures)
    complete = [plan for plan in plans if remaining[plan.source] == 0 and plan.source not in failed]
    return complete, detected


# -- where frames run ------------------------------------------------------------------------------
class SerialExecutor:
    """Tasks one after the other in this process: the reference every parallel run must equal."""

    def map_unordered(self, function, tasks):
        for task in tasks:
            yield function(task)


class DaskExecutor:
    """Tasks on a Dask cluster, results in the order they finish."""

    def __init__(self, client):
        self.client = client

    def map_unordered(self, function, tasks):
        from dask.distributed import as_completed

        if not tasks:
            return
        for future in as_completed(self.client.map(function, tasks, pure=False)):
            yield future.result()


@contextmanager
def open_executor(workers: int = 1, scheduler: str | None = None):
    """Serial for one worker; a local process cluster for ``workers`` > 1; an existing cluster
    at ``scheduler``. Leaving the block shuts a local cluster down and cancels unfinished work.
    Workers run torch on one thread each; their detections equal a serial run's bit for bit when
    that run also uses one thread, and to float rounding (about 1e-5 px) otherwise."""
    if scheduler is None and workers <= 1:
        yield SerialExecutor()
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError("--workers and --scheduler need Dask: pip install 'dask[distributed]'") from exc

    if scheduler is not None:
        with Client(scheduler) as client:
            yield DaskExecutor(client)
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield DaskExecutor(client)


# -- features and predicted quality from the detections table --------------------------------------
def _per_frame_mean_std(
    frames: np.ndarray, values: np.ndarray, n_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mean and population std (two-pass, as numpy's), 0 for frames without values."""
    counts = np.bincount(frames, minlength=n_frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, np.bincount(frames, values, n_frames) / counts, 0.0)
        deviation = values - mean[frames]
        variance = np.where(counts > 0, np.bincount(frames, deviation * deviation, n_frames) / counts, 0.0)
    return mean, np.sqrt(variance)


def table_features(detections: pd.DataFrame, n_frames: int, image_shape: Sequence[int]) -> pd.DataFrame:
    """The 18 candidate features of every frame at once from a detections table (the columns of
    detections.csv); equal, frame by frame, to ``features.frame_features``. Vectorized with
    ``np.bincount`` so long series score at thousands of frames per second."""
    frames = detections["frame"].to_numpy(dtype=np.int64)
    if len(frames) and (frames.min() < 0 or frames.max() >= n_frames):
        raise ValueError(f"detections refer to frames outside 0..{n_frames - 1}")
    scores = detections["score"].to_numpy(dtype=np.float64)
    boxes = detections[BOX_COLUMNS].to_numpy(dtype=np.float64)
    circularity = detections["circularity"].to_numpy(dtype=np.float64)
    image_area = float(image_shape[0] * image_shape[1])

    counts = np.bincount(frames, minlength=n_frames)
    out = pd.DataFrame(0.0, index=pd.RangeIndex(n_frames, name="frame"), columns=list(CANDIDATE_FEATURES))

    bins = score_bin_index(scores)
    binned = bins >= 0
    bin_counts = np.bincount(frames[binned] * 9 + bins[binned], minlength=9 * n_frames).reshape(n_frames, 9)
    out[list(SCORE_BIN_NAMES)] = bin_counts / np.maximum(counts, 1)[:, None]  # empty frames stay 0

    areas = clipped_box_areas(boxes, image_shape)
    sizes = areas / image_area
    out["area_ratio"] = np.bincount(frames, sizes, n_frames)
    out["mean_score"], out["std_score"] = _per_frame_mean_std(frames, scores, n_frames)
    out["mean_size"], out["std_size"] = _per_frame_mean_std(frames, sizes, n_frames)
    finite = np.isfinite(circularity)
    out["mean_circularity"], out["std_circularity"] = _per_frame_mean_std(
        frames[finite], circularity[finite], n_frames
    )
    out["count"] = counts.astype(np.float64)
    total_area = np.bincount(frames, areas, n_frames)
    weighted = np.bincount(frames, areas * scores, n_frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["image_confidence"] = np.where(total_area > 0, weighted / total_area, 0.0)
    return out


def forest_name(choice: str, detector_meta: dict | None) -> str:
    """``auto`` is the bundled forest that belongs to the detector; ``default``, ``li2025`` and
    paths are taken as they are (``QualityForest.load`` knows them all)."""
    return bundled_forest_for(detector_meta) if choice == "auto" else choice


def score_store(store: Store, forest: QualityForest) -> pd.DataFrame:
    """Predicted F1/precision/recall with intervals and the in-domain flag for every frame."""
    meta = store.read_meta()
    n_frames = int(meta["n_frames"])
    features = table_features(store.read_table(), n_frames, meta["image_shape"])
    predicted = forest.predict(features)
    table = predicted.assign(frame=np.arange(n_frames), count=features["count"].astype(np.int64).to_numpy())
    table = table.loc[:, list(QUALITY_COLUMNS)].reset_index(drop=True)
    table.insert(0, "source", meta["source"])
    return table


def score_stores(
    stores: Sequence[Store], forest_choice: str, *, warn: ErrorHandler, on_error: ErrorHandler | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Score every store (a forest is loaded once per choice); warns when a forest was trained for
    another detector than the store's. Returns the joined table and the failures."""
    forests: dict[str, QualityForest] = {}
    tables, failures, warned = [], [], set()
    for store in stores:
        try:
            detector_meta = store.read_meta().get("detector")
            name = forest_name(forest_choice, detector_meta)
            if name not in forests:
                forests[name] = QualityForest.load(name)
            mismatch = forests[name].detector_mismatch(detector_meta)
            if mismatch and mismatch not in warned:
                warned.add(mismatch)
                warn(mismatch)
            tables.append(score_store(store, forests[name]))
        except InputError as exc:
            _fail(str(exc), on_error, failures)
    columns = ["source", *QUALITY_COLUMNS]
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)), failures


# -- true quality against ground truth -------------------------------------------------------------
def ground_truth_file(store: Store, ground_truth: Path, by_stem: dict[str, Path] | None) -> Path:
    """The store's ground truth: the given file, or the file of a folder (``by_stem``) whose stem
    is the stem of the store's input."""
    if by_stem is None:
        return ground_truth
    stem = Path(store.read_meta()["source"]).stem
    if stem not in by_stem:
        raise InputError(f"{ground_truth}: no ground truth named {stem}.* for {store.root}")
    return by_stem[stem]


def read_ground_truth(truth: Path | CocoGroundTruth, meta: dict, sole_input: bool) -> np.ndarray:
    """A store's ground truth: a Labels file, or the images of the store's input in a COCO file."""
    if isinstance(truth, CocoGroundTruth):
        name = Path(meta["source"]).name
        return truth.stack_labels(name, int(meta["n_frames"]), meta["image_shape"], sole_input)
    return read_frames(truth)[0]


def evaluate_store(
    store: Store,
    truth_file: Path | CocoGroundTruth,
    iou_threshold: float = PAPER_IOU_THRESHOLD,
    with_features: bool = False,
    sole_input: bool = True,
) -> pd.DataFrame:
    """The paper's TP/FP/FN, precision, recall and F1 of every frame (``scoring.true_quality``'s
    numbers, from the stored boxes), optionally next to the frame's 18 features for fit-forest.
    ``sole_input``: the ground truth is about this store's input only (see ``coco``)."""
    meta = store.read_meta()
    n_frames, image_shape = int(meta["n_frames"]), tuple(meta["image_shape"])
    truth_name = getattr(truth_file, "path", truth_file)
    try:
        truth = ground_truth_frames(read_ground_truth(truth_file, meta, sole_input), n_frames)
    except InputError:
        raise
    except ValueError as exc:  # not a Labels stack, or not one of this many frames
        raise InputError(f"{truth_name}: {exc}") from exc
    if truth.shape[1:] != image_shape:
        raise InputError(
            f"{truth_name}: ground truth frames are {truth.shape[1:]} but detections are {image_shape}"
        )
    table = store.read_table()
    frames = table["frame"].to_numpy()
    boxes = table[BOX_COLUMNS].to_numpy()
    starts = np.searchsorted(frames, np.arange(n_frames + 1))  # the table is ordered by frame
    rows = []
    for t in range(n_frames):
        true_boxes, _ = boxes_from_labels(truth[t])
        predicted = boxes[starts[t] : starts[t + 1]]
        result = match_frame(predicted, true_boxes, iou_threshold)
        rows.append({"frame": t, "n_true": len(true_boxes), "n_pred": len(predicted), **result._asdict()})
    quality = pd.DataFrame(rows, columns=list(TRUE_COLUMNS))
    if with_features:
        features = table_features(table, n_frames, image_shape).reset_index(drop=True)
        quality = pd.concat([quality, features], axis=1)
    quality.insert(0, "source", meta["source"])
    return quality


def evaluate_stores(
    stores: Sequence[Store],
    ground_truth,
    *,
    iou_threshold: float = PAPER_IOU_THRESHOLD,
    with_features: bool = False,
    on_error: ErrorHandler | None = None,
    category: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Evaluate each store against its ground truth: a Labels file, a folder of them named like
    the inputs, or a COCO JSON file (``category`` picks one of its categories). Returns the
    joined table and the failures."""
    ground_truth = Path(ground_truth)
    coco = CocoGroundTruth.load(ground_truth, category) if ground_truth.suffix.lower() == ".json" else None
    by_stem = {p.stem: p for p in list_inputs(ground_truth)} if ground_truth.is_dir() else None
    if coco is None and by_stem is None and len(stores) != 1:
        raise InputError(f"{ground_truth}: one ground-truth file for {len(stores)} inputs; pass a folder")
    failures: list[str] = []
    tables = []
    for store in stores:
        try:
            truth_file = coco or ground_truth_file(store, ground_truth, by_stem)
            tables.append(evaluate_store(store, truth_file, iou_threshold, with_features, len(stores) == 1))
        except InputError as exc:
            _fail(str(exc), on_error, failures)
    columns = ["source", *TRUE_COLUMNS, *(CANDIDATE_FEATURES if with_features else ())]
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)), failures


# -- forest fitting from a training table ----------------------------------------------------------
def feature_selection(choice: str) -> tuple[str, ...]:
    """``paper`` (the paper's final 8), ``all`` (the 18 candidates) or a comma-separated list."""
    if choice == "paper":
        return PAPER_FEATURES
    if choice == "all":
        return CANDIDATE_FEATURES
    names = tuple(name.strip() for name in choice.split(",") if name.strip())
    unknown = [name for name in names if name not in CANDIDATE_FEATURES]
    if unknown or not names:
        raise ValueError(
            f"unknown features {unknown or choice!r}; choose from {', '.join(CANDIDATE_FEATURES)}"
        )
    return names


def read_training_table(path, features: Sequence[str]) -> pd.DataFrame:
    """A training CSV (feature columns + f1, precision, recall), e.g. ``evaluate --with-features``."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable training table ({exc})") from exc
    missing = [c for c in (*features, *TARGETS) if c not in table.columns]
    if missing:
        raise InputError(f"{path}: the training table lacks columns {missing}")
    values = table[[*features, *TARGETS]].apply(pd.to_numeric, errors="coerce").to_numpy()
    if not np.all(np.isfinite(values)):
        raise InputError(f"{path}: the training table holds empty or non-numeric values")
    return table


# -- the demo --------------------------------------------------------------------------------------
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
    """The whole loop on the bundled synthetic stack: detect, predict quality, compare with the truth.
    A missing forest still gives the true quality, with a note why there is no prediction."""
    images, truth = _sample_stack_arrays()
    n = len(images) if n_frames is None else max(1, min(int(n_frames), len(images)))
    detector = cached_detector(spec)
    frames = tqdm(
        detector.predict_many(images[:n]), total=n, unit="frame", desc="detect", disable=not progress
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
