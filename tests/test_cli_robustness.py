"""Batch mode under attack: nothing lost, no crash, no traceback, no file outside --out.

Each test reproduces one defect found by an attack on the command line and the model-file loaders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import detect_command

import napari_detection_qc
from napari_detection_qc.batch.cli import main
from napari_detection_qc.io import InputError, describe
from napari_detection_qc.quality.features import CANDIDATE_FEATURES
from napari_detection_qc.quality.forest import TARGETS, ForestLoadError, QualityForest
from napari_detection_qc.synthetic import make_stack

MAX_DETECTIONS = 20
SRC = str(Path(napari_detection_qc.__file__).parents[1])


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def images():
    frames, _ = make_stack(5, 2, (96, 96), ["clean", "dense"])
    return frames.astype(np.uint8)


@pytest.fixture(scope="module")
def truth():
    _, labels = make_stack(5, 2, (96, 96), ["clean", "dense"])
    return labels


def detect(inputs, out, model, *extra):
    return main(detect_command(inputs, out, model, *extra, max_detections=MAX_DETECTIONS))


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def errors(captured) -> list[str]:
    return [line for line in captured.err.splitlines() if line.startswith("error:")]


# 1 ------------------------------------------------------------------------------------------------
def test_store_names_never_leave_out(tmp_path, tiny_checkpoint, images):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.save(inputs / "...npy", images)  # stem ".."
    np.save(inputs / "..npy", images)  # stem "."
    out = tmp_path / "results" / "out"
    out.mkdir(parents=True)
    decoy = tmp_path / "results" / "other" / ".notes.tmp"  # someone else's file beside --out
    decoy.parent.mkdir()
    decoy.write_text("keep me")
    before = files_under(tmp_path / "results") - files_under(out)
    assert detect([inputs], out, tiny_checkpoint) == 0
    assert files_under(tmp_path / "results") - files_under(out) == before
    assert decoy.read_text() == "keep me"
    stores = sorted(p for p in out.iterdir())
    assert len(stores) == 2 and all((p / "masks.npy").is_file() for p in stores)
    assert not any(p.name.startswith(".") for p in stores)


# 2 ------------------------------------------------------------------------------------------------
def test_a_rerun_keeps_other_writers_temporary_files(tmp_path, tiny_checkpoint, images):
    from napari_detection_qc.io.atomic import temporary_path

    np.save(tmp_path / "series.npy", images)
    out = tmp_path / "out"
    assert detect([tmp_path / "series.npy"], out, tiny_checkpoint) == 0
    frames = out / "series" / "frames"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    try:
        in_flight = temporary_path(frames / "000001.npz", pid=sleeper.pid)
        in_flight.write_bytes(b"another run is writing this frame")
        stale = temporary_path(frames / "000000.npz", pid=finished.pid)
        stale.write_bytes(b"left by a killed run")
        assert detect([tmp_path / "series.npy"], out, tiny_checkpoint) == 0
        assert in_flight.is_file() and not stale.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# 3 ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_forest():
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.random((30, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    targets = pd.DataFrame(rng.random((30, 3)), columns=list(TARGETS))
    return QualityForest(n_estimators=3).fit(features, targets)


def tamper_first_tree(forest: QualityForest, field: str, value: int) -> None:
    tree = forest.pipelines["f1"].named_steps["forest"].estimators_[0].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    nodes[field][0] = value
    tree.__setstate__({**state, "nodes": nodes})


@pytest.mark.parametrize(
    "field, value", [("left_child", 10**6), ("right_child", 0), ("feature", 500), ("feature", -7)]
)
def test_forest_with_out_of_range_tree_nodes_is_refused_before_predicting(
    tmp_path, small_forest, field, value
):
    path = small_forest.save(tmp_path / "ok.skops")
    forest = QualityForest.load(path)
    tamper_first_tree(forest, field, value)
    forest.save(tmp_path / "bad.skops")
    with pytest.raises(ForestLoadError, match="bad.skops"):
        QualityForest.load(tmp_path / "bad.skops")


def test_forest_with_the_right_tag_but_missing_keys_is_a_clear_error(tmp_path, small_forest, capsys):
    import skops.io as sio

    path = small_forest.save(tmp_path / "ok.skops")
    state = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    meta = json.loads(state["metadata_json"])
    del meta["features"]
    state["metadata_json"] = json.dumps(meta)
    sio.dump(state, tmp_path / "keyless.skops")
    with pytest.raises(ForestLoadError, match="keyless.skops"):
        QualityForest.load(tmp_path / "keyless.skops")
    del state["training_targets"]
    state["metadata_json"] = json.dumps({**meta, "features": list(small_forest.features)})
    sio.dump(state, tmp_path / "no_targets.skops")
    with pytest.raises(ForestLoadError, match="no_targets.skops"):
        QualityForest.load(tmp_path / "no_targets.skops")


# 4 ------------------------------------------------------------------------------------------------
def unshare_available() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not unshare_available(), reason="needs unshare to mount a small tmpfs")
def test_disk_full_while_assembling_masks_is_exit_3_and_leaves_no_temporary_file(tmp_path, tiny_checkpoint):
    images = np.zeros((4, 400, 400), np.uint8)
    images[:, 100:140, 100:140] = 200
    np.save(tmp_path / "big.npy", images)
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (
        "import sys, torch; torch.set_num_threads(1); from napari_detection_qc.batch.cli import main; "
        f"sys.exit(main(['detect', {str(tmp_path / 'big.npy')!r}, '--out', {str(disk / 'out')!r}, "
        f"'--model', {str(tiny_checkpoint)!r}, '--device', 'cpu', '--max-detections', '5', "
        "'--no-progress']))"
    )
    shell = (
        f'mount -t tmpfs -o size=400k tmpfs {disk} && {sys.executable} -c "{script}"; '
        f"code=$?; find {disk} -name '*.tmp'; exit $code"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    result = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=env)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "No space left" in result.stderr and "Traceback" not in result.stderr
    assert ".tmp" not in result.stdout


# 5 ------------------------------------------------------------------------------------------------
def test_a_replaced_input_is_not_served_old_detections(tmp_path, tiny_checkpoint, images, capsys):
    source = tmp_path / "series.npy"
    np.save(source, images)
    out = tmp_path / "out"
    assert detect([source], out, tiny_checkpoint) == 0
    np.save(source, images[::-1].copy())  # same name, size and shape; other pixels
    capsys.readouterr()
    assert detect([source], out, tiny_checkpoint) == 2
    (line,) = errors(capsys.readouterr())
    assert "series.npy" in line and "changed" in line


# 6 ------------------------------------------------------------------------------------------------
def test_evaluate_joins_detections_by_frame_not_by_row_order(tmp_path, tiny_checkpoint, images, truth):
    np.save(tmp_path / "series.npy", images)
    (tmp_path / "truth").mkdir()
    np.save(tmp_path / "truth" / "series.npy", truth)
    out = tmp_path / "out"
    assert detect([tmp_path / "series.npy"], out, tiny_checkpoint, "--score-threshold", "0.0") == 0
    evaluate = ["evaluate", str(out), "--ground-truth", str(tmp_path / "truth")]
    assert main([*evaluate, "--out", str(tmp_path / "sorted.csv")]) == 0
    table_path = out / "series" / "detections.csv"
    table = pd.read_csv(table_path)
    assert table["frame"].nunique() == 2
    table.iloc[::-1].to_csv(table_path, index=False)
    assert main([*evaluate, "--out", str(tmp_path / "shuffled.csv")]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "shuffled.csv"), pd.read_csv(tmp_path / "sorted.csv")
    )


# 7 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["banana", "cuda:7"])
def test_bad_or_missing_devices_are_one_line_errors(tmp_path, tiny_checkpoint, images, device, capsys):
    import torch

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    np.save(tmp_path / "series.npy", images)
    assert detect([tmp_path / "series.npy"], tmp_path / "out", tiny_checkpoint, "--device", device) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and device in err


def test_malformed_checkpoint_headers_are_one_line_errors(tmp_path, images, capsys):
    import torch

    from napari_detection_qc.engines.checkpoint import FORMAT_NAME, state_dict_sha256

    np.save(tmp_path / "series.npy", images)
    state = {"w": torch.zeros(2)}
    headers = {
        "list.pt": [1, 2, 3],
        "no_architecture.pt": {"format": FORMAT_NAME, "sha256": state_dict_sha256(state)},
        "bad_architecture.pt": {
            "format": FORMAT_NAME,
            "sha256": state_dict_sha256(state),
            "architecture": {"name": "x"},
            "input": {},
        },
        "text_version.pt": {"format": FORMAT_NAME, "format_version": "9", "sha256": "0"},
    }
    for name, header in headers.items():
        torch.save({"header": header, "state_dict": state}, tmp_path / name)
        assert detect([tmp_path / "series.npy"], tmp_path / "out", tmp_path / name) == 2, name
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and name in errors(captured)[0]


def test_out_of_memory_is_exit_3_or_skipped_with_keep_going(
    tmp_path, tiny_checkpoint, images, monkeypatch, capsys
):
    from napari_detection_qc.engines.torchvision_maskrcnn import TorchvisionDetector

    np.save(tmp_path / "a_big.npy", images)
    np.save(tmp_path / "b_small.npy", images[:1])
    original = TorchvisionDetector.predict

    def predict(self, image, **options):
        if image.sum() == images[1].sum():
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 99 GB")
        return original(self, image, **options)

    monkeypatch.setattr(TorchvisionDetector, "predict", predict)
    assert detect([tmp_path / "a_big.npy", tmp_path / "b_small.npy"], tmp_path / "stop", tiny_checkpoint) == 3
    (line,) = errors(capsys.readouterr())
    assert "a_big.npy" in line and "frame 1" in line and "memory" in line
    out = tmp_path / "go_on"
    inputs = [tmp_path / "a_big.npy", tmp_path / "b_small.npy"]
    assert detect(inputs, out, tiny_checkpoint, "--keep-going") == 1
    assert (out / "b_small" / "masks.npy").is_file() and not (out / "a_big" / "masks.npy").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("_BASE_: self.yaml\nMODEL:\n  MASK_ON: true\n", "_BASE_"),
        ("- 1\n- 2\n", "mapping"),
        ("42\n", "mapping"),
        ("a: &a [1, 1, 1]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n", "alias"),
        ("[" * 5000 + "]" * 5000, "nested"),
    ],
)
def test_hostile_detectron2_configs_are_refused(tmp_path, text, message):
    from napari_detection_qc.engines.checkpoint import DetectorLoadError
    from napari_detection_qc.engines.detectron2_checkpoint import read_config

    path = tmp_path / "self.yaml"
    path.write_text(text)
    with pytest.raises(DetectorLoadError, match=message):
        read_config(path)


def test_a_self_referencing_config_is_a_one_line_cli_error(tmp_path, images, capsys):
    (tmp_path / "loop.yaml").write_text("_BASE_: loop.yaml\n")
    (tmp_path / "model_final.pth").write_bytes(b"")
    np.save(tmp_path / "series.npy", images)
    args = ["--model", str(tmp_path / "model_final.pth"), "--config", str(tmp_path / "loop.yaml")]
    assert main(["detect", str(tmp_path / "series.npy"), "--out", str(tmp_path / "out"), *args]) == 2
    (line,) = errors(capsys.readouterr())
    assert "loop.yaml" in line


# 9 ------------------------------------------------------------------------------------------------
def test_same_file_names_in_different_folders_get_their_own_stores(tmp_path, tiny_checkpoint, images):
    for folder, frames in (("day1", images), ("day2", images[:1])):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "series.npy", frames)
    out = tmp_path / "out"
    assert detect([tmp_path / "day1", tmp_path / "day2"], out, tiny_checkpoint) == 0
    sources = sorted(json.loads(p.read_text())["source"] for p in out.glob("*/meta.json"))
    assert sources == [str(tmp_path / "day1" / "series.npy"), str(tmp_path / "day2" / "series.npy")]
    assert sorted(np.load(p).shape[0] for p in out.glob("*/masks.npy")) == [1, 2]


# 10 -----------------------------------------------------------------------------------------------
def training_table(path: Path, n: int, scale: float = 1.0) -> Path:
    rng = np.random.default_rng(2)
    table = pd.DataFrame(rng.random((n, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    table[list(TARGETS)] = rng.random((n, 3)) * scale
    table.to_csv(path, index=False)
    return path


def test_targets_outside_0_1_and_iou_0_are_refused(tmp_path, capsys):
    table = training_table(tmp_path / "percent.csv", 20, scale=100.0)
    assert main(["fit-forest", str(table), "--out", str(tmp_path / "f.skops")]) == 2
    (line,) = errors(capsys.readouterr())
    assert "percent.csv" in line and "[0, 1]" in line
    assert not (tmp_path / "f.skops").exists()
    frame = pd.read_csv(table)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        QualityForest().fit(frame, frame[list(TARGETS)])
    assert main(["evaluate", str(tmp_path), "--ground-truth", str(tmp_path), "--iou", "0"]) == 2
    assert "--iou" in capsys.readouterr().err


# 11 -----------------------------------------------------------------------------------------------
def test_cross_validation_on_few_frames_still_saves_the_forest(tmp_path, capsys):
    table = training_table(tmp_path / "six.csv", 6)
    out = tmp_path / "f.skops"
    assert main(["fit-forest", str(table), "--out", str(out), "--cv", "--trees", "5"]) == 0
    assert QualityForest.load(out).n_training == 6
    err = capsys.readouterr().err
    assert "cross-validation" in err and "got 4" not in err


# 12 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_frames", [3, 4])
def test_tiff_stack_of_3_or_4_grayscale_frames_written_with_defaults_keeps_its_frames(tmp_path, n_frames):
    stack = np.arange(n_frames * 16 * 20, dtype=np.uint16).reshape(n_frames, 16, 20)
    path = tmp_path / "stack.tif"
    with pytest.warns(DeprecationWarning):
        tifffile.imwrite(path, stack)
    info = describe(path)
    assert (info.n_frames, info.frame_shape) == (n_frames, (16, 20))
    from napari_detection_qc.io import read_frame, read_frames

    np.testing.assert_array_equal(read_frames(path)[0], stack)
    np.testing.assert_array_equal(read_frame(path, n_frames - 1), stack[-1])


def test_tiff_header_claiming_a_huge_frame_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(100000)
        tif.pages[0].tags["ImageLength"].overwrite(100000)
    with pytest.raises(InputError, match="huge.tif.*too large"):
        describe(path)


# 13 -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, tiny_checkpoint, images):
    root = tmp_path_factory.mktemp("two")
    np.save(root / "a.npy", images)
    np.save(root / "b.npy", images[:1])
    assert detect([root / "a.npy", root / "b.npy"], root / "out", tiny_checkpoint) == 0
    return root / "out"


def forest_file(tmp_path, forest) -> Path:
    return forest.save(tmp_path / "forest.skops")


@pytest.mark.parametrize("damage", ["frame", "meta", "column"])
def test_score_keep_going_names_the_tampered_file(tmp_path, two_stores, small_forest, damage, capsys):
    out = tmp_path / "out"
    shutil.copytree(two_stores, out)
    if damage == "frame":
        table = pd.read_csv(out / "a" / "detections.csv")
        table.loc[0, "frame"] = 99
        table.to_csv(out / "a" / "detections.csv", index=False)
        name = "detections.csv"
    elif damage == "column":
        pd.read_csv(out / "a" / "detections.csv").drop(columns="score").to_csv(
            out / "a" / "detections.csv", index=False
        )
        name = "detections.csv"
    else:
        meta = json.loads((out / "a" / "meta.json").read_text())
        meta["n_frames"] = "many"
        (out / "a" / "meta.json").write_text(json.dumps(meta))
        name = "meta.json"
    forest = forest_file(tmp_path, small_forest)
    quality = tmp_path / "q.csv"
    assert main(["score", str(out), "--forest", str(forest), "--keep-going", "--out", str(quality)]) == 1
    (line,) = errors(capsys.readouterr())
    assert str(out / "a" / name) in line
    assert len(pd.read_csv(quality)) == 1  # b's frame


def test_dangling_symlinks_are_reported(tmp_path, tiny_checkpoint, images, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.save(inputs / "good.npy", images[:1])
    (inputs / "gone.tif").symlink_to(tmp_path / "deleted.tif")
    assert detect([inputs], tmp_path / "out", tiny_checkpoint, "--keep-going") == 1
    (line,) = errors(capsys.readouterr())
    assert "gone.tif" in line


def test_unreadable_images_write_nothing_in_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not a png" * 30)
    with pytest.raises(InputError, match="bad.png"):
        describe(tmp_path / "bad.png")
    assert list((tmp_path / "home").iterdir()) == []


def test_local_dask_workers_write_nothing_outside_out(tmp_path, tiny_checkpoint, images):
    dask = pytest.importorskip("dask")
    pytest.importorskip("dask.distributed")
    np.save(tmp_path / "series.npy", images)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with dask.config.set({"temporary-directory": str(scratch)}):
        assert detect([tmp_path / "series.npy"], tmp_path / "out", tiny_checkpoint, "--workers", "2") == 0
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["series"]


# usage -------------------------------------------------------------------------------------------
def test_version_and_help_show_every_default(capsys):
    assert main(["--version"]) == 0
    assert napari_detection_qc.__version__ in capsys.readouterr().out
    assert main(["detect", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default: auto)",
        "else 0.1 as the forests were trained)",
        "(default: 5000)",
        "(default: 1)",
    ):
        assert default in text


def test_help_imports_neither_torch_nor_sklearn_nor_pandas():
    code = (
        "import sys; from napari_detection_qc.batch.cli import main; main(['--help']); "
        "print(sorted(m for m in ('torch', 'sklearn', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
