"""Import torchvision safely inside napari.

torchvision imports ``torch._dynamo``, which imports triton when it is installed (CUDA builds of
torch bring it). triton's bundled LLVM crashes the process (segfault) when Mesa's llvmpipe, which
carries its own LLVM, already drives napari's OpenGL canvas — the normal case on machines
without a GPU driver and under Xvfb. Eager inference never needs triton, so when neither triton
nor torch._dynamo is loaded yet, mark triton as unavailable for this process before importing.
Only the widgets do this; scripts and the CLI import torch untouched.
"""

import sys

if "triton" not in sys.modules and "torch._dynamo" not in sys.modules:
    sys.modules["triton"] = None  # makes `import triton` raise ImportError: torch then skips it

from ..engines import torchvision_maskrcnn  # noqa: E402,F401  (main thread, never a worker's first)
