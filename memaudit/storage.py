"""Content fingerprints and atomic writes: the two things every cache here relies on."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

FINGERPRINT_PREFIX = "sha256:"
STALE_AFTER_S = 24 * 3600  # a shared cache's temporary untouched this long belongs to no live writer


def cache_root() -> Path:
    """The shared caches' folder (training-set features, decoded sets, indexes, quality radii):
    ``$MEMAUDIT_CACHE``, else ``~/.cache/memaudit``."""
    return Path(os.environ.get("MEMAUDIT_CACHE") or Path.home() / ".cache" / "memaudit")


def fingerprint_array(array: np.ndarray) -> str:
    """Hash of an array's dtype, shape and bytes."""
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return FINGERPRINT_PREFIX + digest.hexdigest()


def image_digests(images: np.ndarray) -> Iterator[bytes]:
    """A short hash of each image's bytes, to find identical images among many."""
    for image in images:
        yield hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def fingerprint_files(root: Path, paths: Iterable[Path]) -> str:
    """Hash of the relative names and contents of files under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.fsencode(path.relative_to(root).as_posix()) + b"\0")  # names need not be UTF-8
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return FINGERPRINT_PREFIX + digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of one file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return FINGERPRINT_PREFIX + digest.hexdigest()


def fingerprint_json(value: Any) -> str:
    """Hash of a JSON-serialisable value (keys sorted), for settings."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return FINGERPRINT_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{writer_tag()}-", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # a failed write names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def writer_tag() -> str:
    """``PID-HOST``: part of every temporary's name, so a cleaner can tell a dead writer's
    temporary (same host, no such process) from a live one's, whatever its age."""
    return f"{os.getpid()}-{_HOST}"


_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
_WRITER = re.compile(r"\.(\d+)-([0-9a-f]{8})-")


def is_temporary(path: Path) -> bool:
    """Names of memaudit's work in progress: ``.NAME.PID-HOST-XXXX.tmp`` files of atomic writes,
    ``.staging-PID-HOST-XXXX`` folders (only these: a user's own dot-files are never touched)."""
    name = path.name
    if name.startswith(".staging-"):
        return _WRITER.search("." + name[len(".staging-"):]) is not None
    return name.startswith(".") and name.endswith(".tmp") and _WRITER.search(name) is not None


def _writer_is_dead(name: str) -> bool:
    match = _WRITER.search(name.replace(".staging-", "."))
    if match is None or match[2] != _HOST:
        return False  # another machine's (or an older name): only its age can tell
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def remove_stale_temporaries(folder: Path, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove the temporaries under ``folder`` (recursively) of interrupted writes (a crash, kill -9):
    those whose writer is a process of this machine that no longer runs, and any not modified for
    ``older_than_s`` seconds (a writer elsewhere). Returns how many went. ``older_than_s=0``
    removes all: only for a folder this process holds the lock of."""
    removed = 0
    now = time.time()
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            path = Path(root) / name
            if not is_temporary(path):
                continue
            try:
                if now - path.lstat().st_mtime < older_than_s and not _writer_is_dead(name):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                    dirs.remove(name)
                else:
                    path.unlink()
                removed += 1
            except FileNotFoundError:
                continue  # its writer finished (renamed it) or another cleaner was first
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def displayable(text: str) -> str:
    """``text`` with the undecodable bytes of a non-UTF-8 file name (lone surrogates, Python's
    surrogateescape) as U+FFFD: what a page or a terminal can show."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def write_text_atomic(path: Path, text: str) -> None:
    """UTF-8 text. A file name that is not UTF-8 reaches text as lone surrogates (Python's
    surrogateescape); it is written as U+FFFD so the file stays valid UTF-8 (audit.json keeps the
    exact name as JSON escapes)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = displayable(text).encode("utf-8")
    write_bytes_atomic(path, data)


def make_folder(folder: Path, name: str, error=None) -> Path:
    """``folder`` as a folder (created with its parents), or one line saying why it cannot be one
    (it, or a folder above it, is a file): ``error`` (default InputError) naming option ``name``."""
    from memaudit.errors import InputError

    error = error or InputError
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise error(f"{name} {folder}: a file, not a folder; give a folder (created when missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        above = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
        raise error(f"{name} {folder}: {above or 'a folder above it'} is a file, not a folder; "
                    "give a folder path (created when missing)") from None
    return folder


def write_json_atomic(path: Path, value: Any) -> None:
    """A result document as indented, strict JSON (NaN refused) ending in a newline."""
    write_text_atomic(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


@dataclass(frozen=True)
class RowBlocks:
    """An array given as its row blocks, in order (``rows`` in all): written block by block, so an
    array larger than memory is never in it whole."""

    rows: int
    blocks: Callable[[], Iterable[np.ndarray]]


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary of this writer's own beside ``path`` (for writers that need a
    file name: zip archives, faiss, streamed arrays); it is synced and renamed onto ``path``, or
    removed when anything fails, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{writer_tag()}-{os.urandom(4).hex()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_npz_streamed_atomic(path: Path, **arrays) -> None:
    """An uncompressed .npz, as ``np.savez`` writes it, published by a rename; each array is an array
    or a ``RowBlocks`` (streamed: one block in memory at a time). Its members can then be
    memory-mapped (``npz_member_memmap``)."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, value in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    if isinstance(value, RowBlocks):
                        _write_row_blocks(member, value, f"{path}: {name}")
                    else:
                        np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)

    write_file_atomic(path, write)


