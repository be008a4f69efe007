"""Microscope formats with their pixel sizes, written by the libraries that write them (tifffile,
mrcfile, rosettasciio, zarr); read-only formats (Velox EMD, TIA SER, DM) through rosettasciio's
output form. Unknown, contradictory or unit-less pixel sizes leave the size unknown with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_detection_qc.io import describe, open_micrograph, read_frame, read_frames

STACK = np.arange(3 * 16 * 20, dtype=np.uint16).reshape(3, 16, 20)
FEI_TAG, ZEISS_SEM_TAG = 34682, 34118


def fei_text(pixel_width_m: float) -> str:
    return f"[User]\nUser=lab\n[Scan]\nPixelWidth={pixel_width_m}\nPixelHeight={pixel_width_m}\n"


def test_fei_tiff_pixel_size_from_its_metadata(tmp_path):
    path = tmp_path / "thermo.tif"
    tifffile.imwrite(path, STACK[0], extratags=[(FEI_TAG, "s", 0, fei_text(4e-10), True)])
    opened = open_micrograph(path)
    assert opened.pixel_size.nm == pytest.approx(0.4)
    assert opened.pixel_size.source == "FEI metadata" and opened.pixel_size.note == ""


def test_zeiss_sem_tiff_pixel_size(tmp_path):
    path = tmp_path / "zeiss.tif"
    text = "\r\n".join(["0", "AP_IMAGE_PIXEL_SIZE", "Image Pixel Size = 2.5 nm", "AP_WD", "WD = 5.0 mm", ""])
    tifffile.imwrite(path, STACK[0], extratags=[(ZEISS_SEM_TAG, "s", 0, text, True)])
    assert describe(path).pixel_size_nm == pytest.approx(2.5)


def test_ome_tiff_pixel_size_in_its_unit_and_the_default_micrometre(tmp_path):
    in_nm = tmp_path / "nm.ome.tif"
    tifffile.imwrite(
        in_nm,
        STACK,
        ome=True,
        metadata={
            "axes": "TYX",
            "PhysicalSizeX": 0.4,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.4,
            "PhysicalSizeYUnit": "nm",
        },
    )
    opened = open_micrograph(in_nm)
    assert opened.pixel_size.nm == pytest.approx(0.4) and opened.pixel_size.source == "OME metadata"
    assert opened.n_frames == 3
    default_unit = tmp_path / "um.ome.tif"
    tifffile.imwrite(
        default_unit,
        STACK[0],
        ome=True,
        metadata={"axes": "YX", "PhysicalSizeX": 0.002, "PhysicalSizeY": 0.002},
    )
    assert describe(default_unit).pixel_size_nm == pytest.approx(2.0)
    mixed_units = tmp_path / "mixed.ome.tif"
    tifffile.imwrite(
        mixed_units,
        STACK[0],
        ome=True,
        metadata={
            "axes": "YX",
            "PhysicalSizeX": 0.4,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.0004,
            "PhysicalSizeYUnit": "µm",
        },
    )
    assert describe(mixed_units).pixel_size_nm == pytest.approx(0.4)


def test_two_different_pixel_sizes_leave_it_unknown_with_the_reason(tmp_path):
    path = tmp_path / "fiji_resaved.tif"
    tifffile.imwrite(
        path,
        STACK[0],
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"unit": "nm"},
        extratags=[(FEI_TAG, "s", 0, fei_text(4e-10), True)],
    )
    info = describe(path)
    assert info.pixel_size_nm is None
    assert (
        "contradictory" in info.pixel_size_note
        and "0.4" in info.pixel_size_note
        and "0.5" in info.pixel_size_note
    )
    agreeing = tmp_path / "agreeing.tif"
    tifffile.imwrite(
        agreeing,
        STACK[0],
        imagej=True,
        resolution=(1 / 0.4, 1 / 0.4),
        metadata={"unit": "nm"},
        extratags=[(FEI_TAG, "s", 0, fei_text(4e-10), True)],
    )
    opened = open_micrograph(agreeing)
    assert opened.pixel_size.nm == pytest.approx(0.4)
    assert "FEI" in opened.pixel_size.source and "ImageJ" in opened.pixel_size.source


def test_unknown_unit_and_non_square_pixels_leave_it_unknown(tmp_path):
    furlong = tmp_path / "odd_unit.tif"
    tifffile.imwrite(furlong, STACK[0], imagej=True, resolution=(2.0, 2.0), metadata={"unit": "furlong"})
    info = describe(furlong)
    assert (
        info.pixel_size_nm is None
        and "furlong" in info.pixel_size_note
        and "not a length" in info.pixel_size_note
    )
    stretched = tmp_path / "stretched.tif"
    tifffile.imwrite(stretched, STACK[0], imagej=True, resolution=(1 / 0.4, 1 / 0.8), metadata={"unit": "nm"})
    assert "not square" in describe(stretched).pixel_size_note
    uncalibrated = tmp_path / "pixels.tif"
    tifffile.imwrite(uncalibrated, STACK[0], imagej=True, metadata={"unit": "pixel"})
    info = describe(uncalibrated)
    assert info.pixel_size_nm is None and info.pixel_size_note == "the file records no pixel size"


def test_tiff_stacks_open_lazily_one_chunk_per_frame(tmp_path):
    da = pytest.importorskip("dask.array")
    for name, options in (
        ("plain.tif", {"photometric": "minisblack"}),
        ("zlib.tif", {"photometric": "minisblack", "compression": "zlib"}),
    ):
        path = tmp_path / name
        tifffile.imwrite(path, STACK, **options)
        opened = open_micrograph(path)
        assert isinstance(opened.data, da.Array) and opened.data.chunks[0] == (1, 1, 1)
        np.testing.assert_array_equal(np.asarray(opened.data[2]), STACK[2])
        np.testing.assert_array_equal(read_frame(path, 1), STACK[1])
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, STACK[0])
    assert isinstance(open_micrograph(single).data, np.ndarray)


def test_mrc_stack_with_voxel_size_in_angstrom(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    path = tmp_path / "tilt.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(STACK.astype(np.int16))
        mrc.voxel_size = 4.0  # Å
    opened = open_micrograph(path)
    assert (opened.n_frames, opened.frame_shape) == (3, (16, 20))
    assert opened.pixel_size.nm == pytest.approx(0.4) and opened.pixel_size.source == "MRC header"
    np.testing.assert_array_equal(read_frame(path, 2), STACK[2])
    uncalibrated = tmp_path / "image.mrc"
    with mrcfile.new(uncalibrated) as mrc:
        mrc.set_data(STACK[0].astype(np.float32))
    info = describe(uncalibrated)
    assert info.is_2d and info.pixel_size_nm is None


def test_emd_and_tvips_written_by_rosettasciio(tmp_path):
    pytest.importorskip("h5py")
    rsciio_emd = pytest.importorskip("rsciio.emd")
    rsciio_tvips = pytest.importorskip("rsciio.tvips")
    signal = {
        "data": STACK,
        "axes": [
            {"name": "t", "size": 3, "scale": 1.0, "offset": 0.0, "units": "s", "navigate": True},
            {"name": "y", "size": 16, "scale": 2.0, "offset": 0.0, "units": "nm", "navigate": False},
            {"name": "x", "size": 20, "scale": 2.0, "offset": 0.0, "units": "nm", "navigate": False},
        ],
        "metadata": {"General": {"title": "series"}, "Signal": {"signal_type": ""}},
        "original_metadata": {},
        "attributes": {"_lazy": False},
    }
    emd = tmp_path / "series.emd"
    rsciio_emd.file_writer(str(emd), signal)
    rsciio_tvips.file_writer(str(tmp_path / "movie.tvips"), signal, show_progressbar=False)
    info = describe(emd)
    assert (info.n_frames, info.frame_shape, info.pixel_size_nm) == (3, (16, 20), pytest.approx(2.0))
    np.testing.assert_array_equal(read_frame(emd, 1), STACK[1])
    # rosettasciio's TVIPS writer stores the pixel size as a whole number: only the frames are checked
    movie = open_micrograph(tmp_path / "movie_000.tvips")
    assert (movie.n_frames, movie.frame_shape) == (3, (16, 20))
    np.testing.assert_array_equal(np.asarray(movie.data[2]), STACK[2])


@pytest.mark.parametrize("suffix, plugin", [(".emd", "emd"), (".ser", "tia"), (".dm4", "digitalmicrograph")])
def test_read_only_formats_take_the_image_not_the_spectrum(tmp_path, monkeypatch, suffix, plugin):
    """rosettasciio's readers for these formats have no writer: their output form stands in (a
    Velox file holding a spectrum image and an image series, in µm)."""
    module = pytest.importorskip(f"rsciio.{plugin}")
    spectrum = {
        "data": np.zeros((4, 4, 32)),
        "axes": [
            {"size": 4, "index_in_array": 0, "scale": 1.0, "units": "nm", "navigate": True},
            {"size": 4, "index_in_array": 1, "scale": 1.0, "units": "nm", "navigate": True},
            {"size": 32, "index_in_array": 2, "scale": 10.0, "units": "eV", "navigate": False},
        ],
    }
    series = {
        "data": STACK,
        "axes": [
            {"size": 3, "index_in_array": 0, "scale": 0.5, "units": "s", "navigate": True},
            {"size": 16, "index_in_array": 1, "scale": 0.0015, "units": "µm", "navigate": False},
            {"size": 20, "index_in_array": 2, "scale": 0.0015, "units": "µm", "navigate": False},
        ],
    }
    monkeypatch.setattr(module, "file_reader", lambda filename, lazy=False, **options: [spectrum, series])
    path = tmp_path / f"microscope{suffix}"
    path.write_bytes(b"")
    array, pixel_size = read_frames(path)
    np.testing.assert_array_equal(array, STACK)
    assert pixel_size == pytest.approx(1.5)
    monkeypatch.setattr(module, "file_reader", lambda filename, lazy=False, **options: [spectrum])
    with pytest.raises(Exception, match="holds no image"):
        describe(path)


def test_zarr_array_and_ome_zarr_with_its_scale(tmp_path):
    zarr = pytest.importorskip("zarr")
    plain = tmp_path / "plain.zarr"
    zarr.save_array(str(plain), STACK)
    info = describe(plain)
    assert (info.n_frames, info.pixel_size_nm) == (3, None)
    np.testing.assert_array_equal(read_frame(plain, 2), STACK[2])
    ome = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(ome), mode="w")
    group.create_array("0", data=STACK[None]) if hasattr(group, "create_array") else group.array(
        "0", STACK[None]
    )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "t", "type": "time"},
                {"name": "y", "type": "space", "unit": "nanometer"},
                {"name": "x", "type": "space", "unit": "nanometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.4, 0.4]}]}
            ],
        }
    ]
    opened = open_micrograph(ome)
    assert (opened.n_frames, opened.frame_shape) == (3, (16, 20))
    assert opened.pixel_size.nm == pytest.approx(0.4)
    np.testing.assert_array_equal(np.asarray(opened.data[1]), STACK[1])


def test_png_records_no_pixel_size(tmp_path):
    from PIL import Image

    path = tmp_path / "frame.png"
    Image.fromarray(STACK[0].astype(np.uint8)).save(path)
    opened = open_micrograph(path)
    assert opened.is_2d and opened.pixel_size.nm is None and "no pixel size" in opened.pixel_size.note


def test_big_endian_stack_frames_are_mapped_in_native_byte_order(tmp_path):
    path = tmp_path / "motorola.tif"
    tifffile.imwrite(path, STACK, byteorder=">", photometric="minisblack")
    opened = open_micrograph(path)
    frame = np.asarray(opened.data[1])
    assert frame.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(frame, STACK[1])
