"""COCO JSON, the format EM annotations are exchanged in (CVAT, Label Studio, the seed paper's own
annotations): ground truth in as instance Labels images, detections out with RLE masks.

Conventions, as COCO's: pixel (row, col) covers [col, col + 1) x [row, row + 1); a ``bbox`` is
``[x, y, width, height]`` in those pixel edges; RLE runs count pixels in column-major order,
starting with background. A polygon covers the pixels whose centre lies inside it. Run-length
encoding is implemented here (no pycocotools): uncompressed ``counts`` lists and pycocotools'
compressed strings are both read; masks are written compressed.

Images are matched to inputs by ``file_name`` (the base name; by stem when the extensions
differ, e.g. annotations of ``a.png`` for ``a.tif``). A stack's frame ``t`` is the image of that
name carrying ``"frame": t`` (as :func:`detections_to_coco` writes them); a file that names no
image of the input but holds exactly one image per frame is taken in image-id order when the file is about that one input (one input on the command line, or the
viewer's layer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from napari_detection_qc import __version__
from napari_detection_qc.detections.records import StackDetections, smallest_label_dtype
from napari_detection_qc.io import InputError, base_name
from napari_detection_qc.io.atomic import atomic_path
from napari_detection_qc.validation import (
    MALFORMED_DATA_ERRORS,
    Anything,
    Int,
    Real,
    Record,
    SchemaError,
    Seq,
    Spec,
    Text,
    read_json,
    validate,
)

CATEGORY = "cavity"


# -- run-length encoding ---------------------------------------------------------------------------
def window_runs(window: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """COCO RLE counts of a (height, width) mask that is empty outside ``window`` (a boolean
    array placed at row ``top``, column ``left``): alternating background/foreground run lengths
    in column-major order, starting with background (0 when the first pixel is foreground).
    Only the window is scanned, so a small object in a large frame costs little."""
    window = np.asarray(window, dtype=bool)
    padded = np.zeros((window.shape[0] + 2, window.shape[1]), dtype=np.int8)
    padded[1:-1] = window  # runs never cross from one column into the next
    steps = np.diff(padded, axis=0).T  # column-major order: np.nonzero walks column by column
    start_cols, start_rows = np.nonzero(steps == 1)
    stop_cols, stop_rows = np.nonzero(steps == -1)
    starts = (left + start_cols) * height + top + start_rows
    stops = (left + stop_cols) * height + top + stop_rows
    if len(starts) > 1:  # a run ending at the bottom of a full-height column goes on in the next
        separate = starts[1:] != stops[:-1]
        starts = np.concatenate([starts[:1], starts[1:][separate]])
        stops = np.concatenate([stops[:-1][separate], stops[-1:]])
    edges = np.empty(2 * len(starts), dtype=np.int64)
    edges[0::2], edges[1::2] = starts, stops
    return np.diff(np.concatenate([[0], edges, [height * width]]))


def mask_runs(mask: np.ndarray) -> np.ndarray:
    """COCO RLE counts of a whole (H, W) boolean mask."""
    mask = np.asarray(mask, dtype=bool)
    return window_runs(mask, 0, 0, *mask.shape)


def encode_counts(counts: Sequence[int]) -> str:
    """pycocotools' compressed RLE string: from the fourth count on, each count is stored as its
    difference to the count two before; values are written 5 bits per character (LEB128-like, a
    continuation bit 0x20, characters from 48 on)."""
    out = []
    counts = [int(c) for c in counts]
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode_counts(text: str) -> list[int]:
    """The inverse of :func:`encode_counts`."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("truncated RLE string")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {text[p]!r} in an RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray) -> dict:
    """A (H, W) mask as a COCO RLE with a compressed ``counts`` string."""
    mask = np.asarray(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": encode_counts(mask_runs(mask))}


def rle_pixels(rle: dict, height: int, width: int) -> np.ndarray:
    """Column-major flat indices of an RLE's foreground pixels (compressed or uncompressed)."""
    size = rle.get("size")
    if size is None or [int(s) for s in size] != [height, width]:
        raise ValueError(f"RLE size {size} does not match the image's {[height, width]}")
    counts = rle.get("counts")
    counts = decode_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    counts = np.asarray(counts, dtype=np.int64)
    if np.any(counts < 0) or counts.sum() != height * width:
        raise ValueError(f"RLE counts do not cover the {height} x {width} image")
    ends = np.cumsum(counts)
    starts, stops = (ends - counts)[1::2], ends[1::2]
    lengths = stops - starts
    # one arange over all runs: each foreground pixel's index is its run's start plus its offset
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def rle_decode(rle: dict) -> np.ndarray:
    """A COCO RLE as a (H, W) boolean mask."""
    height, width = (int(s) for s in rle["size"])
    flat = np.zeros(height * width, dtype=bool)
    flat[rle_pixels(rle, height, width)] = True
    return flat.reshape((height, width), order="F")


# -- ground truth in -------------------------------------------------------------------------------
def polygon_pixels(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Column-major flat indices of the pixels whose centres lie inside any of the polygons."""
    pixels = []
    for flat in polygons:
        xy = np.asarray(flat, dtype=np.float64).reshape(-1, 2)
        if len(xy) < 3:
            raise ValueError("a polygon needs at least 3 points")
        # pixel centres sit at integer + 0.5; skimage fills integer coordinates
        rows, cols = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, (height, width))
        pixels.append(cols.astype(np.int64) * height + rows)
    return np.unique(np.concatenate(pixels)) if pixels else np.zeros(0, np.int64)


BOX_MASKS = ("box", "ellipse")  # the mask a box-only annotation gets: its box, or the ellipse inscribed in it


def box_pixels(bbox: Sequence[float], height: int, width: int, shape: str = "box") -> np.ndarray:
    """Column-major flat indices of the pixels a box-only annotation's ``[x, y, w, h]`` covers:
    the whole box, or (``shape="ellipse"``, the outline of most EM defects) the pixels whose
    centres lie in the ellipse inscribed in it (the whole box when the ellipse holds none)."""
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
    cols, rows = np.meshgrid(np.arange(x0, x1), np.arange(y0, y1), indexing="ij")
    if shape == "ellipse" and w > 0 and h > 0:
        inside = ((cols + 0.5 - (x + w / 2)) / (w / 2)) ** 2 + (
            (rows + 0.5 - (y + h / 2)) / (h / 2)
        ) ** 2 <= 1
        if inside.any():
            cols, rows = cols[inside], rows[inside]
    return (cols * height + rows).ravel()


def is_box_only(annotation: dict) -> bool:
    """An annotation with a box and no segmentation (boxes-only tools and exports)."""
    return not annotation.get("segmentation") and bool(annotation.get("bbox"))


def annotation_pixels(annotation: dict, height: int, width: int, box_mask: str = "box") -> np.ndarray:
    """An annotation's pixels: its polygons or RLE, or (``box_mask``) its box or the ellipse in
    it when it has no segmentation."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict):
        return rle_pixels(segmentation, height, width)
    if segmentation:
        return polygon_pixels(segmentation, height, width)
    if annotation.get("bbox"):
        return box_pixels(annotation["bbox"], height, width, box_mask)
    raise ValueError("the annotation has neither a segmentation nor a bbox")


MAX_COCO_SIDE = 1 << 17
MAX_COORDINATE = 8.0 * MAX_COCO_SIDE
"""Polygon and box coordinates beyond this are refused, not rasterised to nothing."""
COCO_ID = Int(-(2**53), 2**53)
COORDINATE = Real(-MAX_COORDINATE, MAX_COORDINATE)


class Segmentation(Spec):
    """A COCO segmentation: an RLE (``size`` and ``counts``, a string or a list of run lengths)
    or a list of polygons (flat x, y lists of at least three points); empty means none."""

    rle = Record(
        {
            "size": Seq(Int(1, MAX_COCO_SIDE), 2, 2),
            "counts": Anything(),
        }
    )
    polygons = Seq(Seq(COORDINATE, 6, 1 << 22), 0, 1 << 16)
    runs = Seq(Int(0, MAX_COCO_SIDE * MAX_COCO_SIDE), 0, 1 << 26)

    def check(self, value, where):
        if isinstance(value, dict):
            rle = self.rle.check(value, where)
            if not isinstance(rle["counts"], str):
                rle["counts"] = self.runs.check(rle["counts"], f"{where}.counts")
            elif len(rle["counts"]) > 1 << 26:
                raise SchemaError(f"{where}.counts", "RLE string too long")
            return rle
        polygons = self.polygons.check(value, where)
        for index, polygon in enumerate(polygons):
            if len(polygon) % 2:
                raise SchemaError(f"{where}[{index}]", "a polygon needs as many x as y coordinates")
        return polygons


class BoundingBox(Spec):
    """A COCO ``[x, y, width, height]`` with finite coordinates and a non-negative size."""

    def check(self, value, where):
        box = Seq(COORDINATE, 4, 4).check(value, where)
        if box[2] < 0 or box[3] < 0:
            raise SchemaError(where, f"negative width or height {box[2:]}")
        return box


COCO_IMAGE = Record(
    {
        "id": COCO_ID,
        "file_name": Text(),
        "height": Int(1, MAX_COCO_SIDE),
        "width": Int(1, MAX_COCO_SIDE),
        "frame": Int(0, 10**6),
    },
    optional=frozenset({"frame"}),
)
COCO_ANNOTATION = Record(
    {"image_id": COCO_ID, "category_id": COCO_ID, "segmentation": Segmentation(), "bbox": BoundingBox()},
    optional=frozenset({"category_id", "segmentation", "bbox"}),
)
COCO_CATEGORY = Record({"id": COCO_ID, "name": Text()}, optional=frozenset({"name"}))
COCO_FILE = Record(
    {"images": Seq(COCO_IMAGE), "annotations": Seq(COCO_ANNOTATION), "categories": Seq(COCO_CATEGORY)},
    optional=frozenset({"annotations", "categories"}),
)
"""What a ground-truth COCO file may hold: integer ids and frames (``1.9`` is refused, not
truncated), finite coordinates in a plausible range, positive image sizes."""


def _names_match(file_name: str, name: str, by_stem: bool) -> bool:
    base = base_name(file_name)
    return Path(base).stem == Path(name).stem if by_stem else base == Path(name).name


@dataclass
class CocoGroundTruth:
    """A COCO file's images and their annotations, as Labels images on demand."""

    path: Path
    images: list[dict]
    annotations: dict[int, list[dict]] = field(default_factory=dict)

    @classmethod
    def load(cls, path, category: str | None = None) -> CocoGroundTruth:
        """Read and check a COCO file (``COCO_FILE``: types, ranges, unique ids). ``category``
        keeps one category's annotations; without it, a file with several categories in use is
        refused (they would all count as objects)."""
        path = Path(path)
        data = validate(read_json(path, "COCO file"), COCO_FILE, path, "COCO file")
        images, annotations = data["images"], data.get("annotations", [])
        names: dict[int, str] = {}
        for entry in data.get("categories", []):
            if entry["id"] in names:
                raise InputError(f"{path}: invalid COCO file: category id {entry['id']} appears twice")
            names[entry["id"]] = entry.get("name", str(entry["id"]))
        by_image: dict[int, list[dict]] = {}
        seen_frames: set[tuple[str, int | None]] = set()
        for image in images:
            if image["id"] in by_image:
                raise InputError(f"{path}: invalid COCO file: image id {image['id']} appears twice")
            by_image[image["id"]] = []
            key = (image["file_name"], image.get("frame"))
            if key in seen_frames:
                raise InputError(
                    f"{path}: invalid COCO file: two images named {image['file_name']}"
                    + (f" claim frame {key[1]}" if key[1] is not None else " without frame indices")
                )
            seen_frames.add(key)
        used = sorted({names.get(a.get("category_id", 0), str(a.get("category_id"))) for a in annotations})
        if category is not None:
            if category not in names.values():
                raise InputError(f"{path}: no category {category!r}; it has {', '.join(names.values())}")
            annotations = [a for a in annotations if names.get(a.get("category_id", 0)) == category]
        elif len(used) > 1:
            raise InputError(f"{path}: annotations of several categories ({', '.join(used)}); choose one")
        for annotation in annotations:
            image_id = annotation["image_id"]
            if image_id not in by_image:
                raise InputError(
                    f"{path}: annotation {annotation.get('id')} refers to unknown image {image_id}"
                )
            by_image[image_id].append(annotation)
        return cls(path, images, by_image)

    def labels(self, image: dict, box_mask: str = "box") -> np.ndarray:
        """One image's instance Labels image: ids 1..N in annotation order. Where instances
        overlap, the smaller one is painted on top (a Labels pixel holds one id) so small objects
        keep their full extent. ``box_mask``: what a box-only annotation becomes (``BOX_MASKS``)."""
        height, width = image["height"], image["width"]
        pixels = []
        for annotation in self.annotations[int(image["id"])]:
            try:
                pixels.append(annotation_pixels(annotation, height, width, box_mask))
            except MALFORMED_DATA_ERRORS as exc:
                raise InputError(
                    f"{self.path}: annotation {annotation.get('id')} of {image['file_name']}: {exc}"
                ) from exc
        canvas = np.zeros(height * width, dtype=smallest_label_dtype(len(pixels)))
        for index in sorted(range(len(pixels)), key=lambda i: -len(pixels[i])):
            canvas[pixels[index]] = index + 1
        return canvas.reshape((height, width), order="F").copy()

    def images_for(self, name: str, n_frames: int, sole_input: bool = False) -> list[dict]:
        """The images of input ``name`` with ``n_frames`` frames, in frame order (rules in the
        module docstring); InputError when there is no such image or the frames do not add up.
        ``sole_input``: the file is about this one input, so when no image has its name, a file
        holding exactly ``n_frames`` images is taken in image-id order."""
        for by_stem in (False, True):
            matches = [image for image in self.images if _names_match(str(image["file_name"]), name, by_stem)]
            if matches:
                break
        if not matches:
            if sole_input and len(self.images) == n_frames:
                return sorted(self.images, key=lambda image: int(image["id"]))
            raise InputError(f"{self.path}: no image named {Path(name).name} (or {Path(name).stem}.*)")
        claimants = sorted({base_name(str(image["file_name"])) for image in matches})
        if len(claimants) > 1:
            raise InputError(
                f"{self.path}: images {' and '.join(claimants)} both claim input {Path(name).name}"
            )
        if n_frames == 1 and len(matches) == 1:
            return matches
        frames = sorted(int(image.get("frame", -1)) for image in matches)
        if frames != list(range(n_frames)):
            raise InputError(
                f"{self.path}: {len(matches)} image(s) named {Path(name).name} for {n_frames} frame(s); "
                "a stack needs one image per frame, each with its 'frame' index"
            )
        return sorted(matches, key=lambda image: int(image["frame"]))

    def box_only_count(self, images: Iterable[dict]) -> int:
        """How many annotations of these images are boxes without a segmentation."""
        return sum(is_box_only(a) for image in images for a in self.annotations[int(image["id"])])

    def stack_labels(
        self,
        name: str,
        n_frames: int,
        frame_shape: Sequence[int],
        sole_input: bool = False,
        box_mask: str = "box",
    ) -> np.ndarray:
        """(T, Y, X) ground truth of input ``name``; its images must have the frames' shape.
        ``box_mask``: what a box-only annotation becomes (``BOX_MASKS``)."""
        images = self.images_for(name, n_frames, sole_input)
        for image in images:
            if (image["height"], image["width"]) != tuple(frame_shape):
                raise InputError(
                    f"{self.path}: image {image['file_name']} is {image['height']} x {image['width']} "
                    f"but the frames are {frame_shape[0]} x {frame_shape[1]}"
                )
        frames = [self.labels(image, box_mask) for image in images]
        dtype = smallest_label_dtype(max((int(f.max(initial=0)) for f in frames), default=0))
        return np.stack([f.astype(dtype, copy=False) for f in frames])


# -- detections out --------------------------------------------------------------------------------
def detections_to_coco(inputs: Iterable[tuple[str, StackDetections]]) -> dict:
    """A COCO dataset of detections: per input (file name, detections) one image per frame (a
    stack's frames carry ``"frame": t``), one annotation per detection with its RLE mask, box and
    ``score``, category ``cavity``."""
    images, annotations = [], []
    for name, stack in inputs:
        height, width = stack.image_shape
        for t, frame in enumerate(stack.frames):
            image = {"id": len(images) + 1, "file_name": Path(name).name, "height": height, "width": width}
            if not stack.is_2d:
                image["frame"] = t
            images.append(image)
            slices = ndimage.find_objects(frame.labels.astype(np.int64, copy=False), max_label=frame.count)
            for i in range(frame.count):
                y0, x0, y1, x1 = (float(v) for v in frame.boxes[i])
                window = (slice(0, 0), slice(0, 0)) if slices[i] is None else slices[i]
                mask = frame.labels[window] == i + 1
                counts = window_runs(mask, window[0].start, window[1].start, height, width)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image["id"],
                        "category_id": 1,
                        "segmentation": {"size": [height, width], "counts": encode_counts(counts)},
                        "area": int(mask.sum()),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(frame.scores[i]),
                        "iscrowd": 0,
                    }
                )
    return {
        "info": {"description": "detections", "version": f"napari-detection-qc {__version__}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": CATEGORY, "supercategory": CATEGORY}],
    }


def write_coco(path, data: dict) -> Path:
    """Write a COCO dict atomically (a crash leaves the old file or none, never half a file)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data))
    return path