def _write_row_blocks(member, value: RowBlocks, name: str) -> None:
    blocks = iter(value.blocks())
    first = next(blocks, None)
    first = None if first is None else np.ascontiguousarray(first)
    dtype = np.dtype(np.uint8) if first is None else first.dtype
    shape = (value.rows, *(() if first is None else first.shape[1:]))
    np.lib.format.write_array_header_1_0(member, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": shape})
    written = 0
    for block in itertools.chain([] if first is None else [first], blocks):
        block = np.ascontiguousarray(block)
        if block.dtype != dtype or block.shape[1:] != shape[1:]:
            raise ValueError(f"{name}: a block of {block.dtype} {block.shape[1:]} among {dtype} {shape[1:]}")
        member.write(block.data)
        written += len(block)
    if written != value.rows:
        raise ValueError(f"{name}: {written} rows written of {value.rows}")


def npz_member_memmap(path: Path, name: str) -> np.ndarray | None:
    """Array ``name`` of an .npz, memory-mapped (read-only), or None when the archive stores it
    compressed (``np.savez_compressed``) or it is not a plain .npy member."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
            return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)  # the member's local header: its name and extra field lengths at 26
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(handle)
        offset = handle.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)  # nothing to map
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def release_mapped_pages(array) -> None:
    """Let go of the pages of a memory-mapped array already read, so the process's resident memory
    stays bounded by what it holds now whatever the file's size (the kernel may keep them cached)."""
    import mmap

    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


GATHER_ROWS = 1024  # rows of a memory-mapped array read between two releases of its pages


def gather_rows(array, rows: np.ndarray, piece: int = GATHER_ROWS) -> np.ndarray:
    """``array[rows]`` (``rows`` sorted). From a memory-mapped array the rows are read in pieces of
    ``piece`` rows, its pages let go after each: the kernel maps up to 64 KiB around each page
    fault, so rows read at random from a large file would otherwise make the whole file resident
    (a piece maps at most ``piece`` x 64 KiB; larger pieces let go less often, which costs time)."""
    if getattr(array, "_mmap", None) is None:
        return np.asarray(array[rows])
    out = np.empty((len(rows), *array.shape[1:]), array.dtype)
    for start in range(0, len(rows), piece):
        out[start:start + piece] = array[rows[start:start + piece]]
        release_mapped_pages(array)
    return out
