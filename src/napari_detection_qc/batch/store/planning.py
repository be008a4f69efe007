"""Planning a detection run: which store each input goes to and which of its frames are left.

A store's name is made from the input's file name but can never leave ``--out`` (``..npy``), and is
unique even for same-named files in different folders. A store is keyed by its input's content
(size and sha256, or size, date and the hash of its first and last bytes for very large files), so
a replaced input is never served the detections of the old one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from napari_detection_qc import __version__
from napari_detection_qc.batch.store.format import Store, frame_is_done, write_json
from napari_detection_qc.io import InputError, describe
from napari_detection_qc.io.atomic import remove_stale_temporary_files

UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._+-]")
WHOLE_FILE_HASH_LIMIT = 256 * 2**20  # bytes; larger inputs hash their first and last HASHED_END
HASHED_END = 16 * 2**20


def safe_name(text: str) -> str:
    """A folder name that stays where it is put: no separators, never ``.``, ``..`` or hidden."""
    name = UNSAFE_CHARACTERS.sub("_", text)
    return name if name and not name.startswith(".") else f"_{name}"


def store_names(paths: Sequence[Path]) -> list[str]:
    """Store folder per input: the file's stem, its full name where two inputs share a stem, and
    a hash of its full path where two inputs share a name (same file names in different folders)."""
    stems = [safe_name(p.stem) for p in paths]
    stem_count = Counter(stems)
    names = [stem if stem_count[stem] == 1 else safe_name(p.name) for stem, p in zip(stems, paths)]
    name_count = Counter(names)
    return [
        name
        if name_count[name] == 1
        else f"{name}-{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]}"
        for name, p in zip(names, paths)
    ]


def content_fingerprint(path: Path) -> dict:
    """What identifies an input's content: its size and sha256 (of the whole file up to 256 MiB;
    beyond, of its first and last 16 MiB, with its modification time)."""
    stat = path.stat()
    digest = hashlib.sha256()
    if path.is_dir():  # a zarr folder: the names and sizes of its files (chunks are rewritten whole)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\n".encode())
        return {"size": sum(file.stat().st_size for file in files), "sha256": digest.hexdigest()}
    with open(path, "rb") as handle:
        if stat.st_size <= WHOLE_FILE_HASH_LIMIT:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
            return {"size": stat.st_size, "sha256": digest.hexdigest()}
        digest.update(handle.read(HASHED_END))
        handle.seek(-HASHED_END, 2)
        digest.update(handle.read(HASHED_END))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_first_last_16MiB": digest.hexdigest()}


@dataclass(frozen=True)
class FrameTask:
    """One frame to detect: workers read it from ``source`` themselves and write ``target``."""

    source: Path
    index: int
    target: Path


def file_identity(path: Path) -> tuple[int, ...]:
    """Device, inode, size, modification and change time: any replacement or rewrite of the file,
    even one restoring its old content, changes at least the change time (users cannot set it)."""
    stat = path.stat()
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


@dataclass
class InputPlan:
    """One input file: its store, the frames still to detect, and the file's identity when the
    run fingerprinted it (checked again before the store is assembled)."""

    source: Path
    store: Store
    n_frames: int
    image_shape: tuple[int, int]
    pending: list[FrameTask]
    identity: tuple[int, ...] = ()

    def changed_since_planned(self) -> bool:
        """Whether the input was replaced or rewritten since the run fingerprinted it."""
        try:
            return file_identity(self.source) != self.identity
        except OSError:
            return True

    def discard_this_runs_frames(self) -> None:
        """Delete the frames this run detected: they may be of another file's pixels."""
        for task in self.pending:
            task.target.unlink(missing_ok=True)


def complete_store_problem(store: Store, n_frames: int) -> str | None:
    """Why a store's assembled files (detections.csv, masks.npy) do not hold a valid result, or None."""
    try:
        store.read_meta()
        store.read_table(n_frames)
    except InputError as exc:
        return str(exc)
    return None


def same_detector(previous: dict | None, current: dict) -> bool:
    """The same detector, wherever its weights file lies now (``weights_path`` only finds the
    forest saved beside it; the weights hash is the identity)."""
    current = json.loads(json.dumps(current))
    return {**(previous or {}), "weights_path": None} == {**current, "weights_path": None}


def identity_conflict(previous: dict, meta: dict, source: Path, root: Path) -> str | None:
    """Why a store's existing meta.json does not belong to this input and detector, or None."""
    same = lambda key: previous.get(key) == json.loads(json.dumps(meta[key]))  # noqa: E731
    if not same("source"):
        return (
            f"{root} holds the detections of {previous.get('source')}, not of {source}; choose another --out"
        )
    if not all(same(key) for key in ("fingerprint", "n_frames", "image_shape")):
        return (
            f"{source} changed since its detections in {root} were made; delete {root} to detect it "
            "again, or choose another --out"
        )
    if not same_detector(previous.get("detector"), meta["detector"]):
        return (
            f"{root} holds detections of another detector; choose another --out, or delete {root} to redo it"
        )
    if previous.get("signals", "none") != meta["signals"]:
        return (
            f"{root} holds detections made with --signals {previous.get('signals', 'none')}, not "
            f"{meta['signals']}; rerun with that, choose another --out, or delete {root} to redo it"
        )
    return None


def plan_input(
    source: Path,
    root: Path,
    score_threshold: float,
    detector_meta: dict,
    pixel_size_nm: float | None = None,
    signals: str = "none",
) -> InputPlan:
    """Describe the input, write (or check) its store's meta.json and list the frames not yet done.
    A store made by another detector or with other ``signals`` (none, cheap, all), or for another
    input or content, is refused rather than mixed.
    Temporary files of writers that no longer run are removed; a running writer's are kept.
    ``pixel_size_nm`` (from a pixel-size table) replaces the one the file records."""
    info = describe(source)
    store = Store(root)
    try:
        identity = file_identity(source)
        fingerprint = content_fingerprint(source)
    except OSError as exc:
        raise InputError(f"{source}: cannot read this file ({exc})") from exc
    meta = {
        "source": str(source.resolve()),
        "fingerprint": fingerprint,
        "n_frames": info.n_frames,
        "image_shape": list(info.frame_shape),
        "is_2d": info.is_2d,
        "pixel_size_nm": pixel_size_nm or info.pixel_size_nm,
        "detector": detector_meta,
        "score_threshold": score_threshold,
        "signals": signals,
        "created_by": f"napari-detection-qc {__version__}",
    }
    if store.meta_path.is_file():
        conflict = identity_conflict(store.read_meta(), meta, source, root)
        if conflict:
            raise InputError(conflict)
    store.frames_dir.mkdir(parents=True, exist_ok=True)
    for folder in (store.root, store.frames_dir):
        remove_stale_temporary_files(folder)
    write_json(store.meta_path, meta)
    if store.is_complete and complete_store_problem(store, info.n_frames):
        # assembled files that do not parse are redone from the frames, never served as complete
        store.masks_path.unlink(missing_ok=True)
        store.table_path.unlink(missing_ok=True)
    frames = [] if store.is_complete else range(info.n_frames)  # a finished input needs no frame checks
    pending = [
        FrameTask(source, t, store.frame_path(t)) for t in frames if not frame_is_done(store.frame_path(t))
    ]
    return InputPlan(source, store, info.n_frames, info.frame_shape, pending, identity)
