"""Detect in overlapping tiles so any frame size runs in bounded memory, with objects on seams kept
exactly once: a detection belongs to the tile whose core (the tile minus half of each overlap)
holds its box centre.
"""

from __future__ import annotations

import numpy as np

from napari_detection_qc.engines.boxmasks import BoxMasks
from napari_detection_qc.engines.cpu_parallel import map_on_cores
from napari_detection_qc.engines.scaling import DetectBoxes, Window

TILE_PX = 1024
OVERLAP_PX = 128
"""Larger than the biggest object after resampling, so every object lies whole inside some tile."""
TILING_REVISION = 2
"""Bumped when the tile layout changes which detections a frame gets (benchmark caches key on it)."""
TILE_MULTIPLE_PX = 32
"""Tiles are a multiple of the model's coarsest stride (it pads its input to one anyway)."""


def tile_spans(
    length: int, tile: int = TILE_PX, overlap: int = OVERLAP_PX
) -> list[tuple[int, int, int, int]]:
    """(start, stop, core_start, core_stop) along one axis; cores partition [0, length).

    As many tiles as ``tile`` px tiles need, each only as large as covering the axis with
    ``overlap`` between neighbours takes (6144 px: 7 tiles of 992, not 7 of 1024 overlapping by 171)."""
    if length <= tile:
        return [(0, length, 0, length)]
    count = int(np.ceil((length - overlap) / (tile - overlap)))
    needed = overlap + int(np.ceil((length - overlap) / count))
    size = min(tile, int(np.ceil(needed / TILE_MULTIPLE_PX)) * TILE_MULTIPLE_PX)
    starts = np.round(np.linspace(0, length - size, count)).astype(int)
    spans = []
    for index, start in enumerate(starts):
        stop = start + size
        core_start = 0 if index == 0 else (start + int(starts[index - 1]) + size) // 2
        core_stop = length if index == count - 1 else (int(starts[index + 1]) + stop) // 2
        spans.append((int(start), int(stop), core_start, core_stop))
    return spans


def detect_in_tiles(
    image: np.ndarray, detect_boxes: DetectBoxes, batch_size: int = 1, workers: int = 1
) -> BoxMasks:
    """All detections of a frame of any size, in the frame's pixel coordinates.

    ``detect_boxes`` is told each crop's core so it can skip the masks of detections outside it
    (a fifth of a tile's detections, more on frames smaller than two tiles); they are dropped
    here in any case. Tiles go ``batch_size`` at a time to ``detect_boxes``, ``workers`` such
    batches at once (``cpu_parallel.py``; the same detections either way)."""
    tiles = [(rows, cols) for rows in tile_spans(image.shape[0]) for cols in tile_spans(image.shape[1])]
    step = max(1, batch_size)

    def detect_batch(batch) -> list[BoxMasks]:
        crops = [image[r[0] : r[1], c[0] : c[1]] for r, c in batch]
        cores: list[Window] = [(r[2] - r[0], r[3] - r[0], c[2] - c[0], c[3] - c[0]) for r, c in batch]
        parts = []
        for (rows, cols), found in zip(batch, detect_boxes(crops, cores=cores), strict=True):
            if len(tiles) > 1:
                centre_y = (found.boxes[:, 0] + found.boxes[:, 2]) / 2 + rows[0]
                centre_x = (found.boxes[:, 1] + found.boxes[:, 3]) / 2 + cols[0]
                inside = (
                    (centre_y >= rows[2])
                    & (centre_y < rows[3])
                    & (centre_x >= cols[2])
                    & (centre_x < cols[3])
                )
                found = found.select(inside)
            parts.append(found.shifted(rows[0], cols[0]))
        return parts

    batches = [tiles[first : first + step] for first in range(0, len(tiles), step)]
    return BoxMasks.concatenate(
        [part for parts in map_on_cores(detect_batch, batches, workers) for part in parts]
    )
