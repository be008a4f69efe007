"""The napari reader (Qt-free layer-data tuples) and where a layer's pixel size comes from."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from napari_detection_qc.io import InputError
from napari_detection_qc.io.napari_reader import get_reader
from napari_detection_qc.io.pixel_sizes import pixel_size_from_layer

STACK = np.arange(2 * 16 * 20, dtype=np.uint16).reshape(2, 16, 20)


def test_tiff_stack_opens_with_scale_units_and_pixel_size(tmp_path):
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"unit": "nm"})
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    np.testing.assert_array_equal(data, STACK)
    assert kind == "image" and kwargs["name"] == "series" and not kwargs["rgb"]
    assert kwargs["scale"] == pytest.approx((1.0, 0.4, 0.4)) and kwargs["units"] == ("pixel", "nm", "nm")
    assert kwargs["metadata"]["detection_qc"]["pixel_size_nm"] == pytest.approx(0.4)


def test_tiff_without_pixel_size_and_other_files(tmp_path):
    plain = tmp_path / "plain.tiff"
    tifffile.imwrite(plain, STACK[0])
    [(_, kwargs, _)] = get_reader([str(plain)])([str(plain)])
    assert "scale" not in kwargs and kwargs["metadata"]["detection_qc"]["pixel_size_nm"] is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(plain), str(tmp_path / "notes.txt")]) is None
    assert get_reader(str(tmp_path)) is None  # a folder that is no detections store


def test_dm_without_rosettasciio_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rsciio.digitalmicrograph", None)
    path = tmp_path / "image.dm4"
    path.write_bytes(b"")
    reader = get_reader(str(path))
    with pytest.raises(InputError, match=r"image.dm4.*pip install rosettasciio"):
        reader(str(path))


def test_pixel_size_from_layer_metadata_then_scale_units():
    recorded = SimpleNamespace(metadata={"detection_qc": {"pixel_size_nm": 0.7}}, scale=(1, 1), units=None)
    assert pixel_size_from_layer(recorded) == pytest.approx(0.7)
    in_microns = SimpleNamespace(
        metadata={}, scale=(1.0, 0.002, 0.002), units=("pixel", "micrometer", "micrometer")
    )
    assert pixel_size_from_layer(in_microns) == pytest.approx(2.0)
    in_pixels = SimpleNamespace(metadata={}, scale=(1.0, 1.0), units=("pixel", "pixel"))
    assert pixel_size_from_layer(in_pixels) is None
    assert pixel_size_from_layer(None) is None
