"""Import torchvision safely inside napari, without changing the process for other plugins.

torchvision imports ``torch._dynamo``, which imports triton when it is installed (CUDA builds of
torch bring it). triton's bundled LLVM crashes the process (segfault) when Mesa's llvmpipe, which
carries its own LLVM, already drives napari's OpenGL canvas: the normal case on machines without
a GPU driver and under Xvfb. Eager inference never needs triton, so while *this package* imports
torchvision, triton is hidden; right after, the hiding entry is removed and torch's cached
"is triton installed" answer is cleared, so any other plugin that imports triton or uses
``torch.compile`` later sees the process exactly as it would without us.

The import takes seconds, so it runs in a background worker (``import_engines``: the docks'
warm-up and the detection and fine-tune workers call it; the first does the work, the others wait
for it), never on the UI thread while a dock opens.
"""

import sys
import threading
from contextlib import contextmanager

_lock = threading.Lock()


@contextmanager
def triton_hidden():
    """Make ``import triton`` fail inside the block only (if nothing has imported it yet)."""
    hide = "triton" not in sys.modules and "torch._dynamo" not in sys.modules
    if hide:
        sys.modules["triton"] = None  # makes `import triton` raise ImportError: torch then skips it
    try:
        yield
    finally:
        if hide:
            if sys.modules.get("triton", 0) is None:
                del sys.modules["triton"]
            from torch.utils import _triton

            for check in (getattr(_triton, "has_triton_package", None), getattr(_triton, "has_triton", None)):
                if hasattr(check, "cache_clear"):
                    check.cache_clear()


def import_engines() -> None:
    """Import torch, torchvision and the detection engines once per process, with triton hidden."""
    with _lock:
        if "napari_detection_qc.engines.torchvision_maskrcnn" in sys.modules:
            return
        with triton_hidden():
            from napari_detection_qc.engines import torchvision_maskrcnn  # noqa: F401
