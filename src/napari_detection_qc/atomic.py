"""Atomic file writes: a file is either absent, the old one, or complete — never half written."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final`` that replaces it when the block succeeds and is removed
    when it fails (Ctrl-C included), so ``final`` is either absent or complete."""
    final = Path(final)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
