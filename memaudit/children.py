"""Child processes memaudit starts: isolated from the working directory, in their own process
group, and dying with their parent.

- ``python_command(module, *args)`` runs a module of memaudit's with ``python -P`` (3.11+; ``-I``
  before): the working directory is not put on the import path, so a ``numpy.py`` lying in the
  folder a user runs memaudit from is never imported (``python -m`` alone puts it first).
- ``Children.start`` starts a child in a new session (its own process group, out of reach of the
  terminal's Ctrl-C, which the parent handles) and hands it the read end of a watchdog pipe whose
  write end only the parent holds. ``watch_parent`` in the child reads that pipe on a thread: the
  read returns when the parent exits in any way, kill -9 included, and the child then kills its
  whole process group. No signal handler or polling is involved, and it works on every POSIX system.
- ``Children`` also records each child (pid and start time) under ``FOLDER/.children/``: a rerun
  that claims the same run folder (``memaudit.rundir.claim``) ends any child of an earlier run of
  the folder still alive (``reap``), so its orphans never block or race the rerun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

RECORDS = ".children"
WATCHDOG_ENV = "MEMAUDIT_WATCHDOG_FD"
REAP_WAIT_S = 10.0


def python_command(module: str, *args: str) -> list[str]:
    """``python -P -m MODULE ARGS``: this interpreter, without the working directory on the path."""
    isolation = "-P" if sys.version_info >= (3, 11) else "-I"  # -I also drops PYTHONPATH and user site
    return [sys.executable, isolation, "-m", module, *args]


class Children:
    """The child processes of one run: started isolated and watched; ``close`` ends those left."""

    def __init__(self, records: Path | None = None):
        self.records = None if records is None else Path(records) / RECORDS
        self._read, self._write = os.pipe()  # not inherited: only the read end is passed on
        self.processes: list[subprocess.Popen] = []

    def start(self, command: list[str]) -> subprocess.Popen:
        env = {**os.environ, WATCHDOG_ENV: str(self._read)}
        process = subprocess.Popen(command, start_new_session=True, pass_fds=(self._read,), env=env)
        self.processes.append(process)
        if self.records is not None:
            self.records.mkdir(parents=True, exist_ok=True)
            (self.records / str(process.pid)).write_text(str(_start_time(process.pid)))
        return process

    def finished(self, process: subprocess.Popen) -> None:
        """Forget a child that has exited (its record goes)."""
        self.processes.remove(process)
        self._forget(process.pid)

    def close(self) -> None:
        """End every child still running (its whole group), wait for it, and close the pipe."""
        for process in list(self.processes):
            _kill_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=REAP_WAIT_S)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid, signal.SIGKILL)
                process.wait()
            self.finished(process)
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass

    def _forget(self, pid: int) -> None:
        if self.records is not None:
            try:
                (self.records / str(pid)).unlink()
            except FileNotFoundError:
                pass


def watch_parent() -> None:
    """In a child started by ``Children``: kill this process group as soon as the parent is gone."""
    fd = os.environ.pop(WATCHDOG_ENV, None)
    if fd is None:
        return

    def wait_for_parent():
        try:
            while os.read(int(fd), 1):  # the parent never writes: this returns at its exit
                pass
        finally:
            _kill_group(os.getpgrp() if hasattr(os, "getpgrp") else os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait_for_parent, name="memaudit-watchdog", daemon=True).start()


def reap(folder: Path) -> int:
    """End the children recorded under ``folder/.children/`` still alive (orphans of a killed run
    of this folder; the caller holds the folder's lock); returns how many were ended. A record whose
    pid now belongs to another process (a different start time) is only removed."""
    records = Path(folder) / RECORDS
    if not records.is_dir():
        return 0
    ended = 0
    for record in records.iterdir():
        try:
            pid, started = int(record.name), record.read_text().strip()
        except (ValueError, OSError):
            continue
        if started and started != "None" and _start_time(pid) == started:
            _kill_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + REAP_WAIT_S
            while _start_time(pid) == started and time.monotonic() < deadline:
                time.sleep(0.05)
            ended += 1
        record.unlink(missing_ok=True)
    return ended


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), which tells a pid reused
    by another process apart; None where /proc is not there or the process is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else fields[19]


def _kill_group(pgid: int, sig: int) -> None:
    """Signal every process of group ``pgid`` (the child is its group's leader); the process alone
    where there are no process groups."""
    try:
        os.killpg(pgid, sig) if hasattr(os, "killpg") else os.kill(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
