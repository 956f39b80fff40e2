"""Image sets: training images and audited samples as uint8 NHWC arrays.

A spec names where images come from: a built-in set (``digits``), or a path in one of the
formats of ``memaudit.formats`` (sniffed, or named as ``FORMAT:PATH``). Built-in sets register in
``BUILTIN_SETS`` by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from memaudit.errors import DataError
from memaudit.formats.decode import LoadOptions
from memaudit.imageset import ImageSet  # re-exported: memaudit.data.ImageSet is where callers have found it


# --- built-in sets -------------------------------------------------------------------------


def _load_digits(argument: str | None, spec: str) -> ImageSet:
    """scikit-learn's 1797 real 8x8 handwritten digits (values 0..16) as uint8 grayscale.

    ``digits:N`` keeps a class-balanced nested subset: the first N/10 images of each class, the
    subset rule of Gu et al. (2023) for EMM experiments. ``digits:N:rest`` is every other digit:
    the non-members of a model trained on ``digits:N`` (membership inference's ground truth).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    order = np.arange(len(images))
    if argument is not None:
        count, _, rest = argument.partition(":")
        if rest not in ("", "rest"):
            raise DataError(f"{spec}: expected digits, digits:N or digits:N:rest (the images not in digits:N)")
        order = class_balanced_subset(labels, _parse_count(count, spec, len(images)), spec)
        if rest:
            order = np.setdiff1d(np.arange(len(images)), order)
    return ImageSet(
        images=np.ascontiguousarray(images[order]),
        ids=[f"digits/{i}" for i in order],
        spec=spec,
        labels=labels[order],
    )


def _parse_count(text: str, spec: str, available: int) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 2 <= count <= available:
        raise DataError(f"{spec}: the subset size must be an integer from 2 to {available}, got {text!r}")
    return count


def class_balanced_subset(labels: np.ndarray, count: int, spec: str) -> np.ndarray:
    """Indices of the first count/C images of each of the C classes, in index order (nested in count)."""
    classes = np.unique(labels)
    if count % len(classes):
        raise DataError(f"{spec}: the subset size must be a multiple of the {len(classes)} classes")
    per_class = count // len(classes)
    chosen = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise DataError(f"{spec}: class {label} has only {len(members)} images, {per_class} needed")
        chosen.append(members[:per_class])
    return np.sort(np.concatenate(chosen))


def _load_photos(argument: str | None, spec: str) -> ImageSet:
    """520 real 32x32 RGB tiles cut edge to edge from the two photographs that ship with
    scikit-learn (china.jpg, flower.jpg); ``photos:N`` keeps the first N."""
    import os

    import sklearn.datasets
    from PIL import Image

    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    tiles, ids = [], []
    for name in ("china.jpg", "flower.jpg"):
        with Image.open(os.path.join(folder, name)) as photo:
            pixels = np.asarray(photo.convert("RGB"))
        for y in range(0, pixels.shape[0] - 31, 32):
            for x in range(0, pixels.shape[1] - 31, 32):
                tiles.append(pixels[y:y + 32, x:x + 32])
                ids.append(f"{name}@{y},{x}")
    count = len(tiles) if argument is None else _parse_count(argument, spec, len(tiles))
    return ImageSet(images=np.ascontiguousarray(np.stack(tiles[:count])), ids=ids[:count], spec=spec)


BUILTIN_SETS: dict[str, Callable[[str | None, str], ImageSet]] = {"digits": _load_digits, "photos": _load_photos}


# --- dispatch ---------------------------------------------------------------------------------


def describe_valid_specs() -> str:
    from memaudit.formats import FORMATS

    return (f"one of {', '.join(sorted(BUILTIN_SETS))} (optionally NAME:N), or a path in one of the formats "
            f"{', '.join(FORMATS)} (FORMAT:PATH names one)")


def _load_through_store(image_format, path: Path, spec: str, options: LoadOptions) -> ImageSet:
    """Formats that decode files go through the on-disk store; array files are mapped directly."""
    from memaudit.formats import store

    if not image_format.decodes or not path.exists():  # array files, or a pattern naming several files
        return image_format.load(path, spec, options)
    key = store.store_key(path, image_format.name, options)
    stored = store.open_store(key, spec)
    if stored is not None:
        return stored
    return store.build_store(key, spec, lambda: image_format.load(path, spec, options))


def load_image_set(spec: str, *, min_images: int = 1, options: LoadOptions | None = None) -> ImageSet:
    """Load the image set a spec names; raise ``DataError`` naming the spec when it cannot."""
    from memaudit.formats import resolve

    options = options or LoadOptions()
    options.validate()
    name, _, argument = spec.partition(":")
    if name in BUILTIN_SETS and not Path(spec).exists():
        image_set = BUILTIN_SETS[name](argument or None, spec)
        if options.resize != "none":
            from memaudit.formats.decode import fit

            options.check_memory(len(image_set), image_set.image_shape[-1])
            image_set.images = np.stack([fit(image, options) for image in image_set.images])
    else:
        found = resolve(spec)
        if found is None:
            raise DataError(f"{spec}: no such file or folder; expected {describe_valid_specs()}")
        image_format, path = found
        image_set = _load_through_store(image_format, path, spec, options)
    if len(image_set) < min_images:
        raise DataError(f"{spec}: holds {len(image_set)} image(s); at least {min_images} are needed")
    return image_set
