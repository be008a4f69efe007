"""Batch mode: detect into a resumable store (serial and on Dask), score, evaluate, fit-forest, demo.

A small random-initialised detector stands in for the bundled model, and a 20-tree forest fitted on
random numbers for the bundled forests, so these tests run without either being installed.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import detect_command

from napari_detection_qc.batch.cli import main
from napari_detection_qc.batch.run import detect as run_detect_module
from napari_detection_qc.batch.run import detector as run_detector
from napari_detection_qc.batch.run.quality import read_training_table
from napari_detection_qc.batch.store import DETECTION_COLUMNS, Store
from napari_detection_qc.batch.store import format as store_format
from napari_detection_qc.detections.records import FrameDetections, StackDetections
from napari_detection_qc.engines import load_detector
from napari_detection_qc.engines.torchvision_maskrcnn import (
    build_maskrcnn,
    save_model,
)
from napari_detection_qc.io import InputError
from napari_detection_qc.io.atomic import atomic_path
from napari_detection_qc.quality.counts import COUNT_COLUMNS, with_count_estimates
from napari_detection_qc.quality.features import (
    CANDIDATE_FEATURES,
    PAPER_FEATURES,
    frame_features,
    mask_circularities,
    table_features,
)
from napari_detection_qc.quality.forest import TARGETS, QualityForest
from napari_detection_qc.quality.p_true import detection_p_true
from napari_detection_qc.quality.ranking import frame_values
from napari_detection_qc.quality.scoring import QUALITY_COLUMNS, TRUE_COLUMNS, predicted_quality, true_quality
from napari_detection_qc.quality.signals import EMBEDDING
from napari_detection_qc.synthetic import make_stack

MAX_DETECTIONS = 40  # keeps the random detector's mask pasting cheap


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="session")
def forest_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.random((40, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    targets = pd.DataFrame(rng.random((40, 3)), columns=list(TARGETS))
    return (
        QualityForest(n_estimators=20)
        .fit(features, targets)
        .save(tmp_path_factory.mktemp("forest") / "f.skops")
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A 3-frame 128 x 128 stack (.npy) and its ground truth (.npy), in their own folders."""
    images, labels = make_stack(7, 3, (128, 128), ["clean", "dense", "clean"])
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "truth").mkdir()
    np.save(root / "images" / "series.npy", images.astype(np.uint8))
    np.save(root / "truth" / "series.npy", labels)
    return root / "images" / "series.npy", root / "truth" / "series.npy"


def detect_args(inputs, out, model, *extra):
    return detect_command(inputs, out, model, *extra, max_detections=MAX_DETECTIONS)


@pytest.fixture(scope="module")
def detected(tmp_path_factory, tiny_model, stack):
    """The serial run every other test compares with."""
    out = tmp_path_factory.mktemp("detected")
    assert main(detect_args([stack[0]], out, tiny_model)) == 0
    return out / "series"


def stored_stack(store_root) -> StackDetections:
    """The store's frames back as detections, from the per-frame files."""
    frames = []
    for path in sorted((store_root / "frames").glob("*.npz")):
        with np.load(path) as frame:
            frames.append(FrameDetections(frame["boxes"], frame["scores"], frame["labels"]))
    return StackDetections.from_frames(frames)


