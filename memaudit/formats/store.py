"""Decoded training sets on disk: decode once, memory-map ever after.

A set read from files (a folder, an archive) is decoded once, image by image, into ``images.u8``
(raw uint8 NHWC; its shape in ``meta.json``) beside ``meta.json`` (ids, labels, captions, skipped files) under ``$MEMAUDIT_CACHE/stores/KEY``.
KEY hashes the source's file names and bytes, the format, the decoding options and the store
version, so a changed file, option or decoder makes a new store. Later audits open the images
memory-mapped: the search then streams them in blocks and resident memory stays bounded
whatever the set's size. Stores are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from memaudit.formats.decode import SINK, FileSink
from memaudit.imageset import ImageSet
from memaudit.storage import STALE_AFTER_S, cache_root, fingerprint_files, remove_stale_temporaries, writer_tag

STORE_VERSION = 3  # 3: NAME.txt captions beside folder images


def _source_digest(path: Path) -> str:
    """The names and bytes of a folder's files, or of one file."""
    if path.is_dir():
        return fingerprint_files(path, (p for p in path.rglob("*") if p.is_file()))
    return fingerprint_files(path.parent, [path])


def store_key(path: Path, format_name: str, options) -> str:
    text = json.dumps({"version": STORE_VERSION, "format": format_name, "options": asdict(options),
                       "source": _source_digest(path)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _root() -> Path:

    return cache_root() / "stores"


def open_store(key: str, spec: str):
    """The stored set, images memory-mapped, or None when there is no complete store."""

    folder = _root() / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    labels = None if meta["labels"] is None else np.asarray(meta["labels"], dtype=np.int64)
    return ImageSet(images=images, ids=meta["ids"], spec=spec, labels=labels, captions=meta["captions"],
                    skipped=meta["skipped"], _fingerprint=meta["fingerprint"])


def build_store(key: str, spec: str, load):
    """Run ``load()`` with its decoded images streamed into a new store, publish the store
    atomically (a temporary folder renamed into place) and return it memory-mapped."""

    root = _root()
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root, STALE_AFTER_S)  # stagings of builds that were killed
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".staging-{writer_tag()}-"))
    try:
        sink = FileSink(staging / "images.u8")
        token = SINK.set(sink)
        try:
            image_set = load()
        finally:
            SINK.reset(token)
            sink.handle.close()
        if not isinstance(image_set.images, np.memmap):  # a format that does not decode through Collector
            image_set.images.tofile(staging / "images.u8")
        meta = {"shape": list(image_set.images.shape), "ids": image_set.ids,
                "labels": None if image_set.labels is None else image_set.labels.tolist(),
                "captions": image_set.captions, "skipped": image_set.skipped, "fingerprint": image_set.fingerprint}
        (staging / "meta.json").write_text(json.dumps(meta))
        del image_set
        try:
            os.replace(staging, root / key)
        except OSError:  # another process stored the same set first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stored = open_store(key, spec)
    if stored is None:
        raise OSError(f"the decoded store {root / key} could not be read back")
    return stored
