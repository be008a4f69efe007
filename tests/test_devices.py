"""The device list and ``auto``: CUDA, then MPS, then CPU; the torch build line."""

from __future__ import annotations

import pytest
import torch

from napari_detection_qc.engines import available_devices, resolve_device, torch_build_description


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``gpus`` CUDA devices and MPS or not, as torch would report it."""

    def configure(gpus: int, mps: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"GPU model {index}")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return configure


def test_two_gpus_are_listed_by_index_and_name_and_auto_picks_cuda(machine):
    machine(gpus=2, mps=False)
    choices = available_devices()
    assert [c.value for c in choices] == ["auto", "cuda:0", "cuda:1", "cpu"]
    assert choices[2].label == "cuda:1 (GPU model 1)"
    assert choices[0].label == "auto: cuda:0 (GPU model 0)"
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_auto_picks_mps_on_a_mac_and_cpu_otherwise(machine):
    machine(gpus=0, mps=True)
    assert [c.value for c in available_devices()] == ["auto", "mps", "cpu"]
    assert resolve_device("auto") == torch.device("mps")
    assert available_devices()[0].label == "auto: mps (Apple GPU)"
    machine(gpus=0, mps=False)
    assert [c.label for c in available_devices()] == ["auto: cpu", "cpu"]
    assert resolve_device("auto") == torch.device("cpu")


def test_build_line_names_torch_and_what_it_sees(machine, monkeypatch):
    machine(gpus=0, mps=False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    line = torch_build_description()
    assert line.startswith(f"torch {torch.__version__}") and "CUDA 12.6" in line and "no GPU visible" in line
    machine(gpus=1, mps=False)
    assert "1 GPU(s) visible" in torch_build_description()
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert "CPU-only build" in torch_build_description()
