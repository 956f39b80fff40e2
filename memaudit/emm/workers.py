"""Local worker processes for ``memaudit emm``: several points trained at once on one machine.

The tiny U-Nets train fastest on one torch thread, so a machine with several cores is used by
training several points at once, one process each, rather than by more threads per point. The
search asks for a round of sizes (``search_emm``'s ``prefetch``); the pool trains and audits every
unfinished point of the round, each in its own process, and returns when all are written to
``OUT/points/``, from where the search reads them back, as after a resumed run. A point's model
does not depend on the process that trains it (the training is seeded and single-threaded).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable


def default_workers() -> int:
    """Two workers where the machine has at least two usable cores, else one: with ``ahead`` 1 a
    round holds the next doubling and one size inside it, so a third worker would mostly wait."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cores >= 2 else 1


class PointPool:
    """Train ``jobs`` (recipe, size, seed, stop_at) in up to ``workers`` spawned processes, each on
    ``threads`` torch threads; ``run`` blocks until all are done and re-raises a worker's error."""

    def __init__(self, workers: int, threads: int | None):
        self.workers, self.threads = workers, threads
        self._executor: ProcessPoolExecutor | None = None

    def run(self, train: Callable, jobs: list[tuple]) -> None:
        if not jobs:
            return
        if self._executor is None:  # started at the first round with work: a resumed run may need none
            import multiprocessing

            from memaudit import progress

            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_start_worker, initargs=(self.threads, progress.enabled()))
        for future in [self._executor.submit(train, *job) for job in jobs]:
            future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _start_worker(threads: int | None, show_progress: bool) -> None:
    import torch

    from memaudit import progress

    if threads is not None:
        torch.set_num_threads(threads)
    progress.set_enabled(show_progress)
