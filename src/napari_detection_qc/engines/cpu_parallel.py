"""Detect independent tiles (and the size estimate's views) on several CPU cores at once.

A compact model's convolutions on one 1024 px tile split poorly over torch's intra-op threads;
whole tiles on separate threads, each running its ops on its share of the threads, use the cores
fully and give the same numbers (4096 px frame on a 2-core AMD EPYC: 7.6 -> 6.1 s with bfloat16
convolutions, 14.8 -> 9.5 s in float32; ``benchmarks/bench_tile_workers.py``). The results are
exactly those of a sequential loop, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


MAX_WORKERS = 4
"""Tiles in flight at once: each adds 60-110 MB at its peak (a 4096 px 16-bit frame at factor 1.5,
peak resident memory of the whole process: 1.15 GB on one thread, 1.26 GB on 2, 1.43 GB on 4,
1.83 GB with 8 workers, 1.53 GB with this cap on 8 threads; ``benchmarks/bench_tile_workers.py``);
on more cores each worker's ops get several threads instead."""


def cpu_workers(device: torch.device) -> int:
    """How many tiles to detect at once: torch's CPU thread count on CPU, up to ``MAX_WORKERS``;
    one on an accelerator (which batches tiles instead)."""
    return min(MAX_WORKERS, max(1, torch.get_num_threads())) if device.type == "cpu" else 1


def map_on_cores(function: Callable[[Item], Result], items: Sequence[Item], workers: int) -> list[Result]:
    """``[function(item) for item in items]``, on up to ``workers`` threads that share the caller's
    torch threads between them (so they do not oversubscribe the cores). The caller's own torch
    thread count is restored afterwards. ``function`` must be safe to run concurrently."""
    workers = min(workers, len(items))
    if workers <= 1:
        return [function(item) for item in items]
    previous = torch.get_num_threads()
    per_worker = max(1, previous // workers)
    try:
        with ThreadPoolExecutor(
            workers, thread_name_prefix="detect", initializer=torch.set_num_threads, initargs=(per_worker,)
        ) as pool:
            return list(pool.map(function, items))
    finally:
        torch.set_num_threads(previous)
