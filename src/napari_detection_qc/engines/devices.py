"""The devices torch can run the detector on here, for the Detection and fine-tune steps' device
list and the CLI's ``--device``: ``auto`` (CUDA, then Apple MPS, then CPU), each CUDA GPU by index
and name, MPS, CPU; and one line naming the torch build, so a user sees at once whether her
install can use her GPU (a CPU-only wheel on a GPU machine is the commonest install mistake).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUTO = "auto"
CPU = "cpu"
MPS = "mps"


@dataclass(frozen=True)
class DeviceChoice:
    """A device to offer: ``value`` is what ``resolve_device`` and ``--device`` take, ``label`` what
    a user reads (``cuda:1 (NVIDIA RTX A5000)``)."""

    value: str
    label: str


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str | torch.device = AUTO) -> torch.device:
    """``"auto"`` is the first CUDA GPU when there is one, else Apple's MPS, else the CPU; any
    other value is taken as torch names it (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if str(device) == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device(MPS if mps_available() else CPU)
    return torch.device(device)


def available_devices() -> list[DeviceChoice]:
    """``auto`` (labelled with what it picks), every CUDA GPU, MPS when present, and the CPU."""
    choices = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            choices.append(
                DeviceChoice(f"cuda:{index}", f"cuda:{index} ({torch.cuda.get_device_name(index)})")
            )
    if mps_available():
        choices.append(DeviceChoice(MPS, "mps (Apple GPU)"))
    choices.append(DeviceChoice(CPU, CPU))
    picked = resolve_device(AUTO)
    picked_label = next((c.label for c in choices if c.value in (str(picked), f"{picked}:0")), str(picked))
    return [DeviceChoice(AUTO, f"auto: {picked_label}"), *choices]


def torch_build_description() -> str:
    """One line: torch's version, the CUDA it was built for (or CPU-only), what it sees now."""
    built_for = torch.version.cuda
    parts = [f"torch {torch.__version__}"]
    if built_for:
        parts.append(f"built for CUDA {built_for}")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        parts.append(f"{count} GPU(s) visible" if count else "no GPU visible (driver missing or too old?)")
    elif getattr(torch.version, "hip", None):
        parts.append(f"built for ROCm {torch.version.hip}")
    else:
        parts.append("CPU-only build" + ("" if not mps_available() else ", Apple MPS available"))
    return ", ".join(parts)
