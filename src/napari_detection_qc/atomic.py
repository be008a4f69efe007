"""Atomic file writes: a file is either absent, the old one, or complete — never half written.

A temporary file is named after its writer (``.<name>.<pid>@<host>.tmp``), so a later run can
remove what a killed writer left behind without touching the files of a writer still running
(another ``detect`` on the same output folder, a Dask worker on another machine).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = socket.gethostname().replace("/", "_")
TEMPORARY_NAME = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^/]+)\.tmp$")


def temporary_path(final: Path, pid: int | None = None) -> Path:
    """The temporary name beside ``final`` of the writer ``pid`` (default: this process)."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid() if pid is None else pid}@{HOST}.tmp")


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final`` that replaces it when the block succeeds and is removed
    when it fails (Ctrl-C included), so ``final`` is either absent or complete."""
    final = Path(final)
    temporary = temporary_path(final)
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporary_files(folder: Path) -> int:
    """Remove, directly in ``folder``, the temporary files of writers on this machine that no longer
    run (left by kill -9 or a power cut). Files of running writers, of other machines, and files
    that are not ours are left alone. Returns how many were removed."""
    removed = 0
    if not Path(folder).is_dir():
        return 0
    for path in Path(folder).iterdir():
        match = TEMPORARY_NAME.match(path.name)
        if match and match["host"] == HOST and not _process_is_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
