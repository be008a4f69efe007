"""Failures that are the machine's, not the input's: out of memory, disk full. The CLI gives them
their own exit code, so a script can tell "retry on a bigger machine" from "fix the input"."""

from __future__ import annotations

import errno

RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM}
OUT_OF_MEMORY_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")


class ResourceError(RuntimeError):
    """Memory or disk ran out; the message names the input and frame where it happened."""


def is_resource_exhaustion(exc: BaseException) -> bool:
    """MemoryError, torch's out-of-memory errors (CPU and CUDA), and a full disk or quota."""
    if isinstance(exc, (MemoryError, ResourceError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in RESOURCE_ERRNOS
    if isinstance(exc, RuntimeError):  # torch.OutOfMemoryError is one; CPU allocators raise plain ones
        text = str(exc).lower()
        return type(exc).__name__ == "OutOfMemoryError" or any(m in text for m in OUT_OF_MEMORY_MESSAGES)
    return False
