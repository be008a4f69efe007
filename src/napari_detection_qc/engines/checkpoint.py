"""Safe detector checkpoint files: a JSON-able header plus a tensor state dict.

A checkpoint is ``torch.save({"header": {...}, "state_dict": {...}})``. It is read with
``weights_only=True`` so a hostile file cannot run code, and the header's sha256 of the weights is
checked so a truncated or edited file is reported instead of silently giving wrong detections.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_detection_qc.batch.run.errors import is_resource_exhaustion
from napari_detection_qc.validation import one_line

FORMAT_NAME = "napari-detection-qc/maskrcnn"
FORMAT_VERSION = 1


class DetectorLoadError(ValueError):
    """A weights file that is missing, corrupt, of another kind, or inconsistent with its header."""


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and bytes, independent of how the file was serialised."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path, header: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> dict:
    """Write a checkpoint; fills in the format name, version and the weights' sha256."""
    state_dict = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    full_header = {**header, "format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    full_header["sha256"] = state_dict_sha256(state_dict)
    json.dumps(full_header)  # the header must stay plain data, readable without torch
    torch.save({"header": full_header, "state_dict": state_dict}, Path(path))
    return full_header


def float32_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with its float tensors as float32 (checkpoints may store float16), the rest as is."""
    return {
        name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()
    }


def read_torch_file(path, what: str, unreadable: str) -> Any:
    """``torch.load(weights_only=True)`` of a weights file; a missing, corrupt or code-carrying
    file becomes a :class:`DetectorLoadError` saying ``unreadable`` (what it should have been)."""
    path = Path(path)
    if not path.exists():
        raise DetectorLoadError(f"{what} file not found: {path}")
    if not path.is_file():  # a folder, or a FIFO that would block the read forever
        raise DetectorLoadError(f"{path}: not a regular file (a folder, pipe or device), so no {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except RecursionError:
        raise DetectorLoadError(f"{path} {unreadable}: nested too deeply") from None
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        OverflowError,
        KeyError,
        IndexError,
        AttributeError,
    ) as error:
        if is_resource_exhaustion(error):
            raise
        raise DetectorLoadError(f"{path} {unreadable}: {one_line(error, 200)}") from error


def load_checkpoint(path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a checkpoint; every failure is a :class:`DetectorLoadError`."""
    path = Path(path)
    payload = read_torch_file(
        path,
        "detector weights",
        "is not a readable detector checkpoint (corrupt, truncated, or holding objects other than "
        "plain tensors and data)",
    )
    if not isinstance(payload, dict) or not {"header", "state_dict"} <= set(payload):
        raise DetectorLoadError(
            f"{path} is a torch file but not a napari-detection-qc checkpoint (no header/state_dict); "
            "detectron2 model_final.pth files are loaded with load_detector((config_yaml, weights))"
        )
    header, state_dict = payload["header"], payload["state_dict"]
    if not isinstance(header, dict) or not isinstance(state_dict, dict):
        raise DetectorLoadError(f"{path}: malformed checkpoint (header and state_dict must be mappings)")
    if header.get("format") != FORMAT_NAME:
        raise DetectorLoadError(f"{path}: unknown checkpoint format {header.get('format')!r}")
    version = header.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise DetectorLoadError(f"{path}: malformed checkpoint header (format_version {version!r})")
    if not all(isinstance(t, torch.Tensor) for t in state_dict.values()):
        raise DetectorLoadError(f"{path}: malformed checkpoint (the state_dict holds non-tensors)")
    if version > FORMAT_VERSION:
        raise DetectorLoadError(
            f"{path}: checkpoint format version {header['format_version']} is newer than this "
            f"plugin understands ({FORMAT_VERSION}); update napari-detection-qc"
        )
    if state_dict_sha256(state_dict) != header.get("sha256"):
        raise DetectorLoadError(f"{path}: the weights do not match the sha256 in the header (corrupt file)")
    return header, state_dict
