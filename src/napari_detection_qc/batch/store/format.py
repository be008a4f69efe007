"""The batch store: the detections of one input file in one folder under ``--out``::

    <out>/<name>/meta.json          source, its fingerprint, n_frames, image_shape, pixel_size_nm,
                                    detector, score_threshold
    <out>/<name>/frames/000123.npz  one frame: labels, boxes, scores, circularity (and signal_*
                                    arrays when detected with --signals)
    <out>/<name>/detections.csv     every detection (with its p_true), once all frames are done
    <out>/<name>/frames.csv         per frame: detections, object_size_px (the typical object
                                    diameter it was detected at; empty where not sized)
    <out>/<name>/signals.npz        the detector's signals of every frame (``signals.py``), only
                                    when detected with --signals: one value per frame for each
                                    TTA signal and signal_seconds, (T, D) embeddings; NaN where a
                                    frame has none (an empty or constant frame has no embedding)
    <out>/<name>/masks.npy          (T, Y, X) instance masks in the smallest unsigned dtype

Every file is written under a temporary name in its folder and renamed into place, so an interrupted
run leaves no half-written file. Reading validates what it reads, so a damaged or edited store is an
:class:`InputError` naming the file, never a crash further on.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from napari_detection_qc.detections.records import FrameDetections, StackDetections, smallest_label_dtype
from napari_detection_qc.io import InputError
from napari_detection_qc.io.atomic import atomic_path
from napari_detection_qc.quality.features import BOX_COLUMNS, mask_circularities
from napari_detection_qc.quality.p_true import detection_p_true
from napari_detection_qc.quality.signals import EMBEDDING, SIGNAL_SECONDS, TTA_SIGNALS
from napari_detection_qc.validation import (
    DETECTOR_DESCRIPTION,
    Flag,
    Int,
    InvalidFileError,
    Maybe,
    Real,
    Record,
    Seq,
    Text,
    one_line,
    parsing,
    read_json,
    require_regular_file,
    validate,
)

DETECTION_COLUMNS = ("frame", "label", *BOX_COLUMNS, "score", "circularity")
P_TRUE = "p_true"
"""detections.csv's last column: each detection's probability of being a real object (``p_true``);
written by this version, not required of stores written before it."""
FRAME_ARRAYS = ("labels", "boxes", "scores", "circularity")
SIGNAL_PREFIX = "signal_"
OBJECT_SIZE = "object_size_px"
SCALAR_SIGNALS = (*TTA_SIGNALS, SIGNAL_SECONDS)
# pandas 3 parses floats exactly by default and deprecates the option older versions need for it
EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2))


def write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


MAX_STORE_FRAMES = 10**6
MAX_FRAME_SIDE = 1 << 17
META = Record(
    {
        "source": Text(),
        "n_frames": Int(1, MAX_STORE_FRAMES),
        "image_shape": Seq(Int(1, MAX_FRAME_SIDE), 2, 2),
        "is_2d": Flag(),
        "pixel_size_nm": Maybe(Real(0.0, 1e9, open_low=True)),
        "detector": DETECTOR_DESCRIPTION,
        "score_threshold": Real(0.0, 1.0),
        "signals": Text(("none", "cheap", "all")),
        "fingerprint": Record({}),
    },
    optional=frozenset({"is_2d", "pixel_size_nm", "score_threshold", "signals", "fingerprint"}),
)
MAX_META_BYTES = 1 << 20


def read_store_meta(path: Path) -> dict:
    """A store's meta.json, every field the product reads inside its type and range; anything else
    is one :class:`InvalidFileError` naming the file and the field."""
    return validate(read_json(path, "detections folder's meta.json", MAX_META_BYTES), META, path, "meta.json")


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

    @property
    def signals_path(self) -> Path:
        return self.root / "signals.npz"

    @property
    def frames_table_path(self) -> Path:
        return self.root / "frames.csv"

    def object_sizes(self) -> dict[int, float | None]:
        """Each frame's object size (native px; None where not sized), from frames.csv; empty
        for a store written before it existed."""
        if not self.frames_table_path.is_file():
            return {}
        try:
            table = pd.read_csv(self.frames_table_path)
            return {
                int(t): None if pd.isna(s) else float(s) for t, s in zip(table["frame"], table[OBJECT_SIZE])
            }
        except (ValueError, KeyError, pd.errors.ParserError) as exc:
            raise InputError(f"{self.frames_table_path}: damaged per-frame table ({exc})") from exc

    def frame_path(self, index: int) -> Path:
        return self.frames_dir / f"{index:06d}.npz"

    @property
    def is_complete(self) -> bool:
        return self.table_path.is_file() and self.masks_path.is_file()

    def read_meta(self) -> dict:
        """meta.json checked (``read_store_meta``) and, where the masks are written, checked against
        their shape: a meta.json claiming more frames than the store holds is refused."""
        meta = read_store_meta(self.meta_path)
        if self.masks_path.is_file():
            expected = (meta["n_frames"], *meta["image_shape"])
            shape = self.masks_shape()
            if shape != expected:
                raise InputError(
                    f"{self.masks_path}: damaged masks: shape {shape} but meta.json's n_frames and image_shape "
                    f"say {expected}"
                )
        return meta

    def masks_shape(self) -> tuple[int, ...]:
        """masks.npy's shape from its header (nothing is read into memory)."""
        try:
            with open(require_regular_file(self.masks_path, "masks file"), "rb") as handle:
                major, _ = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read_header(handle)
        except (OSError, ValueError, SyntaxError, TypeError, EOFError) as exc:
            raise InputError(f"{self.masks_path}: unreadable masks ({one_line(exc, 200)})") from exc
        return tuple(shape)

    def read_table(self, n_frames: int) -> pd.DataFrame:
        """detections.csv with exact floats (boxes and scores round-trip bit for bit), checked
        against the store: every column present, frames in range, finite boxes, scores in [0, 1]."""
        if not self.is_complete:
            raise InputError(f"{self.root}: detection is not finished; rerun `napari-detection-qc detect`")
        return read_detection_table(self.table_path, n_frames)

    def read_signals(self, n_frames: int) -> list[dict] | None:
        """Each frame's signals as ``Detector.predict(..., signals=)`` gave them, or None for a
        store detected without signals (or before they existed); checked like the table."""
        if not self.signals_path.is_file():
            return None
        try:
            with np.load(self.signals_path, allow_pickle=False) as stored:
                arrays = {name: np.asarray(stored[name], dtype=np.float64) for name in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{self.signals_path}: unreadable signals ({exc})") from exc
        problem = signal_arrays_problem(arrays, n_frames)
        if problem:
            raise InputError(f"{self.signals_path}: damaged signals: {problem}")
        records: list[dict] = [{} for _ in range(n_frames)]
        for name, values in arrays.items():
            for record, value in zip(records, values):
                if name == EMBEDDING:
                    if np.isfinite(value).all():
                        record[name] = value.astype(np.float32)
                elif np.isfinite(value):
                    record[name] = float(value)
        return records


def read_detection_table(path: Path, n_frames: int) -> pd.DataFrame:
    """detections.csv with exact floats (boxes and scores round-trip bit for bit), checked against
    the store: every column present, frames in range, labels 1..count once per frame, finite
    boxes and circularities (NaN allowed: a mask too small to measure), scores in [0, 1]."""
    with parsing(path, "detections table"):
        table = pd.read_csv(require_regular_file(path, "detections table"), dtype=np.float64, **EXACT_FLOATS)
        missing = [name for name in DETECTION_COLUMNS if name not in table.columns]
        if missing:
            raise InvalidFileError(f"{path}: damaged detections table: no columns {missing}")
        values = table[list(DETECTION_COLUMNS)].to_numpy(np.float64)
        frames, labels = values[:, 0], values[:, 1]
        boxes, scores, circularity = values[:, 2:6], values[:, 6], values[:, 7]
        if not (
            np.isfinite(frames).all()
            and (frames == np.round(frames)).all()
            and ((frames >= 0) & (frames < n_frames)).all()
        ):
            raise InvalidFileError(
                f"{path}: damaged detections table: frames not integers in 0..{n_frames - 1}"
            )
        if not (
            np.isfinite(labels).all()
            and (labels == np.round(labels)).all()
            and ((labels >= 1) & (labels <= 1 << 31)).all()
        ):
            raise InvalidFileError(f"{path}: damaged detections table: labels not positive integers")
        if not (np.isfinite(boxes).all() and (np.abs(boxes) <= 1e9).all()):
            raise InvalidFileError(f"{path}: damaged detections table: non-finite or absurd boxes")
        if not ((scores >= 0) & (scores <= 1)).all() or np.isinf(circularity).any():
            raise InvalidFileError(
                f"{path}: damaged detections table: scores outside [0, 1] or infinite circularity"
            )
        table["frame"], table["label"] = frames.astype(np.int64), labels.astype(np.int64)
        if table.duplicated(["frame", "label"]).any():
            raise InvalidFileError(f"{path}: damaged detections table: a label appears twice in one frame")
    return table


def signal_arrays_problem(arrays: dict[str, np.ndarray], n_frames: int) -> str | None:
    """What is wrong with a signals.npz's arrays, or None."""
    unknown = sorted(set(arrays) - {*SCALAR_SIGNALS, EMBEDDING})
    if unknown:
        return f"unknown arrays {unknown}"
    for name, values in arrays.items():
        expected_ndim = 2 if name == EMBEDDING else 1
        if values.ndim != expected_ndim or len(values) != n_frames:
            return f"{name} of shape {values.shape} for {n_frames} frames"
        if np.isinf(values).any() or (
            name in TTA_SIGNALS and not (np.isnan(values) | (values >= 0) & (values <= 1)).all()
        ):
            return f"{name} holds values out of range"
    return None


def boxes_by_frame(table: pd.DataFrame, n_frames: int) -> list[np.ndarray]:
    """Each frame's boxes in label order, whatever the order of the table's rows."""
    order = np.lexsort((table["label"].to_numpy(), table["frame"].to_numpy()))
    frames = table["frame"].to_numpy()[order]
    boxes = table[list(BOX_COLUMNS)].to_numpy()[order]
    starts = np.searchsorted(frames, np.arange(n_frames + 1))
    return [boxes[starts[t] : starts[t + 1]] for t in range(n_frames)]


def store_detections(store: Store) -> tuple[str, StackDetections]:
    """A finished store's input file name and detections (masks memory-mapped, read frame by frame)."""
    meta = store.read_meta()
    n_frames, image_shape = meta["n_frames"], tuple(meta["image_shape"])
    table = store.read_table(n_frames).sort_values(["frame", "label"], kind="stable")
    try:
        masks = np.load(store.masks_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{store.masks_path}: unreadable masks ({exc})") from exc
    if masks.shape != (n_frames, *image_shape) or not np.issubdtype(masks.dtype, np.integer):
        raise InputError(
            f"{store.masks_path}: damaged masks: {masks.dtype} {masks.shape}, expected ({n_frames}, "
            f"{image_shape[0]}, {image_shape[1]}) integer labels"
        )
    starts = np.searchsorted(table["frame"].to_numpy(), np.arange(n_frames + 1))
    boxes, scores = table[list(BOX_COLUMNS)].to_numpy(), table["score"].to_numpy()
    try:
        frames = [
            FrameDetections(boxes[starts[t] : starts[t + 1]], scores[starts[t] : starts[t + 1]], masks[t])
            for t in range(n_frames)
        ]
    except ValueError as exc:  # masks holding more objects than the table
        raise InputError(f"{store.root}: masks and detections table disagree ({exc})") from exc
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


def write_frame(path: Path, detections: FrameDetections, object_size_px: float | None = None) -> None:
    """One frame's detections with the masks' Heywood circularity, computed once here, and the
    object size they were detected at."""
    circularity = mask_circularities(detections.labels, np.arange(1, detections.count + 1))
    labels = detections.labels.astype(smallest_label_dtype(detections.count), copy=False)
    signals = {f"{SIGNAL_PREFIX}{name}": np.asarray(value) for name, value in detections.signals.items()}
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(
            handle,
            labels=labels,
            boxes=detections.boxes,
            scores=detections.scores,
            circularity=circularity,
            **{OBJECT_SIZE: np.float64(np.nan if object_size_px is None else object_size_px)},
            **signals,
        )


def frame_is_done(path: Path) -> bool:
    """The frame's file exists and opens with all its arrays (a damaged file is redone)."""
    try:
        with np.load(path, allow_pickle=False) as frame:
            return set(FRAME_ARRAYS) <= set(frame.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def assemble(store: Store, n_frames: int, image_shape: Sequence[int]) -> None:
    """Join the frame files into detections.csv and masks.npy. The masks are written frame by
    frame with ordinary writes (not a memory map), so a long series never needs all its masks in
    memory and a full disk is an ``OSError`` (ENOSPC), not a Bus error."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in (*DETECTION_COLUMNS, P_TRUE)}
    signals: list[dict[str, np.ndarray]] = []
    counts: list[int] = []
    sizes: list[float] = []
    for t in range(n_frames):
        with np.load(store.frame_path(t), allow_pickle=False) as frame:
            signals.append(
                {
                    name[len(SIGNAL_PREFIX) :]: frame[name]
                    for name in frame.files
                    if name.startswith(SIGNAL_PREFIX)
                }
            )
            boxes, scores = frame["boxes"].reshape(-1, 4), frame["scores"]
            sizes.append(float(frame[OBJECT_SIZE]) if OBJECT_SIZE in frame.files else np.nan)
            count = len(scores)
            counts.append(count)
            columns["frame"].append(np.full(count, t, dtype=np.int64))
            columns["label"].append(np.arange(1, count + 1, dtype=np.int64))
            for j, name in enumerate(BOX_COLUMNS):
                columns[name].append(boxes[:, j])
            columns["score"].append(scores)
            columns["circularity"].append(frame["circularity"])
            columns[P_TRUE].append(detection_p_true(scores))
    write_csv(
        store.table_path, pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})
    )
    write_signals(store, signals)
    write_csv(
        store.frames_table_path,
        pd.DataFrame({"frame": np.arange(n_frames), "detections": counts, OBJECT_SIZE: sizes}),
    )
    dtype = smallest_label_dtype(max(counts, default=0))
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": (n_frames, *image_shape),
    }
    with atomic_path(store.masks_path) as temporary, open(temporary, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for t in range(n_frames):
            with np.load(store.frame_path(t), allow_pickle=False) as frame:
                handle.write(np.ascontiguousarray(frame["labels"], dtype=dtype).tobytes())


def write_signals(store: Store, frames: list[dict[str, np.ndarray]]) -> None:
    """The frames' signals joined into signals.npz (nothing when no frame has any), written before
    masks.npy so that a complete store has them. NaN stands for a value a frame lacks."""
    n_frames = len(frames)
    if not any(frames):
        return
    arrays = {
        name: np.array([frame.get(name, np.nan) for frame in frames], dtype=np.float64)
        for name in SCALAR_SIGNALS
        if any(name in frame for frame in frames)
    }
    sizes = {frame[EMBEDDING].size for frame in frames if EMBEDDING in frame}
    if len(sizes) == 1:
        embeddings = np.full((n_frames, sizes.pop()), np.nan, dtype=np.float32)
        for row, frame in zip(embeddings, frames):
            if EMBEDDING in frame:
                row[:] = frame[EMBEDDING]
        arrays[EMBEDDING] = embeddings
    with atomic_path(store.signals_path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
