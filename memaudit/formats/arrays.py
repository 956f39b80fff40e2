"""Arrays of decoded images: ``.npz`` (the ADM/EDM reference-batch layout) and ``.npy``.

uint8 (N, H, W, C) or (N, H, W); an .npz keeps ``labels`` (or ``y``) and ``seeds`` when present.
Files are read with ``allow_pickle=False``: an object array is refused, never unpickled.
"""

from __future__ import annotations

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


def _optional_vector(array, n: int, kinds: str):
    if array is None or array.shape != (n,) or array.dtype.kind not in kinds:
        return None
    return array.astype(np.int64)


def _resized(images: np.ndarray, options: LoadOptions) -> np.ndarray:
    if options.resize == "none" or options.size is None or images.shape[1:3] == options.size:
        return images if images.flags.c_contiguous else np.ascontiguousarray(images)
    return np.stack([fit(image, options) for image in images])


def load_npz(path: Path, spec: str, options: LoadOptions):

    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
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
        except (OSError, ValueError, EOFError, KeyError) as error:
            raise DataError(f"{path}: array {key!r} cannot be read ({error})") from None
    images = _checked_images(images, path, key)
    if labels is not None and labels.ndim == 2 and labels.shape[0] == len(images) and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)  # one-hot, as EDM stores class labels
    return ImageSet(images=_resized(images, options), ids=[f"{path.name}[{i}]" for i in range(len(images))], spec=spec,
                    seeds=_optional_vector(seeds, len(images), "iu"), labels=_optional_vector(labels, len(images), "iu"))


def load_npy(path: Path, spec: str, options: LoadOptions):

    try:
        images = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy file of uint8 images ({error})") from None
    images = _checked_images(images, path, "array")  # still memory-mapped
    return ImageSet(images=_resized(images, options), ids=[f"{path.name}[{i}]" for i in range(len(images))], spec=spec)
