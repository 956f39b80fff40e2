"""Feature caches: extracted vectors stored on disk, keyed by what determines them.

The key is the image set's content fingerprint, the space's name, its weight digest and its
preprocessing (``FeatureSpace.digest``) and the cache format version: one changed pixel, weight
file or preprocessing setting gives a new key. Files are written atomically and shared between
audits of the same training set (``memaudit index`` fills them ahead of time).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from memaudit import progress
from memaudit.storage import write_bytes_atomic

FORMAT_VERSION = 1


def cache_root() -> Path:
    """``$MEMAUDIT_CACHE``, else ``~/.cache/memaudit``."""
    return Path(os.environ.get("MEMAUDIT_CACHE") or Path.home() / ".cache" / "memaudit")


def cache_key(images_fingerprint: str, space) -> str:
    text = f"{FORMAT_VERSION}|{images_fingerprint}|{space.name}|{space.digest}"
    return hashlib.sha256(text.encode()).hexdigest()


def extract_features(space, images: np.ndarray, description: str = "features") -> np.ndarray:
    """float32 features of ``images`` in ``space``, in batches, with a progress bar."""
    parts = []
    with progress.task(f"{description} ({space.name})", total=len(images)) as advance:
        for start in range(0, len(images), space.batch_size):
            batch = images[start:start + space.batch_size]
            parts.append(np.asarray(space.extract(batch), dtype=np.float32))
            advance(len(batch))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def cache_path(images_fingerprint: str, space, root: Path | None = None) -> Path:
    return (root or cache_root()) / "features" / f"{cache_key(images_fingerprint, space)}.npy"


def cached_features(space, images: np.ndarray, images_fingerprint: str, root: Path | None = None) -> tuple[np.ndarray, bool]:
    """Features from the cache when present, else extracted and stored. Returns (features, was_cached)."""
    path = cache_path(images_fingerprint, space, root)
    if path.is_file():
        try:
            features = np.load(path, mmap_mode="r", allow_pickle=False)
            if len(features) == len(images):
                return features, True
        except (OSError, ValueError):
            pass  # unreadable: extract again
    features = extract_features(space, images)
    buffer = io.BytesIO()
    np.save(buffer, features, allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())
    return features, False


def features_of(space, images: np.ndarray, fingerprint: str | None = None, description: str = "features") -> np.ndarray:
    """``images`` in ``space``: the uint8 pixels themselves in the native pixel space (no copy),
    cached features when the set has a ``fingerprint`` (a training set, a holdout), else extracted."""
    if space.raw_pixels:
        return images.reshape(len(images), -1)
    if fingerprint is not None:
        return cached_features(space, images, fingerprint)[0]
    return extract_features(space, images, description)