def all_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- detect ----------------------------------------------------------------------------------------
def test_detect_stores_what_the_detector_finds(detected, tiny_model, stack):
    detector = load_detector(tiny_model, device="cpu", max_detections=MAX_DETECTIONS)
    images = np.load(stack[0])
    stored = stored_stack(detected)
    assert len(stored) == 3 and stored.total_count > 0
    sizes = Store(detected).object_sizes()
    for t, (image, frame) in enumerate(zip(images, stored)):
        expected = detector.predict(image)
        assert sizes[t] == detector.last_object_sizes[0]
        np.testing.assert_array_equal(frame.boxes, expected.boxes)
        np.testing.assert_array_equal(frame.scores, expected.scores)
        np.testing.assert_array_equal(frame.labels, expected.labels)
    masks = np.load(detected / "masks.npy")
    assert masks.shape == (3, 128, 128) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks, np.stack([f.labels for f in stored]))
    with tifffile.TiffFile(detected / "masks.tif") as tif:  # the same masks for Fiji
        assert tif.is_imagej
        np.testing.assert_array_equal(tif.asarray(), masks)
    table = pd.read_csv(detected / "detections.csv")
    assert list(table.columns) == [*DETECTION_COLUMNS, "p_true"]
    assert len(table) == stored.total_count
    for t, frame in enumerate(stored):  # one frame's p_true depends on its own detections only
        np.testing.assert_allclose(
            table.loc[table.frame == t, "p_true"], detection_p_true(frame.scores), rtol=1e-12
        )
    first = stored[0]
    np.testing.assert_allclose(
        table.loc[table.frame == 0, "circularity"],
        mask_circularities(first.labels, np.arange(1, first.count + 1)),
    )
    meta = Store(detected).read_meta()
    assert meta["n_frames"] == 3 and meta["image_shape"] == [128, 128] and meta["pixel_size_nm"] is None
    assert meta["detector"]["detector"] == "tiny-random" and meta["score_threshold"] == 0.1
    assert not [p for p in all_files(detected) if p.name.endswith(".tmp")]


def test_frames_table_keeps_each_frames_object_size_and_names_the_odd_one(tmp_path, monkeypatch, capsys):
    store = Store(tmp_path / "series")
    store.frames_dir.mkdir(parents=True)
    sizes = [20.0, 22.0, None, 24.0, 120.0]
    for t, size in enumerate(sizes):
        store_format.write_frame(store.frame_path(t), FrameDetections.empty((16, 16)), size)
    with np.load(store.frame_path(0)) as frame:  # a frame file from before sizes were stored
        np.savez(store.frame_path(5), **{k: frame[k] for k in frame.files if k != "object_size_px"})
    store_format.assemble(store, 6, (16, 16))
    assert store.object_sizes() == dict(enumerate([*sizes, None]))
    assert list(pd.read_csv(store.frames_table_path)["detections"]) == [0] * 6


