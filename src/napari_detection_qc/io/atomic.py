"""Atomic file writes: a file is either absent, the old one, or complete — never half written.

A temporary file is named after its writer (``.<name>.<pid>@<host>.tmp``), so a later run can
remove what a killed writer left behind without touching the files of a writer still running
(another ``detect`` on the same output folder, a Dask worker on another machine). Whether a writer
still runs is asked through psutil, which answers the same on Windows, macOS and Linux (a signal
0 is POSIX only: on Windows ``os.kill`` would terminate the process). The temporary file's bytes
are flushed to disk before the rename, so after a power cut the final name holds the complete
file, never an empty one (resume trusts every file under its final name).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Iterator
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
        flush_to_disk(temporary)
        os.replace(temporary, final)
        flush_to_disk(final.parent)
    finally:
        temporary.unlink(missing_ok=True)


def flush_to_disk(path: Path) -> None:
    """fsync a file (or a folder, so a rename in it is durable). Folders cannot be opened on
    Windows, where the rename is made durable by the file system's journal: skipped there."""
    path = Path(path)
    if path.is_dir() and os.name == "nt":
        return
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:  # a folder some file systems refuse to open: the file itself was synced
        if path.is_dir():
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:  # file systems without fsync on folders (some network mounts)
        if not path.is_dir():
            raise
    finally:
        os.close(descriptor)


def process_is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie counts as gone), on any OS."""
    import psutil

    try:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # alive, owned by someone else
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
        if match and match["host"] == HOST and not process_is_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def output_problem(output: Path, inputs: Iterable[Path]) -> str | None:
    """Why ``output`` cannot be written without harm, or None: it is one of ``inputs`` (a link or
    another name for it included), a folder or other non-regular file, or its folder (or the
    nearest existing folder above it) is not writable. Checked before any work, so a long run
    never ends in an unwritable output, nor writes over what it read."""
    output = Path(output)
    if output.exists():
        for source in inputs:
            try:
                if Path(source).exists() and os.path.samefile(output, source):
                    return f"{output} is one of the inputs ({source}); choose another output file"
            except OSError:
                continue
        if output.is_dir():
            return f"{output} is a folder; give a file name"
        if not output.is_file():
            return f"{output} is not a regular file (a pipe, device or socket); give a file name"
        if not os.access(output, os.W_OK):
            return f"{output} is not writable"
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{output}: {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{output}: the folder {folder} is not writable"
    return None
