"""Per-prompt work of "segment everything" on single-threaded worker threads."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


class PromptWorkers:
    """Runs the per-prompt work on ``count`` threads, each with one intra-op thread, results in order.

    The work after the encoder is tens of thousands of small operations (a few prompts' decoder layers,
    a few masks' resize). On torch's intra-op threads each is a parallel region ending in a barrier, and
    OpenMP's threads spin while they wait. When other processes hold cores, a descheduled thread holds up
    every barrier while its peers burn the time slices it needs: on 2 cores with 2 busy processes, an
    8x8 grid took 60-100 s and 10 s of CPU time with 2 intra-op threads, 12 s and 0.6 s with
    ``OMP_WAIT_POLICY=PASSIVE``. Chunks on independent single-threaded workers never wait for each other
    inside a chunk and meet once per stage of a batch. ``count`` 1 runs everything on the caller's thread.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> PromptWorkers:
        if self.count > 1:
            self.threads = torch.get_num_threads()
            self.grad = torch.is_grad_enabled()
            self.inference = torch.is_inference_mode_enabled()
            self.pool = ThreadPoolExecutor(self.count, thread_name_prefix="evitsam-prompts")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
            # A worker's set_num_threads(1) is its own, but torch also keeps it as the default of threads
            # started later: put the caller's back.
            torch.set_num_threads(self.threads)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if self.pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self.pool.map(functools.partial(self._run, fn), items))

    def _run(self, fn: Callable[[Any], Any], item: Any) -> Any:
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        with torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad):
            return fn(item)
