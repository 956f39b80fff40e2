"""Progress of long work on stderr (rank 0 only; silent when turned off).

On a terminal: one rich bar at a time, labelled by stage and space. Anywhere else (CI logs, a
file, a pipe) redraws would show nothing until the end, so a plain line is printed every
``interval`` seconds instead (30 s by default; ``MEMAUDIT_PROGRESS_INTERVAL`` or
``set_interval``), from a background thread, so that a line comes even while one long batch runs.

Work started inside other work (``stage``, or a ``task`` in a ``task``) takes over the line of the
outer one instead of opening a bar of its own: a space's searches, features and quality show as
one bar named after the space. Samplers report each denoising step (``denoising_step``), so the
sampling bar moves inside a batch, not once per batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
from typing import Callable, Iterator, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from memaudit import distributed

DEFAULT_INTERVAL_S = 30.0


class Advance(Protocol):
    def __call__(self, amount: float = 1) -> None: ...


_enabled = True
_interval: float | None = None  # None: MEMAUDIT_PROGRESS_INTERVAL, else DEFAULT_INTERVAL_S
_active: contextvars.ContextVar["_Line | None"] = contextvars.ContextVar("memaudit_progress_line", default=None)
_step_hook: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar(
    "memaudit_denoising_step", default=None)


def set_enabled(enabled: bool) -> None:
    """Turn progress output on or off for this process (tests, ``--quiet`` and ``progress=False`` turn it off)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether progress output is on in this process (and this is the rank that prints)."""
    return _enabled and distributed.process_is_main()


def set_interval(seconds: float | None) -> None:
    """Seconds between plain progress lines when stderr is not a terminal (None: the default)."""
    global _interval
    if seconds is not None and not seconds > 0:
        raise ValueError(f"progress interval {seconds}: expected a positive number of seconds")
    _interval = seconds


def interval() -> float:
    """The plain-line interval now in force: ``set_interval``'s, ``$MEMAUDIT_PROGRESS_INTERVAL``, or 30 s."""
    if _interval is not None:
        return _interval
    try:
        value = float(os.environ.get("MEMAUDIT_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def _console() -> Console:
    return Console(stderr=True, emoji=False)


def duration(seconds: float) -> str:
    """Seconds as people read them in a log: 45s, 3m10s, 2h05m00s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class _Line:
    """The one progress line on screen: what runs now (label, total, done), drawn as a rich bar or
    printed as plain lines at an interval."""

    def __init__(self, description: str, total: float, completed: float, console: Console):
        self.label = description  # the work's own name, whatever sub-step the line shows
        self.description, self.total, self.completed = description, total, completed
        self.started = self.opened = time.monotonic()
        self.console = console
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._rich: Progress | None = None
        self._thread: threading.Thread | None = None
        self.lines_printed = 0

    # drawing ---------------------------------------------------------------------------------
    def open(self) -> None:
        if self.console.is_terminal:
            self._rich = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, completed=self.completed)
        else:
            self._thread = threading.Thread(target=self._beat, name="memaudit-progress", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            if self.lines_printed:  # a line said it was running: say that it ended
                self._print(f"{self.description}: done in {duration(time.monotonic() - self.opened)}")

    def _beat(self) -> None:
        while not self._stop.wait(interval()):
            self._print(self.status())

    def _print(self, text: str) -> None:
        with self.lock:
            self.console.print(f"memaudit: {text}", markup=False, highlight=False, soft_wrap=True)
            self.lines_printed += 1

    def status(self) -> str:
        """A plain line: label, done of total, elapsed, and the time left at the rate so far."""
        with self.lock:
            description, total, completed = self.description, self.total, self.completed
            elapsed = time.monotonic() - self.started
        if not total:  # a stage between its steps
            return f"{description}: {duration(elapsed)} elapsed"
        count = f"{completed:.1f}" if completed != int(completed) else f"{int(completed)}"
        text = f"{description}: {count}/{total:g} ({100.0 * completed / total:.0f}%), {duration(elapsed)} elapsed"
        if 0 < completed < total:
            text += f", about {duration(elapsed * (total - completed) / completed)} left"
        return text

    # state -------------------------------------------------------------------------------------
    def show(self, description: str, total: float, completed: float) -> None:
        with self.lock:
            self.description, self.total, self.completed = description, total, completed
            self.started = time.monotonic()
        if self._rich is not None:
            self._rich.reset(self._task, description=description, total=total, completed=completed)

    def advance(self, amount: float = 1) -> None:
        with self.lock:
            self.completed += amount
        if self._rich is not None:
            self._rich.advance(self._task, amount)


@contextlib.contextmanager
def task(description: str, total: float, completed: float = 0) -> Iterator[Advance]:
    """Progress of ``total`` units of work; yields a function that advances it. Inside other work
    it takes over that work's line, labelled ``outer: description``, and gives it back after."""
    if not enabled():
        yield lambda amount=1: None
        return
    outer = _active.get()
    if outer is not None:
        saved = (outer.description, outer.total, outer.completed, outer.started)
        outer.show(f"{outer.label}: {description}", total, completed)
        try:
            yield outer.advance
        finally:
            outer.show(*saved[:3])
            outer.started = saved[3]
        return
    line = _Line(description, total, completed, _console())
    line.open()
    token = _active.set(line)
    try:
        yield line.advance
    finally:
        _active.reset(token)
        line.close()


@contextlib.contextmanager
def stage(description: str) -> Iterator[None]:
    """One line for a stage of work (a feature space: its features, searches and quality):
    every ``task`` inside shows on it as ``description: task``."""
    with task(description, total=0):
        line = _active.get()
        yield
        if line is not None:  # the last state on screen: the stage, finished, not its last sub-step
            line.show(description, 1, 1)


def denoising_step(done: int, total: int) -> None:
    """Samplers call this after each of the ``total`` denoising steps of a batch (``done`` so far):
    the sampling bar then advances inside the batch. Outside ``batch`` it does nothing."""
    hook = _step_hook.get()
    if hook is not None and total > 0:
        hook(done, total)


@contextlib.contextmanager
def batch(advance: Advance, items: int) -> Iterator[None]:
    """Sampling of one batch of ``items`` images: the denoising steps the sampler reports advance
    the bar by their share of ``items``; whatever was not reported is advanced at the end."""
    reported = 0.0

    def hook(done: int, total: int) -> None:
        nonlocal reported
        target = items * min(max(done, 0), total) / total
        if target > reported:
            advance(target - reported)
            reported = target

    token = _step_hook.set(hook)
    try:
        yield
    finally:
        _step_hook.reset(token)
    if items > reported:
        advance(items - reported)


def note(text: str) -> None:
    """One line on stderr (rank 0 only) about a choice the run made that the user should know of."""
    if distributed.process_is_main():
        _console().print(f"memaudit: note: {text}", markup=False, highlight=False, soft_wrap=True)


def warning(text: str) -> None:
    """A setting that makes little sense, said once on stderr (rank 0 only), even with progress off."""
    if distributed.process_is_main():
        _console().print(f"memaudit: warning: {text}", markup=False, highlight=False, soft_wrap=True)


def say(text: str) -> None:
    """One line of progress information on stderr (the sampling plan), when progress is on."""
    if enabled():
        _console().print(f"memaudit: {text}", markup=False, highlight=False, soft_wrap=True)
