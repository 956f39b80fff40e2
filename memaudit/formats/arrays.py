"""Arrays of decoded images: ``.npz`` (the ADM/EDM reference-batch layout) and ``.npy``.

uint8 (N, H, W, C) or (N, H, W); an .npz keeps ``labels`` (or ``y``) and ``seeds`` when present,
and refuses them when they do not fit the images (another length, negative, fractional or NaN):
labels or seeds silently dropped would make a wrong audit look right.
Files are read with ``allow_pickle=False``: an object array is refused, never unpickled. A file
that is no .npz/.npy at all (its first bytes say so), or is truncated, is refused in one line.
"""

from __future__ import annotations

import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from memaudit.errors import DataError
from memaudit.imageset import ImageSet
from memaudit.storage import npz_member_memmap

from .decode import LoadOptions, fit

NPZ_IMAGE_KEYS = ("images", "arr_0")
NPZ_LABEL_KEYS = ("labels", "y")
VALID_CHANNELS = (1, 3)


def sniff_npz(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".npz"


def sniff_npy(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".npy"


def _checked_images(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: array {key!r} has dtype {images.dtype}; expected uint8 pixels 0..255")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in VALID_CHANNELS:
        raise DataError(f"{path}: array {key!r} has shape {images.shape}; expected (N, H, W, C) with C = 1 or 3")
    return images


# what reading a damaged file can raise, beside OSError/ValueError/EOFError: a truncated zip, a bad
# deflate stream, a short struct in a header, an .npy header dict numpy's parser cannot tokenize
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, struct.error,
               NotImplementedError, MemoryError, SyntaxError, tokenize.TokenError)
NPZ_MAGIC, NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"


def _require_magic(path: Path, magic: bytes, kind: str) -> None:
    """numpy's own error for a file that is no .npy ("contains pickled data... allow_pickle") would
    point the user at unpickling: say what the file is not instead."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(magic))
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    if head != magic:
        raise DataError(f"{path}: not {kind} file (it does not start as one); expected {kind} of uint8 images "
                        "written by numpy (np.save / np.savez)")


def _vector(array, n: int, path: Path, key: str, what: str) -> np.ndarray | None:
    """A per-image vector of non-negative integers (labels, seeds), or DataError saying why not."""
    if array is None:
        return None
    if array.shape != (n,):
        raise DataError(f"{path}: {key!r} has shape {array.shape} but there are {n} images; expected one {what} "
                        "per image, or leave it out")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not (array == np.round(array)).all():
            raise DataError(f"{path}: {key!r} holds NaN, infinite or fractional values; expected one integer {what} "
                            "per image, or leave it out")
    elif array.dtype.kind not in "iub":
        raise DataError(f"{path}: {key!r} has dtype {array.dtype}; expected integer {what}s, or leave it out")
    if len(array) and (array.min() < 0 or array.max() > np.iinfo(np.int64).max):
        raise DataError(f"{path}: {key!r} holds negative values; expected non-negative integer {what}s")
    return array.astype(np.int64)


def _resized(images: np.ndarray, options: LoadOptions) -> np.ndarray:
    if options.resize == "none" or options.size is None or images.shape[1:3] == options.size:
        return images if images.flags.c_contiguous else np.ascontiguousarray(images)
    options.check_memory(len(images), images.shape[-1])
    return np.stack([fit(image, options) for image in images])


def load_npz(path: Path, spec: str, options: LoadOptions):

    _require_magic(path, NPZ_MAGIC, "an .npz")
    try:
        archive = np.load(path, allow_pickle=False)
    except READ_ERRORS as error:
        raise DataError(f"{path}: not a readable .npz file, truncated or damaged ({_reason(error)})") from None
    with archive:
        key = next((k for k in NPZ_IMAGE_KEYS if k in archive.files), None)
        if key is None:
            raise DataError(f"{path}: no image array; expected key 'images' or 'arr_0', found {sorted(archive.files)}")
        label_key = next((k for k in NPZ_LABEL_KEYS if k in archive.files), None)
        try:
            # memory-mapped when stored uncompressed (np.savez, memaudit's samples.npz): no process
            # has to hold a large set, and ranks read only the rows they use
            images = npz_member_memmap(path, key)
            images = archive[key] if images is None else images
            seeds = archive["seeds"] if "seeds" in archive.files else None
            labels = archive[label_key] if label_key else None
        except READ_ERRORS as error:
            raise DataError(f"{path}: array {key!r} cannot be read, truncated or damaged ({_reason(error)})") from None
    images = _checked_images(images, path, key)
    if labels is not None and labels.ndim == 2 and labels.shape[0] == len(images) and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)  # one-hot, as EDM stores class labels
    seeds, labels = _vector(seeds, len(images), path, "seeds", "seed"), _vector(labels, len(images), path, label_key, "label")
    try:
        images = _resized(images, options)
    except READ_ERRORS as error:  # a memory-mapped member shorter than its header says
        raise DataError(f"{path}: array {key!r} cannot be read, truncated or damaged ({_reason(error)})") from None
    return ImageSet(images=images, ids=[f"{path.name}[{i}]" for i in range(len(images))], spec=spec,
                    seeds=seeds, labels=labels)


def load_npy(path: Path, spec: str, options: LoadOptions):

    _require_magic(path, NPY_MAGIC, "an .npy")
    try:
        images = np.load(path, allow_pickle=False, mmap_mode="r")
    except READ_ERRORS as error:
        raise DataError(f"{path}: not a readable .npy file of uint8 images, truncated or damaged ({_reason(error)})") from None
    images = _checked_images(images, path, "array")  # still memory-mapped
    return ImageSet(images=_resized(images, options), ids=[f"{path.name}[{i}]" for i in range(len(images))], spec=spec)


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
