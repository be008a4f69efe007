"""Readers for batch mode: TIFF (with pixel sizes), PNG, NPY, DM3/DM4, folders, and clear errors."""

from __future__ import annotations

import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_detection_qc.io import InputError, describe, list_inputs, read_frame, read_frames

STACK = np.arange(3 * 16 * 20, dtype=np.uint16).reshape(3, 16, 20)


def test_imagej_tiff_gives_stack_and_pixel_size_in_nm(tmp_path):
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"unit": "nm"})
    array, pixel_size = read_frames(path)
    np.testing.assert_array_equal(array, STACK)
    assert pixel_size == pytest.approx(0.4)
    info = describe(path)
    assert (info.n_frames, info.frame_shape, info.is_2d) == (3, (16, 20), False)
    np.testing.assert_array_equal(read_frame(path, 2), STACK[2])


def test_tiff_frames_stored_back_to_back_are_read_one_by_one(tmp_path):
    path = tmp_path / "big_imagej_style.tif"
    tifffile.imwrite(path, STACK, imagej=True, truncate=True)  # one page, as ImageJ writes > 4 GB
    assert describe(path).n_frames == 3
    for index in range(3):
        np.testing.assert_array_equal(read_frame(path, index), STACK[index])
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, STACK[0], imagej=True)
    np.testing.assert_array_equal(read_frame(single, 0), STACK[0])
    compressed = tmp_path / "compressed.tif"
    tifffile.imwrite(compressed, STACK, photometric="minisblack", compression="zlib")
    np.testing.assert_array_equal(read_frame(compressed, 1), STACK[1])


def test_tiff_resolution_in_centimetres_and_microns(tmp_path):
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(
        cm, STACK, photometric="minisblack", resolution=(2.5e6, 2.5e6), resolutionunit="CENTIMETER"
    )
    assert read_frames(cm)[1] == pytest.approx(4.0)
    micron = tmp_path / "micron.tif"
    tifffile.imwrite(micron, STACK[0], imagej=True, resolution=(500, 500), metadata={"unit": "micron"})
    assert describe(micron).pixel_size_nm == pytest.approx(2.0)


def test_tiff_without_physical_resolution_has_no_pixel_size(tmp_path):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, STACK, photometric="minisblack", resolution=(72, 72), resolutionunit="INCH")
    assert read_frames(path)[1] is None


def test_rgb_tiff_and_png_are_single_frames_and_planar_tiffs_are_stacks(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    contiguous = tmp_path / "rgb.tif"
    tifffile.imwrite(contiguous, rgb, photometric="rgb")
    png = tmp_path / "image.png"
    iio.imwrite(png, rgb)
    for path in (contiguous, png):
        info = describe(path)
        assert (info.n_frames, info.frame_shape, info.is_2d) == (1, (16, 20), True)
        np.testing.assert_array_equal(read_frame(path, 0), rgb)
    # separate sample planes: the bytes tifffile writes by default for a 3-frame grayscale stack
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert describe(planar).n_frames == 3
    np.testing.assert_array_equal(read_frame(planar, 2), rgb[..., 2])


def test_npy_stack_reads_frames_without_pickles(tmp_path):
    path = tmp_path / "stack.npy"
    np.save(path, STACK)
    array, pixel_size = read_frames(path)
    np.testing.assert_array_equal(array, STACK)
    assert pixel_size is None
    np.testing.assert_array_equal(read_frame(path, 1), STACK[1])
    hostile = tmp_path / "objects.npy"
    np.save(hostile, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="objects.npy"):
        describe(hostile)


def test_corrupt_and_misshapen_files_raise_input_error_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"not a tiff" * 10)
    four_d = tmp_path / "volume.npy"
    np.save(four_d, np.zeros((2, 2, 8, 8), np.uint8))
    for path in (corrupt, four_d):
        with pytest.raises(InputError, match=path.name):
            read_frames(path)
    with pytest.raises(InputError, match="unsupported"):
        describe(tmp_path / "notes.txt")


def test_folder_lists_supported_files_sorted(tmp_path):
    for name in ("b.npy", "a.tif", "c.PNG", "notes.txt", "d.emi", "d_1.ser"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_inputs(tmp_path)] == ["a.tif", "b.npy", "c.PNG", "d_1.ser"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no supported images"):
        list_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        list_inputs(tmp_path / "missing.tif")


def test_dm4_pixel_size_from_the_x_axis(tmp_path, monkeypatch):
    """rosettasciio's DM reader is replaced by its output format (no DM test files ship with it)."""
    rsciio_dm = pytest.importorskip("rsciio.digitalmicrograph")
    data = STACK.astype(np.float32)
    signal = {
        "data": data,
        "axes": [
            {"name": "time", "size": 3, "index_in_array": 0, "scale": 1.0, "units": "s"},
            {"name": "y", "size": 16, "index_in_array": 1, "scale": 0.002, "units": "µm"},
            {"name": "x", "size": 20, "index_in_array": 2, "scale": 0.002, "units": "µm"},
        ],
    }
    monkeypatch.setattr(rsciio_dm, "file_reader", lambda filename, lazy=False: [signal])
    path = tmp_path / "series.dm4"
    path.write_bytes(b"")
    array, pixel_size = read_frames(path)
    np.testing.assert_array_equal(array, data)
    assert pixel_size == pytest.approx(2.0)
    np.testing.assert_array_equal(read_frame(path, 1), data[1])
    signal["axes"][-1]["units"] = "1/nm"  # a diffraction pattern: not a length
    assert describe(path).pixel_size_nm is None


def test_dm_file_without_rosettasciio_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)
    path = tmp_path / "image.dm3"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="image.dm3.*rosettasciio"):
        describe(path)
