"""Feature caches: extracted vectors stored on disk, keyed by what determines them.

The key is the image set's content fingerprint, the space's name, its weight digest and its
preprocessing (``FeatureSpace.digest``) and the cache format version: one changed pixel, weight
file or preprocessing setting gives a new key. Files are written atomically and shared between
audits of the same training set (``memaudit index`` fills them ahead of time).

A training set's features are extracted in chunks of ``CHUNK_ROWS`` images, each written to disk
when done and shared out among the ranks of a distributed run (``memaudit.units``), then joined
into the cache file: an interrupted extraction resumes at its first unfinished chunk. Features of
sets without a fingerprint (the samples) are extracted in memory, each rank its share of rows.

Several audits may fill one cache at once (two runs started together, sharing $MEMAUDIT_CACHE).
Every file is published by a rename from a temporary name of its own writer, so a reader sees a
whole file or none; a writer that finds the cache file published by another meanwhile (its chunks
already removed) takes that file, and whoever publishes or finds the cache file removes the
chunks. Temporaries of writers that died are removed: at once when the writer was a process of
this machine, else once older than ``STALE_AFTER_S``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from memaudit import distributed, progress, units
from memaudit.storage import STALE_AFTER_S, cache_root, remove_stale_temporaries, write_bytes_atomic, write_file_atomic

FORMAT_VERSION = 1
CHUNK_ROWS = 16_384  # training images per resumable extraction chunk


def cache_key(images_fingerprint: str, space) -> str:
    text = f"{FORMAT_VERSION}|{images_fingerprint}|{space.name}|{space.digest}"
    return hashlib.sha256(text.encode()).hexdigest()


def extract_features(space, images: np.ndarray, description: str = "features") -> np.ndarray:
    """float32 features of ``images`` in ``space``, in batches, with a progress bar; in a distributed
    run each rank extracts its share of the rows and every rank returns them all."""
    world = distributed.current()
    # ranks take whole batches, the batches one process would form: a model's output can depend on
    # the batch it is computed in (kernels chosen by shape), so the rows are those of one process
    start, stop = world.batch_range(len(images), space.batch_size)
    return world.concat_rows(_extract_rows(space, images, start, stop, description))


def shared_features(space, images: np.ndarray, folder: Path, description: str = "features") -> np.ndarray:
    """float32 features of ``images`` in ``space`` as one file in ``folder`` (which every rank sees),
    memory-mapped: each rank extracts its share of the rows (whole batches, as ``extract_features``)
    and writes them; rank 0 joins the parts. So no rank holds more than its share in memory, and any
    rank can read any row. The file belongs to the run that asked for it (not a cache: the samples'
    content is not part of its name); a collective."""
    world = distributed.current()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(f"{FORMAT_VERSION}|{space.name}|{space.digest}".encode()).hexdigest()[:24]
    start, stop = world.batch_range(len(images), space.batch_size)
    features = _extract_rows(space, images, start, stop, description)
    part = folder / f"{name}.rows-{start}-{stop}.npy"
    if stop > start:
        _save_npy(part, features)
    del features  # this rank's share is on disk; the joined file is mapped below
    parts = [folder / f"{name}.rows-{a}-{b}.npy" for a, b in world.all_gather_json([start, stop]) if b > a]
    path = folder / f"{name}.npy"
    if world.is_main:
        _join_chunks(path, parts)
        for joined in parts:
            joined.unlink(missing_ok=True)
    world.barrier()
    features = _load_cache(path, len(images))
    if features is None:
        from memaudit.errors import DataError

        raise DataError(f"{path}: the samples' features just written are unreadable on rank {world.rank}; "
                        "every rank must see the same run folder (--out on a shared filesystem)")
    return features


def _extract_rows(space, images: np.ndarray, start: int, stop: int, description: str) -> np.ndarray:
    parts = []
    with progress.task(f"{description} ({space.name})", total=stop - start) as advance:
        for first in range(start, stop, space.batch_size):
            batch = images[first:min(stop, first + space.batch_size)]
            parts.append(np.asarray(space.extract(batch), dtype=np.float32))
            advance(len(batch))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def cache_path(images_fingerprint: str, space, root: Path | None = None) -> Path:
    return (root or cache_root()) / "features" / f"{cache_key(images_fingerprint, space)}.npy"


def cached_features(space, images: np.ndarray, images_fingerprint: str, root: Path | None = None) -> tuple[np.ndarray, bool]:
    """Features from the cache when present, else extracted and stored. Returns (features, was_cached).
    A collective in a distributed run: every rank calls it and gets the same features."""
    path = cache_path(images_fingerprint, space, root)
    world = distributed.current()
    chunk_dir = path.with_name(path.stem + ".chunks")
    cached = _load_cache(path, len(images))
    if world.all_agree(cached is not None):
        if world.is_main:
            _remove_chunks(chunk_dir)  # left by a writer that died after publishing
        return cached, True
    world.check_shared_folder(path.parent, "$MEMAUDIT_CACHE")
    if world.is_main:
        remove_stale_temporaries(path.parent, STALE_AFTER_S)
    # whole batches (the batches one process forms), and at least one chunk per rank
    batches = max(1, min(CHUNK_ROWS // space.batch_size, -(-len(images) // (space.batch_size * world.size))))
    rows = batches * space.batch_size
    chunks = [(first, min(rows, len(images) - first)) for first in range(0, len(images), rows)]
    chunk_paths = [chunk_dir / f"rows-{first}-{count}.npy" for first, count in chunks]
    work = units.plan(len(chunks), lambda c: _load_cache(chunk_paths[c], chunks[c][1]) is not None,
                      costs=[count for _, count in chunks])
    for c in work.mine:
        if _load_cache(path, len(images)) is not None:
            break  # another audit published the whole cache meanwhile
        first, count = chunks[c]
        features = _extract_rows(space, images, first, first + count, "features")
        try:
            _save_npy(chunk_paths[c], features)
        except FileNotFoundError:  # the chunk folder went with another writer's publication
            if _load_cache(path, len(images)) is None:
                raise
    units.finish()
    if world.is_main:
        _publish(path, chunk_paths, len(images))
        _remove_chunks(chunk_dir)
    world.barrier()
    features = _load_cache(path, len(images))
    if features is None:
        from memaudit.errors import DataError

        raise DataError(f"{path}: the feature cache just written is unreadable on rank {world.rank}")
    return features, False


def _load_cache(path: Path, rows: int) -> np.ndarray | None:
    """A stored feature array of ``rows`` rows (memory-mapped), or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # unreadable: extract again
    return features if len(features) == rows else None