def test_detect_reports_inputs_whose_frames_are_sized_apart(tmp_path, tiny_model, stack, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(
        run_detect_module, "outlier_warning", lambda sizes: seen.append(sizes) or "sized apart"
    )
    assert main(detect_args([stack[0]], tmp_path / "out", tiny_model)) == 0
    assert f"warning: {stack[0]}: sized apart" in capsys.readouterr().err and list(seen[0]) == [0, 1, 2]
    assert main(detect_args([stack[0]], tmp_path / "again", tiny_model, "--object-size", "20")) == 0
    assert "sized apart" not in capsys.readouterr().err  # a size set by hand is not questioned


def test_rerun_skips_done_frames_and_redoes_missing_ones(tmp_path, tiny_model, stack, capsys):
    out = tmp_path / "out"
    assert main(detect_args([stack[0]], out, tiny_model)) == 0
    store = Store(out / "series")
    mtimes = {p: p.stat().st_mtime_ns for p in all_files(store.root) if p.suffix == ".npz"}
    capsys.readouterr()
    assert main(detect_args([stack[0]], out, tiny_model)) == 0
    assert "0 frame(s) detected, 3 already done" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    store.frame_path(1).unlink()
    store.table_path.unlink()
    assert main(detect_args([stack[0]], out, tiny_model)) == 0
    assert "1 frame(s) detected, 2 already done" in capsys.readouterr().err
    assert store.frame_path(0).stat().st_mtime_ns == mtimes[store.frame_path(0)]
    assert store.is_complete


def test_interrupted_run_leaves_no_partial_files_and_resumes(
    tmp_path, tiny_model, stack, monkeypatch, capsys
):
    calls = []

    def interrupt_on_second_frame(labels, ids):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return mask_circularities(labels, ids)

    monkeypatch.setattr(store_format, "mask_circularities", interrupt_on_second_frame)
    out = tmp_path / "out"
    assert main(detect_args([stack[0]], out, tiny_model)) == 130
    store = Store(out / "series")
    assert [p.name for p in store.frames_dir.iterdir()] == ["000000.npz"]
    assert not store.table_path.exists() and not store.masks_path.exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(detect_args([stack[0]], out, tiny_model)) == 0
    assert "2 frame(s) detected, 1 already done" in capsys.readouterr().err
    assert not [p for p in all_files(out) if p.name.endswith(".tmp")]


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old" and all_files(tmp_path) == [target]


def test_corrupt_file_stops_the_run_or_is_skipped_with_keep_going(tmp_path, tiny_model, stack, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    images = np.load(stack[0])
    np.save(folder / "a_good.npy", images[:2])
    (folder / "b_corrupt.tif").write_bytes(b"this is no tiff" * 20)
    np.save(folder / "c_good.npy", images[2])
    with_nan = images[:2].astype(np.float32)
    with_nan[1, 5, 5] = np.nan  # readable, but no detector takes this frame
    np.save(folder / "d_nan_frame.npy", with_nan)
    tifffile.imwrite(
        folder / "e_scaled.tif", images[0], imagej=True, resolution=(2.5, 2.5), metadata={"unit": "nm"}
    )
    assert main(detect_args([folder], tmp_path / "stop", tiny_model)) == 2
    assert "b_corrupt.tif" in capsys.readouterr().err
    assert not (tmp_path / "stop" / "c_good").exists()

    out = tmp_path / "go_on"
    assert main(detect_args([folder], out, tiny_model, "--keep-going")) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "b_corrupt.tif" in errors[0] and "d_nan_frame.npy: frame 1" in errors[1]
    assert Store(out / "a_good").is_complete and Store(out / "c_good").is_complete
    assert np.load(out / "c_good" / "masks.npy").shape == (1, 128, 128)
    assert not (out / "b_corrupt").exists() and not Store(out / "d_nan_frame").is_complete
    assert Store(out / "e_scaled").read_meta()["pixel_size_nm"] == pytest.approx(0.4)


def test_dask_cluster_gives_the_serial_results(tmp_path, detected, tiny_model, stack):
    distributed = pytest.importorskip("dask.distributed")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    out = tmp_path / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert main(detect_args([stack[0]], out, tiny_model, "--scheduler", cluster.scheduler_address)) == 0
        with Client(cluster) as client:
            loaded = client.run(lambda: len(run_detector._loaded_detectors))
    assert sum(loaded.values()) >= 1 and max(loaded.values()) == 1  # one model per worker, not per frame
    for name in ("detections.csv", "masks.npy"):
        assert (out / "series" / name).read_bytes() == (detected / name).read_bytes()


def test_detect_reads_microscope_formats_frame_by_frame_with_their_pixel_size(
    tmp_path, detected, tiny_model, stack
):
    """The same frames as an MRC stack (0.4 nm in its header) and a zarr folder give the same
    detections as the .npy; the MRC's pixel size reaches the store and its calibrated masks.tif."""
    mrcfile = pytest.importorskip("mrcfile")
    zarr = pytest.importorskip("zarr")
    images = np.load(stack[0])
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    with mrcfile.new(inputs / "series_mrc.mrc") as mrc:
        mrc.set_data(images)
        mrc.voxel_size = 4.0
    zarr.save_array(str(inputs / "series_zarr.zarr"), images)
    out = tmp_path / "formats"
    assert main(detect_args([inputs], out, tiny_model)) == 0
    expected = np.load(detected / "masks.npy")
    for name, pixel_size in (("series_mrc", 0.4), ("series_zarr", None)):
        np.testing.assert_array_equal(np.load(out / name / "masks.npy"), expected)
        assert json.loads((out / name / "meta.json").read_text())["pixel_size_nm"] == (
            pytest.approx(pixel_size) if pixel_size else None
        )
    with tifffile.TiffFile(out / "series_mrc" / "masks.tif") as tif:
        assert tif.imagej_metadata["unit"] == "nm"
        assert tif.pages[0].tags["XResolution"].value[1] / tif.pages[0].tags["XResolution"].value[
            0
        ] == pytest.approx(0.4)


def test_workers_option_gives_the_serial_results(tmp_path, detected, tiny_model, stack):
    pytest.importorskip("dask.distributed")
    out = tmp_path / "workers"
    assert main(detect_args([stack[0]], out, tiny_model, "--workers", "2")) == 0
    for name in ("detections.csv", "masks.npy"):
        assert (out / "series" / name).read_bytes() == (detected / name).read_bytes()


def test_store_of_another_detector_is_refused(tmp_path, detected, stack, tiny_model, capsys):
    other = tmp_path / "other.pt"
    header = load_detector(tiny_model, device="cpu").header
    save_model(other, build_maskrcnn(header["architecture"]).eval(), {**header, "name": "other"})
    assert main(detect_args([stack[0]], detected.parent, other)) == 2
    assert "another detector" in capsys.readouterr().err


# -- features from the table -----------------------------------------------------------------------
def test_table_features_equal_frame_features():
    rng = np.random.default_rng(3)
    shape = (64, 80)
    edge_scores = np.array([0.05, 0.1, 0.2, 0.3, 0.6, 0.7, 0.9, 1.0, 0.29999999999999999, 0.8999999])
    rows, expected = [], []
    for t in range(7):
        count = 0 if t in (0, 4) else int(rng.integers(1, 12))
        corner = rng.uniform(-10, 70, (count, 2))
        boxes = np.concatenate(
            [corner, corner + rng.uniform(0, 25, (count, 2))], axis=1
        )  # some leave the image
        scores = rng.choice(edge_scores, count) if t % 2 else rng.uniform(0, 1, count)
        labels = np.zeros(shape, np.uint16)
        for i in range(count):
            if i % 3 != 2:  # every third detection has an empty mask (NaN circularity)
                y, x = rng.integers(0, 56), rng.integers(0, 72)
                labels[y : y + int(rng.integers(2, 8)), x : x + int(rng.integers(2, 8))] = i + 1
        circularity = mask_circularities(labels, np.arange(1, count + 1))
        rows.append(
            pd.DataFrame(
                {
                    "frame": t,
                    "label": np.arange(1, count + 1),
                    "y_min": boxes[:, 0],
                    "x_min": boxes[:, 1],
                    "y_max": boxes[:, 2],
                    "x_max": boxes[:, 3],
                    "score": scores,
                    "circularity": circularity,
                }
            )
        )
        expected.append(frame_features(boxes, scores, labels))
    got = table_features(pd.concat(rows, ignore_index=True), 7, shape)
    want = pd.DataFrame(expected, columns=list(CANDIDATE_FEATURES))
    assert list(got.columns) == list(CANDIDATE_FEATURES)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12, atol=1e-12)
    assert (got.loc[[0, 4]] == 0).all().all()


# -- score, evaluate, fit-forest --------------------------------------------------------------------
def test_score_writes_predicted_quality_per_frame(tmp_path, detected, forest_file):
    out = tmp_path / "quality.csv"
    assert main(["score", str(detected.parent), "--forest", str(forest_file), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["source", *QUALITY_COLUMNS, *COUNT_COLUMNS]  # no pixel size: no density
    expected, _ = predicted_quality(stored_stack(detected), QualityForest.load(forest_file))
    assert len(table) == 3 and table["source"].str.endswith("series.npy").all()
    np.testing.assert_allclose(table[list(QUALITY_COLUMNS)].astype(float), expected.astype(float), rtol=1e-9)
    counts = with_count_estimates(expected)  # the viewer's formula
    np.testing.assert_allclose(table[list(COUNT_COLUMNS[:3])], counts[list(COUNT_COLUMNS[:3])], rtol=1e-9)
    assert (table["count_low"] <= table["count_estimate"]).all()
    assert (table["count_estimate"] <= table["count_high"]).all()


def test_rank_writes_every_frame_best_first(tmp_path, detected, forest_file):
    out = tmp_path / "next.csv"
    assert main(["rank", str(detected.parent), "--forest", str(forest_file), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["source", "frame", "reason"]
    assert sorted(table["frame"]) == [0, 1, 2] and table["reason"].str.contains("predicted F1").all()
    scored = tmp_path / "quality.csv"
    assert main(["score", str(detected.parent), "--forest", str(forest_file), "--out", str(scored)]) == 0
    quality = pd.read_csv(scored)
    assert table["frame"].iloc[0] == quality["frame"].iloc[int(np.argmax(frame_values(quality)))]


def test_score_warns_when_the_forest_belongs_to_another_detector(tmp_path, detected, forest_file, capsys):
    forest = QualityForest.load(forest_file)
    forest.detector = {"detector": "someone-else", "weights_sha256": "0" * 64}
    other = forest.save(tmp_path / "other.skops")
    assert main(["score", str(detected), "--forest", str(other), "--out", str(tmp_path / "q.csv")]) == 0
    assert "warning:" in capsys.readouterr().err
    assert main(["score", str(detected), "--forest", str(tmp_path / "missing.skops")]) == 2


def test_evaluate_equals_true_quality_and_adds_features(tmp_path, detected, stack):
    out = tmp_path / "evaluation.csv"
    truth_folder = stack[1].parent
    assert (
        main(
            [
                "evaluate",
                str(detected.parent),
                "--ground-truth",
                str(truth_folder),
                "--with-features",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert list(table.columns) == ["source", *TRUE_COLUMNS, *CANDIDATE_FEATURES]
    expected = true_quality(stored_stack(detected), np.load(stack[1]))
    pd.testing.assert_frame_equal(table[list(TRUE_COLUMNS)], expected, check_dtype=False)
    assert (table["n_true"] > 0).all()
    read_training_table(out, CANDIDATE_FEATURES)  # ready for fit-forest


def test_fit_forest_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(1)
    table = pd.DataFrame(rng.random((30, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    table[list(TARGETS)] = rng.random((30, 3))
    table["group"] = np.repeat(["a", "b", "c"], 10)
    table.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "forest.skops"
    args = [
        "fit-forest",
        str(tmp_path / "train.csv"),
        "--out",
        str(out),
        "--features",
        "count,mean_score,area_ratio",
        "--trees",
        "10",
        "--cv",
        "--cv-repeats",
        "1",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "random 5-fold" in printed and "leave one group out" in printed
    loaded = QualityForest.load(out)
    assert loaded.features == ("count", "mean_score", "area_ratio") and loaded.training_groups[0] == "a"
    direct = QualityForest(features=loaded.features, n_estimators=10).fit(table, table)
    pd.testing.assert_frame_equal(loaded.predict(table), direct.predict(table))
    assert main(["fit-forest", str(tmp_path / "train.csv"), "--out", str(out), "--features", "nonsense"]) == 2


# -- demo and usage --------------------------------------------------------------------------------
def test_demo_prints_the_per_frame_table(tiny_model, forest_file, capsys):
    assert (
        main(
            [
                "demo",
                "--frames",
                "2",
                "--model",
                str(tiny_model),
                "--forest",
                str(forest_file),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "predicted F1" in printed and "true F1" in printed and "mean absolute error" in printed
    assert "clean" in printed


def test_demo_without_a_forest_still_shows_true_quality(tiny_model, tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--frames",
                "1",
                "--model",
                str(tiny_model),
                "--forest",
                str(tmp_path / "none.skops"),
                "--no-progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "no predicted quality" in captured.err
    assert "true F1" in captured.out and "predicted F1" not in captured.out


# -- detector signals --------------------------------------------------------------------------------
def test_detect_with_signals_stores_them_and_score_uses_them(tmp_path, tiny_model, stack, detected, capsys):
    out = tmp_path / "signals"
    assert main(detect_args([stack[0]], out, tiny_model, "--signals", "cheap")) == 0
    store = Store(out / "series")
    assert store.read_meta()["signals"] == "cheap"
    detector = load_detector(tiny_model, device="cpu", max_detections=MAX_DETECTIONS)
    frames = [detector.predict(frame, signals="cheap") for frame in np.load(stack[0])]
    stored = store.read_signals(3)
    for frame, signals in zip(frames, stored):
        np.testing.assert_array_equal(signals[EMBEDDING], frame.signals[EMBEDDING])
    bare = tmp_path / "bare"
    assert main(detect_args([stack[0]], bare, tiny_model, "--signals", "none")) == 0
    bare = bare / "series"
    assert Store(bare).read_signals(3) is None  # a store detected without signals
    assert Store(detected).read_meta()["signals"] == "cheap"  # the default

    # a forest fitted with embeddings near these frames', novelty among its features
    rng = np.random.default_rng(1)
    embeddings = np.stack([s[EMBEDDING] for s in stored]).astype(np.float64)
    training = embeddings[rng.integers(0, 3, 40)] + rng.normal(0, 0.05, (40, embeddings.shape[1]))
    features = pd.DataFrame(rng.random((40, len(CANDIDATE_FEATURES))), columns=list(CANDIDATE_FEATURES))
    targets = pd.DataFrame(rng.random((40, 3)), columns=list(TARGETS))
    novelty_forest = QualityForest(PAPER_FEATURES + ("novelty",), n_estimators=20).fit(
        features, targets, embeddings=training
    )
    forest_path = novelty_forest.save(tmp_path / "novelty.skops")
    quality = tmp_path / "quality.csv"
    assert main(["score", str(out), "--forest", str(forest_path), "--out", str(quality)]) == 0
    expected, _ = predicted_quality(StackDetections.from_frames(frames), QualityForest.load(forest_path))
    table = pd.read_csv(quality)
    np.testing.assert_allclose(table[list(QUALITY_COLUMNS)].astype(float), expected.astype(float), rtol=1e-9)

    # detections without embeddings: a clear error for a forest whose features need them ...
    capsys.readouterr()
    assert main(["score", str(bare), "--forest", str(forest_path), "--out", str(quality)]) == 2
    assert "detect again with --signals cheap" in capsys.readouterr().err
    # ... and a warned fallback for one that uses them only for its domain flag
    domain_forest = QualityForest(PAPER_FEATURES, n_estimators=20).fit(features, targets, embeddings=training)
    domain_path = domain_forest.save(tmp_path / "domain.skops")
    assert main(["score", str(bare), "--forest", str(domain_path), "--out", str(quality)]) == 0
    assert "feature rows only" in capsys.readouterr().err
    # a store keeps the signals it was made with
    assert main(detect_args([stack[0]], out, tiny_model, "--signals", "all")) == 2
    assert "--signals cheap" in capsys.readouterr().err


def test_damaged_signals_of_a_store_are_an_input_error(tmp_path):
    store = Store(tmp_path)
    np.savez(store.signals_path, tta_iou=np.array([0.5, 2.0]), embedding=np.zeros((2, 4)))
    with pytest.raises(InputError, match="damaged signals: tta_iou"):
        store.read_signals(2)
    np.savez(store.signals_path, tta_iou=np.array([0.5, np.nan]), embedding=np.zeros((3, 4)))
    with pytest.raises(InputError, match="damaged signals: embedding"):
        store.read_signals(2)
    np.savez(
        store.signals_path, tta_iou=np.array([0.5, np.nan]), embedding=np.array([[0.0, 1.0], [np.nan, 0.0]])
    )
    first, second = store.read_signals(2)
    assert first["tta_iou"] == 0.5 and "tta_iou" not in second and EMBEDDING not in second


def test_usage_errors_exit_2(tmp_path, tiny_model, capsys):
    assert main([]) == 2
    (tmp_path / "notes.txt").write_text("x")
    assert main(detect_args([tmp_path / "notes.txt"], tmp_path / "out", tiny_model)) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert main(["score", str(tmp_path)]) == 2


def test_second_look_is_on_unless_switched_off():
    from napari_detection_qc.batch.cli import build_parser, detector_spec

    parser = build_parser()
    assert detector_spec(parser.parse_args(["detect", "x.tif", "--out", "o"])).second_look
    spec = detector_spec(parser.parse_args(["detect", "x.tif", "--out", "o", "--no-second-look"]))
    assert not spec.second_look
    detector = spec.load()
    assert detector.verifier is None and detector.metadata()["second_look"] is False


def test_object_size_option_is_parsed_and_checked():
    from napari_detection_qc.batch.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["detect", "x.tif", "--out", "o"]).object_size is None
    assert parser.parse_args(["detect", "x.tif", "--out", "o", "--object-size", "35"]).object_size == 35.0
    for bad in ("-3", "0", "big", "inf"):
        with pytest.raises(SystemExit):
            parser.parse_args(["detect", "x.tif", "--out", "o", "--object-size", bad])
