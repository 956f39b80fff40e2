"""Rich progress bars for long work, shown on stderr; silent when progress is turned off."""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from memaudit import distributed


class Advance(Protocol):
    def __call__(self, amount: int = 1) -> None: ...


_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn progress bars on or off for this process (tests and ``--quiet`` turn them off)."""
    global _enabled
    _enabled = enabled


@contextlib.contextmanager
def task(description: str, total: int, completed: int = 0) -> Iterator[Advance]:
    """A progress bar for ``total`` units of work; yields a function that advances it."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not _enabled or not distributed.process_is_main(),  # one rank's bars are enough
        transient=False,
    )
    with progress:
        task_id = progress.add_task(description, total=total, completed=completed)
        yield lambda amount=1: progress.advance(task_id, amount)


def note(text: str) -> None:
    """One line on stderr (rank 0 only) about a choice the run made that the user should know of."""
    if distributed.process_is_main():
        Console(stderr=True, emoji=False).print(f"memaudit: note: {text}", markup=False, highlight=False, soft_wrap=True)
