"""Image sets: training images and audited samples as uint8 NHWC arrays.

A spec names where images come from: a built-in set (``digits``), a folder of image files, or an
``.npz`` file. Built-in sets register in ``BUILTIN_SETS`` by name; a path is sniffed by type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from memaudit.errors import DataError
from memaudit.storage import fingerprint_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
NPZ_IMAGE_KEYS = ("images", "arr_0")
VALID_CHANNELS = (1, 3)


@dataclass
class ImageSet:
    """A set of same-shaped uint8 images (N, H, W, C) with a stable id per image."""

    images: np.ndarray
    ids: list[str]
    spec: str
    seeds: np.ndarray | None = None  # per-image generation seeds, when the source records them
    labels: np.ndarray | None = None
    captions: list[str] | None = None  # per-image text, for text-to-image models' prompts
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_array(self.images)
        return self._fingerprint


# --- built-in sets -------------------------------------------------------------------------


def _load_digits(argument: str | None, spec: str) -> ImageSet:
    """scikit-learn's 1797 real 8x8 handwritten digits (values 0..16) as uint8 grayscale.

    ``digits:N`` keeps a class-balanced nested subset: the first N/10 images of each class, the
    subset rule of Gu et al. (2023) for EMM experiments.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    order = np.arange(len(images))
    if argument is not None:
        order = _class_balanced_subset(labels, _parse_count(argument, spec, len(images)), spec)
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


def _class_balanced_subset(labels: np.ndarray, count: int, spec: str) -> np.ndarray:
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


BUILTIN_SETS: dict[str, Callable[[str | None, str], ImageSet]] = {"digits": _load_digits}


# --- files ------------------------------------------------------------------------------------


def _decode_image(path: Path) -> np.ndarray:
    """Decode one image file with Pillow to uint8 HWC (grayscale stays 1 channel, the rest RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("L", "1", "I", "I;16", "F"):
                image = image.convert("L")
            elif image.mode != "RGB":
                image = image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({error}); expected a valid PNG, JPEG or WebP file") from None
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: refused as a decompression bomb ({error})") from None
    return array[..., None] if array.ndim == 2 else array


def _load_folder(path: Path, spec: str) -> ImageSet:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: the folder holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    arrays, shapes = [], {}
    for file in files:
        array = _decode_image(file)
        shapes.setdefault(array.shape, file)
        if len(shapes) > 1:
            (first_shape, first_file), (shape, _) = list(shapes.items())[:2]
            raise DataError(
                f"{path}: images differ in shape: {first_file.relative_to(path)} is {_hwc(first_shape)} "
                f"but {file.relative_to(path)} is {_hwc(shape)}; all images of one set must share one size and channel count"
            )
        arrays.append(array)
    return ImageSet(images=np.stack(arrays), ids=[f.relative_to(path).as_posix() for f in files], spec=spec)


def _hwc(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _load_npz(path: Path, spec: str) -> ImageSet:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    with archive:
        key = next((k for k in NPZ_IMAGE_KEYS if k in archive.files), None)
        if key is None:
            raise DataError(f"{path}: no image array; expected key 'images' or 'arr_0', found {sorted(archive.files)}")
        try:
            images = archive[key]
            seeds = archive["seeds"] if "seeds" in archive.files else None
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: array {key!r} cannot be read ({error})") from None
    if images.dtype != np.uint8:
        raise DataError(f"{path}: array {key!r} has dtype {images.dtype}; expected uint8 pixels 0..255")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in VALID_CHANNELS:
        raise DataError(f"{path}: array {key!r} has shape {images.shape}; expected (N, H, W, C) with C = 1 or 3")
    if seeds is not None and (seeds.shape != (len(images),) or seeds.dtype.kind not in "iu"):
        seeds = None
    return ImageSet(
        images=np.ascontiguousarray(images),
        ids=[f"{path.name}[{i}]" for i in range(len(images))],
        spec=spec,
        seeds=None if seeds is None else seeds.astype(np.int64),
    )


# --- dispatch ---------------------------------------------------------------------------------


def describe_valid_specs() -> str:
    return f"one of {', '.join(sorted(BUILTIN_SETS))} (optionally NAME:N), a folder of images, or an .npz file"


def load_image_set(spec: str, *, min_images: int = 1) -> ImageSet:
    """Load the image set a spec names; raise ``DataError`` naming the spec when it cannot."""
    name, _, argument = spec.partition(":")
    if name in BUILTIN_SETS and not Path(spec).exists():
        image_set = BUILTIN_SETS[name](argument or None, spec)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"{spec}: no such file or folder; expected {describe_valid_specs()}")
        if path.is_dir():
            image_set = _load_folder(path, spec)
        elif path.suffix.lower() == ".npz":
            image_set = _load_npz(path, spec)
        else:
            raise DataError(f"{spec}: unknown image-set format; expected {describe_valid_specs()}")
    if len(image_set) < min_images:
        raise DataError(f"{spec}: holds {len(image_set)} image(s); at least {min_images} are needed")
    return image_set
