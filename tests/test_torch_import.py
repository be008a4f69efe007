"""The widgets hide triton only while they import torchvision: afterwards other plugins can
import it (the old module-wide ``sys.modules["triton"] = None`` disabled it for the process)."""

import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_stays_importable_for_other_plugins():
    code = (
        "import sys\n"
        "from napari_detection_qc.widgets._torch_import import import_engines\n"
        "import_engines()\n"
        "assert 'triton' not in sys.modules, sys.modules.get('triton')\n"
        "import triton\n"
        "from torch.utils._triton import has_triton_package\n"
        "assert has_triton_package()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
