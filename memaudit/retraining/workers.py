"""Local worker processes for ``memaudit emm``: several points trained at once on one machine.

The tiny U-Nets train fastest on one torch thread, so a machine with several cores is used by
training several points at once, one process each, rather than by more threads per point. The
search asks for a round of sizes (``search_emm``'s ``prefetch``); the pool trains and audits every
unfinished point of the round, each in a fresh ``python -P -m memaudit.retraining.worker_process JOB`` process
(``memaudit.children``: the working directory off the import path, its own process group, ended
when the parent exits or is killed, and ended by a rerun's claim of the folder if still alive), and
returns when all are written to ``OUT/points/``, from where the search reads them back, as after a
resumed run. A point's model does not depend on the process that trains it (the training is seeded
and single-threaded). Plain processes rather than multiprocessing: a spawned multiprocessing child
re-runs the caller's main script, which breaks scripts that call ``run_emm`` without a
``__main__`` guard.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

POLL_S = 0.5


def default_workers() -> int:
    """Two workers where the machine has at least two usable cores, else one: with ``ahead`` 1 a
    round holds the next doubling and one size inside it, so a third worker would mostly wait."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cores >= 2 else 1


class PointPool:
    """Run ``train(*job)`` for each job in up to ``workers`` processes at once, each on ``threads``
    torch threads; ``run`` blocks until all are done and re-raises the first worker's error."""

    def __init__(self, workers: int, threads: int | None, run_dir: Path | None = None):
        self.workers, self.threads, self.run_dir = workers, threads, run_dir  # run_dir: where workers are recorded

    def run(self, train: Callable, jobs: list[tuple]) -> None:
        from memaudit import progress
        from memaudit.children import Children, python_command

        pending = list(jobs)
        running: list[tuple[subprocess.Popen, Path]] = []
        children = Children(self.run_dir)
        with tempfile.TemporaryDirectory(prefix="memaudit-emm-workers-") as folder:
            try:
                while pending or running:
                    while pending and len(running) < self.workers:
                        job = Path(folder) / f"job-{len(pending)}-{len(running)}-{time.monotonic_ns()}.pkl"
                        job.write_bytes(pickle.dumps((train, pending.pop(0), self.threads, progress.enabled())))
                        running.append((children.start(python_command("memaudit.retraining.worker_process", str(job))), job))
                    time.sleep(POLL_S)
                    for process, job in [item for item in running if item[0].poll() is not None]:
                        running.remove((process, job))
                        children.finished(process)
                        _raise_failure(process, job)
            finally:
                children.close()  # an error or an interrupt: no worker trains on unattended


def _raise_failure(process: subprocess.Popen, job: Path) -> None:
    error = job.with_suffix(".error")
    if error.is_file():
        raise pickle.loads(error.read_bytes())
    if process.returncode != 0:
        raise RuntimeError(f"an emm worker process exited with status {process.returncode} ({job.name})")


def work(job: Path) -> None:
    """In the worker: unpickle the job, set the threads and progress output, run it; an error is
    pickled beside the job for the parent to raise."""
    from memaudit.children import watch_parent

    watch_parent()  # first: a parent killed from here on takes this worker with it
    train, arguments, threads, show_progress = pickle.loads(job.read_bytes())
    import torch

    from memaudit import progress

    if threads is not None:
        torch.set_num_threads(threads)
    progress.set_enabled(show_progress)
    try:
        train(*arguments)
    except BaseException as error:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            job.with_suffix(".error").write_bytes(pickle.dumps(error))
        except Exception:  # an error that does not pickle: its text
            job.with_suffix(".error").write_bytes(pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}")))
        raise SystemExit(1)


