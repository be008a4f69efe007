"""Hostile and careless files, generated per file kind: every variant ends in exit 2 and one line
naming the file, never a traceback, a hang or a silently wrong result.

Each kind starts from a valid file the product wrote itself and replaces one field at a time with
values of the wrong type, out of range, non-finite, huge or deeply nested; structural variants
(duplicates, truncation, garbage) come on top.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import detect_command

from napari_detection_qc.batch.cli import main
from napari_detection_qc.synthetic import make_stack

MAX_DETECTIONS = 20
DEEP = 100_000
WRONG_TYPES = [None, True, "7", [1, 2], {"a": 1}]
BAD_NUMBERS = [float("inf"), float("-inf"), float("nan"), 1e30, -1e30, 10**30]


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def detected(tmp_path_factory, tiny_checkpoint):
    """A two-frame input, its store, and its ground truth as a COCO file."""
    root = tmp_path_factory.mktemp("hostile")
    frames, labels = make_stack(2, 2, (96, 96), ["clean", "dense"])
    np.save(root / "series.npy", frames.astype(np.uint8))
    np.save(root / "truth.npy", labels)
    out = root / "out"
    assert (
        main(detect_command([root / "series.npy"], out, tiny_checkpoint, max_detections=MAX_DETECTIONS)) == 0
    )
    assert main(["export-coco", str(out), "--out", str(root / "coco.json")]) == 0
    return root, out / "series"


def one_line_refusal(code: int, captured, name: str) -> str:
    """The refusal's single line, after checking exit 2, no traceback, and the file named."""
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err[-1500:]
    assert "Traceback" not in captured.err
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert name in lines[0], lines[0]
    return lines[0]