def _publish(path: Path, chunk_paths: list[Path], rows: int) -> None:
    """Join the chunks into the cache file, unless another writer has published it: then its
    chunks may be gone, and its file (the same features: same key) is the result."""
    for _ in range(3):
        if _load_cache(path, rows) is not None:
            return
        try:
            _join_chunks(path, chunk_paths)
            return
        except FileNotFoundError:
            continue  # a chunk went between our check and our read: look for the published file again
    if _load_cache(path, rows) is None:
        from memaudit.errors import DataError

        raise DataError(f"{path.with_name(path.stem + '.chunks')}: feature chunks vanished while being joined and "
                        "no cache file was published; another process is removing $MEMAUDIT_CACHE, rerun the command")


def _remove_chunks(chunk_dir: Path) -> None:
    """Remove the finished chunks (file by file: a concurrent writer may still be adding one, and
    keeps its own temporary), then the folder when empty."""
    if not chunk_dir.is_dir():
        return
    for chunk in chunk_dir.glob("rows-*.npy"):
        chunk.unlink(missing_ok=True)
    try:
        chunk_dir.rmdir()
    except OSError:
        pass  # not empty: a concurrent writer's chunk or temporary; it removes them when done


def _join_chunks(path: Path, chunk_paths: list[Path]) -> None:
    """The chunks, in order, as one .npy at ``path``, streamed (one chunk in memory at a time) and
    published by a rename from a name of this writer's own."""
    if not chunk_paths:
        _save_npy(path, np.zeros((0, 0), np.float32))
        return
    parts = [np.load(p, mmap_mode="r", allow_pickle=False) for p in chunk_paths]
    shape = (sum(len(p) for p in parts), *parts[0].shape[1:])

    def write(tmp: Path) -> None:
        # plain writes, not a memory map: a full disk is then an OSError, not a SIGBUS
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                          "fortran_order": False, "shape": shape})
            for part in parts:
                handle.write(np.ascontiguousarray(part, dtype=np.float32).tobytes())

    write_file_atomic(path, write)


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())


def features_of(space, images: np.ndarray, fingerprint: str | None = None, description: str = "features",
                shared: Path | None = None) -> np.ndarray:
    """``images`` in ``space``: the uint8 pixels themselves in the native pixel space (no copy),
    cached features when the set has a ``fingerprint`` (a training set, a holdout), else extracted:
    in a distributed run with a ``shared`` folder into a file there (``shared_features``: each rank
    holds only its share), otherwise in memory."""
    if space.raw_pixels:
        return images.reshape(len(images), -1)
    if fingerprint is not None:
        return cached_features(space, images, fingerprint)[0]
    if shared is not None and distributed.current().distributed:
        return shared_features(space, images, shared, description)
    return extract_features(space, images, description)
