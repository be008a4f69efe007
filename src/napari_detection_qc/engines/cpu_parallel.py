"""Detect independent tiles (and the size estimate's views) on several CPU cores at once.

A compact model's convolutions on one 1024 px tile split poorly over torch's intra-op threads
(2 threads: 1.6x one thread on a 4096 px frame, measured on the 2-core AMD EPYC); whole tiles
on separate threads, each running its ops on its share of the threads, use the cores fully and
give the same numbers. The results are exactly those of a sequential loop, in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


MAX_WORKERS = 4
"""Tiles in flight at once: each adds about 70 MB at its peak (a 4096 px 16-bit frame at factor
1.5: 1.15 GB peak on one worker, 1.29 GB on 2, 1.44 GB on 4, 1.83 GB on 8); on more cores each
worker's ops get several threads instead."""


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
