"""A run folder's ownership and state: one writer at a time, and a manifest saying whether the
files in it are one complete run.

``claim(out, ...)`` takes an advisory lock on ``out/.lock`` (a second audit into the same --out is
refused with one line, and a killed run's lock goes with its process), removes the temporaries of
interrupted writes, and writes ``run.json`` with ``state: running`` before any other file.
``Claim.complete`` rewrites it last with ``state: complete`` and the sha256 of every output file.
So a folder is either one complete run or visibly incomplete: a rerun with other settings that
dies part-way leaves its new samples.npz beside the old audit.json under a manifest that says
``running``, and ``memaudit report`` and ``compare`` refuse it (``require_complete``). The
recorded digests say which files the run wrote; an audit.json edited afterwards still renders.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from memaudit import __version__, distributed
from memaudit.errors import InputError
from memaudit.storage import file_digest, remove_stale_temporaries, write_json_atomic

MANIFEST_JSON = "run.json"
LOCK_FILE = ".lock"
MANIFEST_VERSION = 1


class RunFolderError(InputError):
    """A run folder is locked by another writer, or holds an incomplete or inconsistent run."""


@dataclass
class Claim:
    """This process's hold on a run folder (rank 0 writes; other ranks hold an inert claim)."""

    out: Path
    manifest: dict = field(default_factory=dict)
    writes: bool = False

    def complete(self, files: list[str]) -> None:
        """Mark the run complete: the manifest, written last, records each output file's digest."""
        if not self.writes:
            return
        digests = {name: file_digest(self.out / name) for name in files if (self.out / name).is_file()}
        self.manifest.update(state="complete", finished=_now(), files=digests)
        write_json_atomic(self.out / MANIFEST_JSON, self.manifest)


@contextlib.contextmanager
def claim(out: Path, inputs: dict, command: str | None) -> Iterator[Claim]:
    """Own ``out`` for the block: lock it, clear interrupted writes, write the manifest (running).
    A collective under torchrun: rank 0 does the work and every rank raises the same error."""
    world = distributed.current()
    out = Path(out)
    handle, error = None, None
    result = Claim(out)
    if world.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            handle = _lock(out)
            remove_stale_temporaries(out, older_than_s=0)  # ours alone: we hold the lock
            result.manifest = {"manifest_version": MANIFEST_VERSION, "state": "running", "memaudit_version": __version__,
                               "command": command, "started": _now(), "finished": None, "inputs": inputs, "files": {}}
            write_json_atomic(out / MANIFEST_JSON, result.manifest)
            result.writes = True
        except RunFolderError as raised:
            error = str(raised)
        except BaseException:
            _unlock(handle)
            if world.distributed:
                world.broadcast_json("--out {}: rank 0 could not start the run".format(out))
            raise
    if world.distributed:
        error = world.broadcast_json(error)
    if error is not None:
        _unlock(handle)
        raise RunFolderError(error)
    try:
        yield result
    finally:
        _unlock(handle)


def _lock(out: Path):
    """An exclusive, non-blocking advisory lock on ``out/.lock``; RunFolderError when held."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: no lock, as before
        return None
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RunFolderError(f"--out {out}: another memaudit run{holder} is writing this folder; wait for it to "
                             "finish or give another --out") from None
    except OSError:  # a filesystem without locks (some network mounts): go on unlocked
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _read_holder(fd: int) -> str:
    try:
        pid, _, host = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
    except OSError:
        return ""
    return f" (pid {pid} on {host})" if pid else ""


def _unlock(fd) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def read_manifest(run_dir: Path) -> dict | None:
    """The manifest of a run folder, or None for a folder written before manifests existed."""
    path = Path(run_dir) / MANIFEST_JSON
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path}: not a readable run manifest ({error}); rerun the audit into this folder") from None
    if not isinstance(manifest, dict):
        raise RunFolderError(f"{path}: not a run manifest (a JSON object); rerun the audit into this folder")
    return manifest


def require_complete(run_dir: Path) -> None:
    """RunFolderError unless the folder holds one complete run (or predates manifests). The files'
    digests in the manifest are a record, not a check: an audit.json edited on purpose still renders."""
    manifest = read_manifest(run_dir)
    if manifest is None:
        return  # a folder from before manifests: nothing to check against
    if manifest.get("state") != "complete":
        raise RunFolderError(f"{run_dir}: an incomplete run (state {manifest.get('state')!r}, started "
                             f"{manifest.get('started')}), whose files may mix two runs; rerun the command that "
                             f"writes it to finish: {manifest.get('command') or 'memaudit audit ... --out ' + str(run_dir)}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