def leaves(tree, prefix=()) -> Iterator[tuple]:
    """Key paths of every leaf of nested dicts and lists (lists of more than 8 items: the first)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, (*prefix, key))
    elif isinstance(tree, list) and tree:
        yield prefix
        for index in range(min(len(tree), 8) if not isinstance(tree[0], (dict, list)) else 1):
            yield from leaves(tree[index], (*prefix, index))
    else:
        yield prefix


def replaced(tree, path: tuple, value):
    tree = copy.deepcopy(tree)
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


def hostile_values(original, depth: int = DEEP) -> list:
    """Values of another type than ``original``, and, for numbers, non-finite and huge ones;
    none of them is valid where ``original`` stands."""
    if original is None:
        return ["x", [1, 2], -1, float("inf")]
    if isinstance(original, bool):
        return [None, "yes", [True], 2]
    if isinstance(original, (int, float)):
        return WRONG_TYPES + BAD_NUMBERS
    if isinstance(original, str):
        return [None, 5, ["x"], {"x": 1}]
    if isinstance(original, list):
        return [None, 5, "x", {}, [], nested(depth)]
    return [5, "x", nested(depth)]


DEEP_MARK = "\u0000nested"


def nested(depth: int):
    """A list nested ``depth`` deep; beyond what Python's own recursion handles, a mark that
    :func:`dump_json` writes out as that many brackets."""
    if depth > 500:
        return DEEP_MARK
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def dump_json(value) -> str:
    """JSON text; NaN and infinities written as the literals other tools write."""
    return json.dumps(value, allow_nan=True).replace(json.dumps(DEEP_MARK), "[" * DEEP + "]" * DEEP)


# -- detector checkpoint headers ------------------------------------------------------------------
HEADER_SECTIONS = ("architecture", "input", "score_threshold", "name")
CLI_SAMPLE = 10


def test_every_detector_header_field_out_of_type_or_range_is_refused(
    tmp_path, detected, tiny_checkpoint, capsys
):
    from napari_detection_qc.engines.checkpoint import DetectorLoadError
    from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector

    root, _ = detected
    payload = torch.load(tiny_checkpoint, weights_only=True)
    header = {**payload["header"], "score_threshold": 0.2}
    header["input"]["object_size"] = {"target_px": 22.0, "min_factor": 0.0625, "max_factor": 1.5}
    headers = [
        replaced(header, path, value)
        for path in leaves(header)
        if path and path[0] in HEADER_SECTIONS and path[:2] != ("architecture", "low_rank")
        for value in hostile_values(_get(header, path), depth=200)  # torch.save itself recurses
    ]
    headers += [replaced(header, ("input", "object_size", "min_factor"), 2.0)]  # above max_factor
    headers += [replaced(header, ("architecture", "resize", "shortest_edge"), 800)]  # without max_size
    headers += [{k: v for k, v in header.items() if k != key} for key in ("architecture", "input")]
    for bad in headers:  # the check every loader runs, in memory
        with pytest.raises(DetectorLoadError) as refused:
            TorchvisionDetector(bad, payload["state_dict"], device="cpu")
        assert "\n" not in str(refused.value) and "field" in str(refused.value)
    model = tmp_path / "hostile.pt"
    for bad in headers[::CLI_SAMPLE]:  # and through the command line, from a file
        torch.save({"header": bad, "state_dict": payload["state_dict"]}, model)
        code = main(detect_command([root / "series.npy"], tmp_path / "out", model, max_detections=5))
        one_line_refusal(code, capsys.readouterr(), "hostile.pt")
    assert len(headers) > 300
    assert not (tmp_path / "out").exists()


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


@pytest.mark.parametrize(
    "field, value",
    [
        ("MODEL.ANCHOR_GENERATOR.SIZES", 5),
        ("MODEL.RPN.IOU_THRESHOLDS", None),
        ("MODEL.ROI_HEADS.IOU_THRESHOLDS", "x"),
        ("MODEL.FPN.OUT_CHANNELS", -1),
        ("MODEL.ROI_BOX_HEAD.FC_DIM", 10**9),
        ("MODEL.ROI_MASK_HEAD.NUM_CONV", 10**9),
        ("MODEL.PIXEL_MEAN", []),
        ("MODEL.PIXEL_STD", [0, 0, 0]),
        ("INPUT.MIN_SIZE_TEST", float("inf")),
        ("INPUT.MAX_SIZE_TEST", "big"),
        ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", [1, 2]),
        ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[float("nan")]]),
    ],
)
def test_detectron2_configs_with_wrong_types_or_ranges_are_refused(tmp_path, field, value):
    import yaml

    from napari_detection_qc.engines.detectron2_checkpoint import import_detectron2_checkpoint

    tree: dict = {}
    node = tree
    *parents, last = field.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump(tree))
    weights = tmp_path / "model_final.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}, weights)
    with pytest.raises(ValueError, match="hostile.yaml") as raised:
        import_detectron2_checkpoint(weights, config)
    assert "\n" not in str(raised.value)


# -- COCO ground truth -----------------------------------------------------------------------------
def coco_variants(data: dict) -> Iterator[tuple[str, str]]:
    """(label, JSON text) of hostile variants of a valid COCO file."""
    checked = {
        "images": ("id", "file_name", "height", "width", "frame"),
        "annotations": ("image_id", "category_id", "segmentation", "bbox"),
        "categories": ("id", "name"),
    }
    for section, fields in checked.items():
        for key in fields:
            original = data[section][0][key]
            for value in hostile_values(original):
                yield (
                    f"{section}.{key}={type(value).__name__}",
                    dump_json(replaced(data, (section, 0, key), value)),
                )
        yield f"{section} entry is a number", dump_json(replaced(data, (section, 0), 7))
    yield "top level is a list", "[]"
    yield "NaN literal", json.dumps(data).replace('"height": 96', '"height": NaN', 1)
    yield "duplicate key", json.dumps(data).replace('"height": 96', '"height": 96, "height": 64', 1)
    yield "deep nesting", "{" + '"a":' * 0 + "[" * DEEP + "]" * DEEP + "}"
    yield "truncated", json.dumps(data)[:-10]
    yield "not UTF-8", "\udcff"
    twice = copy.deepcopy(data)
    twice["images"][1]["id"] = twice["images"][0]["id"]
    yield "repeated image id", json.dumps(twice)
    fractional = copy.deepcopy(data)
    fractional["images"][1]["frame"] = 0.9
    yield "fractional frame", json.dumps(fractional)
    same_frame = copy.deepcopy(data)
    same_frame["images"][1]["frame"] = 0
    yield "two images claim one frame", json.dumps(same_frame)
    for coordinate in (float("nan"), float("inf"), 1e19):
        polygon = copy.deepcopy(data)
        polygon["annotations"][0]["segmentation"] = [[1.0, 1.0, coordinate, 1.0, 5.0, 5.0]]
        yield f"polygon coordinate {coordinate}", dump_json(polygon)
    for counts in ([10**30], [1e30], [-5, 9221], "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~"):
        rle = replaced(data, ("annotations", 0, "segmentation", "counts"), counts)
        yield f"RLE counts {counts!r:.12}", dump_json(rle)
    other_stem = copy.deepcopy(data)
    other_stem["images"][1]["file_name"] = "series.tif"
    yield "two files claim one stem", json.dumps(other_stem)


def test_every_coco_field_out_of_type_or_range_is_refused(tmp_path, detected, capsys):
    root, store = detected
    data = json.loads((root / "coco.json").read_text())
    assert len(data["annotations"]) >= 1 and len(data["images"]) == 2
    count = 0
    for label, text in coco_variants(data):
        path = tmp_path / "hostile.json"
        path.write_text(text, errors="surrogateescape")
        code = main(["evaluate", str(store), "--ground-truth", str(path), "--out", str(tmp_path / "e.csv")])
        captured = capsys.readouterr()
        if code == 0:  # a hostile value the schema may accept must still give a sane table
            pytest.fail(f"{label}: accepted")
        one_line_refusal(code, captured, "hostile.json")
        count += 1
    assert count > 100


# -- stores: meta.json and detections.csv ---------------------------------------------------------
def test_every_store_meta_field_out_of_type_or_range_is_refused(tmp_path, detected, capsys):
    _, store = detected
    meta = json.loads((store / "meta.json").read_text())
    copy_root = tmp_path / "series"
    shutil.copytree(store, copy_root)
    checked = [
        path
        for path in leaves(meta)
        if path
        and path[0] in ("source", "n_frames", "image_shape", "detector")
        and path[-1] not in ("detector", "engine", "weights_path", "weights_sha256", "object_size")
    ]
    cases = [(path, value) for path in checked for value in hostile_values(_get(meta, path))]
    cases += [
        (("n_frames",), 1),
        (("n_frames",), 1000),
        (("n_frames",), 10**12),
        (("image_shape",), [96, 95]),
    ]
    for path, value in cases:
        (copy_root / "meta.json").write_text(dump_json(replaced(meta, path, value)))
        code = main(["score", str(copy_root), "--out", str(tmp_path / "q.csv")])
        one_line_refusal(code, capsys.readouterr(), str(copy_root))
    assert len(cases) > 50
    for text in (
        "[" * DEEP + "]" * DEEP,
        "",
        "{",
        json.dumps(meta).replace('"n_frames": 2', '"n_frames": NaN'),
    ):
        (copy_root / "meta.json").write_text(text)
        code = main(["score", str(copy_root), "--out", str(tmp_path / "q.csv")])
        one_line_refusal(code, capsys.readouterr(), "meta.json")


DETECTION_COLUMN_VALUES = {
    "frame": [1.5, -1, 2, 1e30, "x", float("nan")],
    "label": [1e30, 0, -3, 1.5, "x", float("nan")],
    "y_min": [float("inf"), 1e30, "x"],
    "x_max": [float("-inf"), float("nan")],
    "score": [2.0, -0.5, float("nan"), "x"],
    "circularity": [float("inf"), "x"],
}


def test_garbage_detection_tables_are_refused_and_redone_by_detect(
    tmp_path, detected, tiny_checkpoint, capsys
):
    root, store = detected
    table = pd.read_csv(store / "detections.csv")
    assert len(table) >= 2
    copy_root = tmp_path / "series"
    cases = [(column, value) for column, values in DETECTION_COLUMN_VALUES.items() for value in values]
    for column, value in cases:
        shutil.rmtree(copy_root, ignore_errors=True)
        shutil.copytree(store, copy_root)
        bad = table.astype(object)
        bad.loc[0, column] = value
        bad.to_csv(copy_root / "detections.csv", index=False)
        code = main(["export-coco", str(copy_root), "--out", str(tmp_path / "d.json")])
        one_line_refusal(code, capsys.readouterr(), "detections.csv")
    duplicate = pd.concat([table, table.iloc[:1]])
    for text in (duplicate.to_csv(index=False), "", "\x00\x01garbage", "frame,label\n0,1\n"):
        (copy_root / "detections.csv").write_text(text)
        code = main(["export-coco", str(copy_root), "--out", str(tmp_path / "d.json")])
        one_line_refusal(code, capsys.readouterr(), "detections.csv")
    # detect reassembles a store whose table does not parse instead of calling it complete
    out = tmp_path / "out"
    shutil.copytree(store, out / "series")
    (out / "series" / "detections.csv").write_text("\x00\x01garbage")
    assert (
        main(detect_command([root / "series.npy"], out, tiny_checkpoint, max_detections=MAX_DETECTIONS)) == 0
    )
    pd.testing.assert_frame_equal(pd.read_csv(out / "series" / "detections.csv"), table)


# -- forest files ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def forest_state(tmp_path_factory):
    import skops.io as sio

    from napari_detection_qc.quality.features import CANDIDATE_FEATURES
    from napari_detection_qc.quality.forest import TARGETS, QualityForest

    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.random((30, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    targets = pd.DataFrame(rng.random((30, 3)), columns=list(TARGETS))
    path = (
        QualityForest(n_estimators=2)
        .fit(features, targets)
        .save(tmp_path_factory.mktemp("forest") / "f.skops")
    )
    return sio.load(path, trusted=sio.get_untrusted_types(file=path))


@pytest.mark.parametrize(
    "field, value",
    [
        ("detector", {"score_threshold": [1, 2]}),
        ("detector", {"max_detections": 1e30}),
        ("detector", 5),
        ("coverage", float("inf")),
        ("n_estimators", None),
        ("features", 5),
        ("features", DEEP_MARK),
        ("calibration", {"interval_scale": {"f1": "x"}, "domain_radius": 1.0}),
        ("random_state", 1e300),
    ],
)
def test_forest_files_with_malformed_metadata_are_one_line_refusals(
    tmp_path, detected, forest_state, field, value, capsys
):
    import skops.io as sio

    _, store = detected
    state = dict(forest_state)
    meta = json.loads(state["metadata_json"])
    state["metadata_json"] = dump_json({**meta, field: value})
    sio.dump(state, tmp_path / "hostile.skops")
    code = main(
        ["score", str(store), "--forest", str(tmp_path / "hostile.skops"), "--out", str(tmp_path / "q.csv")]
    )
    one_line_refusal(code, capsys.readouterr(), "hostile.skops")


# -- pixel-size tables and label folders -----------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "series,nan\n",
        "series,inf\n",
        "series,1e400\n",
        "series,-0\n",
        "series,1e30\n",
        "series," + "9" * 200_000 + "\n",
        "series,0.4\nseries,0.5\n",
        "\x00\x00\x00\n",
        "series\n",
    ],
)
def test_hostile_pixel_size_tables_are_refused(tmp_path, detected, tiny_checkpoint, text, capsys):
    root, _ = detected
    table = tmp_path / "sizes.csv"
    table.write_text(text)
    command = detect_command([root / "series.npy"], tmp_path / "out", tiny_checkpoint, max_detections=5)
    code = main([*command, "--pixel-sizes", str(table)])
    one_line_refusal(code, capsys.readouterr(), "sizes.csv")
    assert not (tmp_path / "out").exists()


def test_a_pixel_size_reaches_every_input_of_that_name(tmp_path, detected, tiny_checkpoint):
    root, _ = detected
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(root / "series.npy", tmp_path / folder / "series.npy")
    (tmp_path / "sizes.csv").write_text("series.npy,0.7\n")
    command = detect_command(
        [tmp_path / "a", tmp_path / "b"], tmp_path / "out", tiny_checkpoint, max_detections=5
    )
    assert main([*command, "--pixel-sizes", str(tmp_path / "sizes.csv")]) == 0
    metas = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/meta.json")]
    assert len(metas) == 2 and all(meta["pixel_size_nm"] == 0.7 for meta in metas)


def test_two_label_files_of_one_stem_are_refused(tmp_path, detected, capsys):
    root, store = detected
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(root / "truth.npy", truth / "series.npy")
    (truth / "series.tif").write_bytes(b"")
    code = main(["evaluate", str(store), "--ground-truth", str(truth), "--out", str(tmp_path / "e.csv")])
    line = one_line_refusal(code, capsys.readouterr(), "truth")
    assert "series.npy" in line and "series.tif" in line


# -- outputs, pipes ---------------------------------------------------------------------------------
def test_finetune_never_writes_over_an_input_and_checks_out_before_loading(tmp_path, detected, capsys):
    root, _ = detected
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    shutil.copy(root / "series.npy", images / "series.npy")
    shutil.copy(root / "truth.npy", labels / "series.npy")
    before = (images / "series.npy").read_bytes()
    for out in (images / "series.npy", labels / "series.npy", tmp_path):
        command = [
            "finetune",
            str(images),
            "--ground-truth",
            str(labels),
            "--out",
            str(out),
            "--model",
            str(tmp_path / "missing.pt"),
            "--steps",
            "1",
            "--no-progress",
        ]
        one_line_refusal(main(command), capsys.readouterr(), str(out))  # the output, not the missing model
    assert (images / "series.npy").read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, detected, capsys):
    root, store = detected
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["score", str(store), "--out", str(locked / "q.csv")])
        one_line_refusal(code, capsys.readouterr(), "locked")
    finally:
        locked.chmod(0o700)


def test_pipes_are_refused_at_once(tmp_path, detected, tiny_checkpoint, capsys):
    root, store = detected
    for name in ("pipe.npy", "pipe.json", "pipe.pt", "pipe.csv"):
        os.mkfifo(tmp_path / name)
    runs = [
        detect_command([tmp_path / "pipe.npy"], tmp_path / "out", tiny_checkpoint, max_detections=5),
        detect_command([root / "series.npy"], tmp_path / "out", tmp_path / "pipe.pt", max_detections=5),
        [
            "evaluate",
            str(store),
            "--ground-truth",
            str(tmp_path / "pipe.json"),
            "--out",
            str(tmp_path / "e.csv"),
        ],
        [
            *detect_command([root / "series.npy"], tmp_path / "out", tiny_checkpoint, max_detections=5),
            "--pixel-sizes",
            str(tmp_path / "pipe.csv"),
        ],
    ]
    for command, name in zip(runs, ("pipe.npy", "pipe.pt", "pipe.json", "pipe.csv")):
        one_line_refusal(main(command), capsys.readouterr(), name)


def test_float_frames_of_any_finite_range_are_detected_like_the_original(detected):
    from napari_detection_qc.engines.intensity import scale_to_255

    frame = np.load(detected[0] / "series.npy")[0].astype(np.float64)
    reference = scale_to_255(frame, {"intensity": "robust"})
    for factor in (1e300, 1e-300, 1e-30):
        scaled = scale_to_255(frame * factor, {"intensity": "robust"})
        assert np.isfinite(scaled).all()
        np.testing.assert_allclose(scaled, reference, atol=1e-3)
        np.testing.assert_allclose(
            scale_to_255(frame * factor, {"intensity": "percentile", "percentiles": [1, 99]}),
            scale_to_255(frame, {"intensity": "percentile", "percentiles": [1, 99]}),
            atol=1e-3,
        )


# -- an input replaced while it is detected ---------------------------------------------------------
class SwappingExecutor:
    """Runs tasks serially; after the first, replaces the input by other pixels and restores it,
    as a user copying files over a running batch would."""

    def __init__(self, source, other: np.ndarray):
        self.source, self.other = source, other

    def map_unordered(self, function, tasks):
        original = self.source.read_bytes()
        for index, task in enumerate(tasks):
            if index == 1:
                np.save(self.source, self.other)
            outcome = function(task)
            self.source.write_bytes(original)  # restored before the run looks again
            yield outcome


def test_an_input_replaced_during_detection_is_neither_assembled_nor_kept(
    tmp_path, detected, tiny_checkpoint
):
    from napari_detection_qc.batch.run.detect import detect
    from napari_detection_qc.batch.run.detector import DetectorSpec
    from napari_detection_qc.io import InputError

    root, _ = detected
    source = tmp_path / "series.npy"
    shutil.copy(root / "series.npy", source)
    frames = np.load(source)
    spec = DetectorSpec(str(tiny_checkpoint), None, "cpu", None, MAX_DETECTIONS, signals="cheap")
    with pytest.raises(InputError, match="changed while it was being detected"):
        detect(
            [source], tmp_path / "out", spec, SwappingExecutor(source, frames[::-1].copy()), progress=False
        )
    store = tmp_path / "out" / "series"
    assert not (store / "detections.csv").exists() and not list((store / "frames").glob("*.npz"))
    assert (
        main(detect_command([source], tmp_path / "out", tiny_checkpoint, max_detections=MAX_DETECTIONS)) == 0
    )
    reference = pd.read_csv(root / "out" / "series" / "detections.csv")
    pd.testing.assert_frame_equal(pd.read_csv(store / "detections.csv"), reference)


# -- training tables (fit-forest, the viewer's training sets) ---------------------------------------
@pytest.mark.parametrize("column", ["f1", "count"])
@pytest.mark.parametrize("value", ["x", "inf", "nan", "1e400", "", "150"])
def test_hostile_training_tables_are_refused_by_fit_forest_and_training_sets(tmp_path, column, value, capsys):
    from napari_detection_qc.io import InputError
    from napari_detection_qc.labels.training_set import TrainingSet
    from napari_detection_qc.quality.features import PAPER_FEATURES
    from napari_detection_qc.quality.forest import TARGETS

    if column == "count" and value == "150":
        value = "-1e400"  # a large count is a valid feature value; minus infinity is not
    rows = [
        {"source": "a", **dict.fromkeys(PAPER_FEATURES, 0.5), **dict.fromkeys(TARGETS, 0.5)}
        for _ in range(12)
    ]
    table = pd.DataFrame(rows).astype(object)
    table.loc[3, column] = value
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    code = main(["fit-forest", str(path), "--out", str(tmp_path / "f.skops"), "--trees", "2"])
    one_line_refusal(code, capsys.readouterr(), "table.csv")
    with pytest.raises(InputError, match="table.csv") as refused:
        TrainingSet.load(path)
    assert "\n" not in str(refused.value)


def test_a_header_sizing_a_network_beyond_its_weights_is_refused_without_building_it(tiny_checkpoint):
    import time

    from napari_detection_qc.engines.checkpoint import DetectorLoadError
    from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector

    payload = torch.load(tiny_checkpoint, weights_only=True)
    header = copy.deepcopy(payload["header"])
    header["architecture"]["backbone"].update(stage_widths=[1024] * 4, blocks_per_stage=[64] * 4)
    header["architecture"]["fpn_channels"] = 1024
    header["architecture"]["roi"]["box_head_dim"] = 4096  # all in range; together about 20 GB of weights
    start = time.perf_counter()
    with pytest.raises(DetectorLoadError, match="do not fit"):
        TorchvisionDetector(header, payload["state_dict"], device="cpu")
    assert time.perf_counter() - start < 10
