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

A run that fails after claiming (an error, Ctrl-C) says so: ``state: failed`` with the one-line
reason. When it failed before changing any file of the folder, the folder still holds the earlier
run untouched and its manifest is put back as it was: a typo in a rerun costs no finished result.
Only a killed process leaves ``running`` behind (its lock is gone, so the next claim takes over).

Every command that writes a folder claims it: ``claim`` as a block, ``claimed`` as a decorator of
the entry function (emm, compare, dedup, mia, extract, detect), ``amended`` for ``report``, which
re-renders a page inside a complete run. A claim also ends the child processes an earlier, killed
run of the folder left behind (``memaudit.children.reap``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import inspect
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from memaudit import __version__, children, distributed
from memaudit.errors import InputError, MemauditError, storage_error
from memaudit.storage import file_digest, make_folder, remove_stale_temporaries, write_json_atomic

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
    before: dict | None = None  # the manifest found at the claim, and the folder's files then
    files_before: dict = field(default_factory=dict)

    def complete(self, files: list[str]) -> None:
        """Mark the run complete: the manifest, written last, records each output file's digest."""
        if not self.writes:
            return
        digests = {name: file_digest(self.out / name) for name in files if (self.out / name).is_file()}
        self.manifest.update(state="complete", finished=_now(), files=digests)
        write_json_atomic(self.out / MANIFEST_JSON, self.manifest)

    def fail(self, error: BaseException) -> None:
        """Record a failure after the claim: ``failed`` and its one-line reason, or, when the
        folder's files are as the claim found them, the earlier manifest put back."""
        if not self.writes:
            return
        try:
            if self.before is not None and _top_files(self.out) == self.files_before:
                write_json_atomic(self.out / MANIFEST_JSON, self.before)
                return
            self.manifest.update(state="failed", finished=_now(), reason=failure_reason(error))
            write_json_atomic(self.out / MANIFEST_JSON, self.manifest)
        except OSError:  # a full disk or a vanished folder: the error itself is what the user sees
            pass


def failure_reason(error: BaseException) -> str:
    """The one line a failed run's manifest keeps: the user's error as printed, else its type."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    if isinstance(error, OSError) and storage_error(error) is not None:  # a full disk: the line the CLI prints
        error = storage_error(error)
    text = " ".join(str(error).split())
    return text if isinstance(error, MemauditError) else f"{type(error).__name__}: {text}".rstrip(": ")


@contextlib.contextmanager
def claim(out: Path, inputs: dict, command: str | None, name: str = "--out") -> Iterator[Claim]:
    """Own ``out`` for the block: lock it, clear interrupted writes, write the manifest (running);
    an error in the block marks it failed (``Claim.fail``). ``name``: how messages call the folder.
    A collective under torchrun: rank 0 does the work and every rank raises the same error."""
    world = distributed.current()
    out = Path(out)
    handle, error = None, None
    result = Claim(out)
    if world.is_main:
        try:
            make_folder(out, name, RunFolderError)
            handle = _lock(out, name)
            children.reap(out)  # orphans of a killed run of this folder: never left to race this one
            remove_stale_temporaries(out, older_than_s=0)  # ours alone: we hold the lock
            result.before = _complete_manifest(out)
            result.files_before = _top_files(out)
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
    except BaseException as raised:
        result.fail(raised)
        raise
    finally:
        _unlock(handle)


def claimed(files: tuple[str, ...], kind: str) -> Callable:
    """Decorate a command's entry function so that it runs inside a claim of the folder it writes:
    its ``out`` argument, or ``config.out`` (None: nothing written, no claim). The manifest records
    its arguments (``command`` for provenance) and, when it returns, the digests of ``files``."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def run(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            values = dict(arguments.arguments)
            config = values.get("config")
            source = values if config is None else {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
            out = source.get("out")
            if out is None:
                return function(*args, **kwargs)
            command = source.get("command") or f"memaudit {kind} ... --out {out}"
            inputs = {key: _jsonable(value) for key, value in source.items() if key != "command"}
            with claim(Path(out), inputs, command) as held:
                value = function(*args, **kwargs)
                held.complete(list(files))
                distributed.current().barrier()
            return value

        return run

    return decorate


@contextlib.contextmanager
def amended(run_dir: Path, files: tuple[str, ...]) -> Iterator[None]:
    """Rewrite ``files`` of a complete run (``memaudit report``'s page): the folder's lock for the
    block, so no run writes it meanwhile, and the new files' digests in its manifest after. The run
    stays complete whatever happens: the files are published atomically."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST_JSON).is_file():  # no run of memaudit's here (or one from before manifests):
        yield                                     # nothing to lock; the page's writer says what is missing
        return
    handle = _lock(run_dir, str(run_dir))
    try:
        require_complete(run_dir)
        yield
        manifest = read_manifest(run_dir)
        if manifest is not None:
            manifest.setdefault("files", {}).update(
                {name: file_digest(run_dir / name) for name in files if (run_dir / name).is_file()})
            write_json_atomic(run_dir / MANIFEST_JSON, manifest)
    finally:
        _unlock(handle)


def _jsonable(value):
    """An input as the manifest records it: JSON values as they are (non-finite numbers as text),
    paths as text, objects by their type."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return type(value).__name__


def _complete_manifest(out: Path) -> dict | None:
    try:
        manifest = read_manifest(out)
    except RunFolderError:
        return None
    return manifest if manifest is not None and manifest.get("state") == "complete" else None


def _top_files(out: Path) -> dict:
    """The folder's own files (not the manifest and lock, not subfolders) by size and mtime."""
    try:
        entries = list(os.scandir(out))
    except OSError:
        return {}
    return {e.name: (e.stat().st_size, e.stat().st_mtime_ns) for e in entries
            if e.is_file(follow_symlinks=False) and e.name not in (MANIFEST_JSON, LOCK_FILE)}


def _lock(out: Path, name: str = "--out"):
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
        raise RunFolderError(f"{name} {out}: another memaudit run{holder} is writing this folder; wait for it to "
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
        reason = f": {manifest['reason']}" if manifest.get("reason") else ""
        raise RunFolderError(f"{run_dir}: an incomplete run (state {manifest.get('state')!r}{reason}, started "
                             f"{manifest.get('started')}), whose files may mix two runs; rerun the command that "
                             f"writes it to finish: {manifest.get('command') or 'memaudit audit ... --out ' + str(run_dir)}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
