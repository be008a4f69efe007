"""Shared by the benchmark scripts: each writes its own section of benchmarks/RESULTS.md between
its markers, leaving the other scripts' sections as they are, and caches per detector."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from napari_detection_qc.engines.scaling import ESTIMATE_REVISION
from napari_detection_qc.engines.tiling import TILING_REVISION

RESULTS = Path(__file__).parent / "RESULTS.md"
EMPS = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "emps"
"""The EMPS real particle images (``../shared`` beside the project); benchmarks skip them when absent."""


def write_section(marker: str, text: str) -> None:
    """Replace ``<!-- marker:start --> ... <!-- marker:end -->`` (``text`` carries both markers)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if start in current and end in current:
        current = current[: current.index(start)] + text + current[current.index(end) + len(end) :]
    else:
        current = current.rstrip() + "\n\n" + text + "\n"
    RESULTS.write_text(current)


def detector_cache(root: Path, detector, verified: bool = True) -> Path:
    """Cache folder for one detector's outputs: its weights, score threshold, RPN objectness cut,
    detection cap and arithmetic (bfloat16 convolutions), the revisions of the object-size
    estimate and of the tile layout, and (``verified``: outputs after it) its detection verifier."""
    rpn_cut = getattr(detector, "architecture", {}).get("rpn", {}).get("score_thresh_test", 0.0)
    verifier = getattr(detector, "verifier", None) if verified else None
    verifier_key = (
        ""
        if verifier is None
        else "_verifier"
        + hashlib.sha256(json.dumps(verifier.to_header(), sort_keys=True).encode()).hexdigest()[:8]
    )
    return root / (
        f"{detector.weights_sha256[:16]}_t{detector.score_threshold:g}_size{ESTIMATE_REVISION}"
        f"_tiles{TILING_REVISION}{f'_rpn{rpn_cut:g}' if rpn_cut else ''}"
        f"_max{detector.max_detections}{'_bf16' if getattr(detector, 'bfloat16', False) else ''}{verifier_key}"
    )


def emps_sources() -> pd.DataFrame:
    """EMPS's ``sources.csv`` (stem, doi, ...) in stem order; no rows when ``../shared`` is absent."""
    path = EMPS / "sources.csv"
    if not path.exists():
        return pd.DataFrame(columns=["stem", "doi"])
    return pd.read_csv(path).sort_values("stem", ignore_index=True)


def emps_frame(stem: str):
    """(image, instance labels) of one EMPS image."""
    image = np.asarray(Image.open(EMPS / "images" / f"{stem}.png"))
    return image, np.asarray(Image.open(EMPS / "labels" / f"{stem}.png")).astype(np.int64)
