"""Where frames run: serially in this process, on a local Dask process cluster, or on a remote one."""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

from napari_detection_qc.io import InputError


class SerialExecutor:
    """Tasks one after the other in this process: the reference every parallel run must equal."""

    def map_unordered(self, function, tasks):
        for task in tasks:
            yield function(task)


class DaskExecutor:
    """Tasks on a Dask cluster, results in the order they finish."""

    def __init__(self, client):
        self.client = client

    def map_unordered(self, function, tasks):
        from dask.distributed import as_completed

        if not tasks:
            return
        for future in as_completed(self.client.map(function, tasks, pure=False)):
            yield future.result()


@contextmanager
def open_executor(workers: int = 1, scheduler: str | None = None, scratch_parent: Path | None = None):
    """Serial for one worker; a local process cluster for ``workers`` > 1; an existing cluster
    at ``scheduler``. A local cluster keeps its scratch files in a hidden folder of
    ``scratch_parent`` (the run's ``--out``) that is removed with it, so nothing is written
    elsewhere. Leaving the block shuts a local cluster down and cancels unfinished work.
    Workers run torch on one thread each; their detections equal a serial run's bit for bit when
    that run also uses one thread, and to float rounding (about 1e-5 px) otherwise."""
    if scheduler is None and workers <= 1:
        yield SerialExecutor()
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError("--workers and --scheduler need Dask: pip install 'dask[distributed]'") from exc

    if scheduler is not None:
        with Client(scheduler) as client:
            yield DaskExecutor(client)
        return
    if scratch_parent is not None:
        Path(scratch_parent).mkdir(parents=True, exist_ok=True)
    import dask

    with (
        tempfile.TemporaryDirectory(prefix=".dask-scratch-", dir=scratch_parent) as scratch,
        dask.config.set({"temporary-directory": scratch}),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            local_directory=scratch,
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield DaskExecutor(client)
