"""What each EMM point trains on: nested subsets of the full set (class-balanced or random), the
labels the model is conditioned on, and the full set prepared once per search (resolution,
classes, --mix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from memaudit.data import ImageSet, class_balanced_subset
from memaudit.errors import InputError

SUBSET_SEED = 0  # --subset random: one fixed permutation, so subsets are nested
LABEL_SEED = 0  # random labels are drawn once for the whole set, so nested subsets share them


# --- subsets: nested orders of the full set ---------------------------------------------------


def _balanced(full: ImageSet, size: int) -> np.ndarray:
    return class_balanced_subset(full.labels, size, f"--train {full.spec} at |D| = {size}")


def _random(full: ImageSet, size: int) -> np.ndarray:
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(full))[:size])


SUBSETS: dict[str, Callable[[ImageSet, int], np.ndarray]] = {"balanced": _balanced, "random": _random}


def size_unit(full: ImageSet, subset: str) -> int:
    """Sizes are multiples of this: the number of classes for balanced subsets, else 1."""
    if subset == "balanced":
        if full.labels is None:
            raise InputError(f"--train {full.spec}: class-balanced subsets need class labels and this set has none; "
                             "use --subset random")
        return len(np.unique(full.labels))
    return 1


# --- labels the model is conditioned on -------------------------------------------------------


@dataclass(frozen=True)
class Labeling:
    """``--labels``: the kind and, for random:C, the number of classes."""

    kind: str
    classes: int | None = None

    def assign(self, full: ImageSet, indices: np.ndarray) -> tuple[np.ndarray | None, int | None]:
        """(labels of the chosen images, number of classes of the model), or (None, None)."""
        return LABELINGS[self.kind](self, full, indices)


def _no_labels(labeling, full, indices):
    return None, None


def _true_labels(labeling, full, indices):
    if full.labels is None:
        raise InputError(f"--labels true: the training set {full.spec} has no class labels; use none, random:C or unique")
    return full.labels[indices], int(full.labels.max()) + 1


def _random_labels(labeling, full, indices):
    every = np.random.default_rng(LABEL_SEED).integers(0, labeling.classes, len(full))
    return every[indices], labeling.classes


def _unique_labels(labeling, full, indices):
    return np.arange(len(indices), dtype=np.int64), len(indices)


LABELINGS = {"none": _no_labels, "true": _true_labels, "random": _random_labels, "unique": _unique_labels}
LABEL_FORMS = "none, true, random:C or unique"


def parse_labels(text: str) -> Labeling:
    kind, sep, argument = text.partition(":")
    if kind not in LABELINGS or (kind == "random") != bool(sep):
        raise InputError(f"--labels {text}: expected {LABEL_FORMS}")
    if kind != "random":
        return Labeling(kind)
    if not argument.isdigit() or int(argument) < 1:
        raise InputError(f"--labels {text}: random:C needs a whole number of classes C >= 1")
    return Labeling(kind, int(argument))


# --- the full set, once per search ------------------------------------------------------------


def resize_set(full: ImageSet, resolution: int | None) -> ImageSet:
    """The set at ``resolution`` x ``resolution`` (bilinear, Pillow), or unchanged."""
    if resolution is None or full.image_shape[:2] == (resolution, resolution):
        return full
    from PIL import Image

    from memaudit.memory import check_fits

    check_fits(len(full) * resolution * resolution * full.image_shape[-1], f"--resolution {resolution}",
               f"{len(full)} images of {resolution}x{resolution}x{full.image_shape[-1]}")

    resized = []
    for image in full.images:
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        array = np.asarray(pil.resize((resolution, resolution), Image.BILINEAR), np.uint8)
        resized.append(array[..., None] if array.ndim == 2 else array)
    return ImageSet(np.stack(resized), full.ids, f"{full.spec}@{resolution}", labels=full.labels)


def first_classes(full: ImageSet, classes: int | None) -> ImageSet:
    """Inter-diversity (Gu et al. 2023, section 3.2): only the images of the first C classes."""
    if classes is None:
        return full
    if full.labels is None:
        raise InputError(f"--classes {classes}: the training set {full.spec} has no class labels")
    present = np.unique(full.labels)
    if classes > len(present):
        raise InputError(f"--classes {classes}: {full.spec} has only {len(present)} classes")
    keep = np.flatnonzero(np.isin(full.labels, present[:classes]))
    return ImageSet(full.images[keep], [full.ids[i] for i in keep], f"{full.spec}[classes<{classes}]",
                    labels=full.labels[keep])


def parse_mix(text: str | None) -> tuple[str, float] | None:
    """``--mix DATA:ALPHA``: the other set's spec and the share ALPHA in [0, 1] of each subset it supplies."""
    if text is None:
        return None
    spec, sep, alpha = text.rpartition(":")
    try:
        value = float(alpha)
    except ValueError:
        value = -1.0
    if not sep or not spec or not 0.0 <= value <= 1.0:
        raise InputError(f"--mix {text}: expected DATA:ALPHA, another training set and the share ALPHA in [0, 1] "
                         "of each subset taken from it, e.g. photos:0.5")
    return spec, value


def conform(other: ImageSet, like: ImageSet) -> ImageSet:
    """``other`` at ``like``'s size and channels (Pillow bilinear; RGB to grey by Pillow's L)."""
    from PIL import Image

    height, width, channels = like.image_shape
    images = []
    for image in other.images:
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        pil = pil.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        array = np.asarray(pil, np.uint8)
        images.append(array[..., None] if array.ndim == 2 else array)
    return ImageSet(np.stack(images), [f"mix:{i}" for i in other.ids], f"{other.spec}@{height}x{width}x{channels}")


def mix_counts(size: int, alpha: float, unit: int) -> tuple[int, int]:
    """(images from the training set, images from the other set) of a subset of ``size``: the training
    set's share rounded to whole ``unit``s (one image per class for balanced subsets)."""
    own = unit * round((1 - alpha) * size / unit)
    return own, size - own
