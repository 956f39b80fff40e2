"""Python objects as audit inputs: image arrays and ``ImageSet``s beside paths, and keyword options
checked against the settings a function knows.

An array becomes an ``ImageSet`` keyed by its content (``ImageSet.fingerprint``, the digest of its
pixels), like any file: a cache built from it is reused only for the same pixels.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Iterable

import numpy as np

from memaudit.data import ImageSet, load_image_set
from memaudit.errors import DataError, InputError
from memaudit.formats.arrays import VALID_CHANNELS


def describe_value(value) -> str:
    """How an input is named in errors, audit.json and the manifest: a path as given, an array or
    ImageSet by its shape."""
    if isinstance(value, ImageSet):
        return value.spec
    if isinstance(value, np.ndarray):
        return f"array {'x'.join(str(v) for v in value.shape)} {value.dtype}"
    return str(value)


def describe_input(value) -> str | None:
    """How an input is named in audit.json and messages: a path as given, an object by its kind."""
    from memaudit.adapters.objects import describe_model

    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, (ImageSet, np.ndarray)):
        return describe_value(value)
    return describe_model(value)


def check_same_shape(samples: ImageSet, train: ImageSet, name: str) -> None:
    """``DataError`` unless ``samples`` (named ``name``) have the training images' size and channels."""
    if samples.image_shape != train.image_shape:
        raise DataError(shape_mismatch(name, samples.image_shape, train.spec, train.image_shape))


def shape_mismatch(name, shape, train_spec, train_shape) -> str:
    """The message of images ``name`` of ``shape`` that do not match the training set's."""
    fmt = lambda s: "x".join(str(v) for v in s)  # noqa: E731
    return (f"{name}: images are {fmt(shape)} (HxWxC) but the training set {train_spec} is {fmt(train_shape)}; "
            "samples and training images must have the same size and channels")


def array_image_set(images: np.ndarray, name: str, labels=None, role: str = "image") -> ImageSet:
    """An ``ImageSet`` of a uint8 (N, H, W, C) array (C = 1 or 3; (N, H, W) is read as C = 1)."""
    if not isinstance(images, np.ndarray):
        raise DataError(f"{name}: expected a path, an ImageSet or a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise DataError(f"{name}: the array has dtype {images.dtype}; expected uint8 pixels 0..255 "
                        "(e.g. np.clip(np.rint(x * 255), 0, 255).astype(np.uint8) for floats in [0, 1])")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in VALID_CHANNELS or len(images) == 0:
        raise DataError(f"{name}: the array has shape {images.shape}; expected (N, H, W, C) with N >= 1 and C = 1 or 3 "
                        "(NHWC; a torch batch is NCHW: .permute(0, 2, 3, 1))")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise DataError(f"{name}: labels of shape {labels.shape} and dtype {labels.dtype}; expected one integer "
                            f"per image ({len(images)})")
        labels = labels.astype(np.int64)
    spec = f"array {'x'.join(str(v) for v in images.shape)} uint8"
    return ImageSet(images=np.ascontiguousarray(images), ids=[f"{role}[{i}]" for i in range(len(images))], spec=spec,
                    labels=labels)


def as_image_set(value, name: str, *, options=None, role: str = "image") -> ImageSet:
    """The images ``value`` gives: a spec or path (loaded as the CLI loads it), an ``ImageSet``, or
    a uint8 NHWC array. ``options`` (``LoadOptions``) resizes arrays as files would be."""
    if isinstance(value, ImageSet):
        image_set = value
    elif isinstance(value, np.ndarray):
        image_set = array_image_set(value, name, role=role)
    elif isinstance(value, (str,)) or hasattr(value, "__fspath__"):
        return load_image_set(str(value), options=options)
    else:
        hint = " (a torch tensor: .permute(0, 2, 3, 1).cpu().numpy(), as uint8)" if hasattr(value, "numpy") else ""
        raise DataError(f"{name}: expected a path, an ImageSet or a uint8 (N, H, W, C) numpy array, "
                        f"got {type(value).__name__}{hint}")
    if options is not None and options.resize != "none" and options.size is not None \
            and image_set.image_shape[:2] != tuple(options.size):
        from memaudit.formats.decode import fit

        options.validate()
        image_set = dataclasses.replace(image_set, images=np.stack([fit(image, options) for image in image_set.images]),
                                        _fingerprint=None)
    return image_set


def check_options(given: dict, valid: Iterable[str], where: str) -> None:
    """``InputError`` naming the first keyword of ``given`` that ``where`` does not take, the
    closest valid one, and all valid ones."""
    valid = list(valid)
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{where}: unknown option {key!r}{hint}; valid options are {', '.join(sorted(valid))}")


def config_fields(config_class, exclude: Iterable[str] = ()) -> list[str]:
    """The fields of a config dataclass a caller may set as keyword options."""
    left_out = set(exclude)
    return [f.name for f in dataclasses.fields(config_class) if f.name not in left_out]


def check_option_types(config_class, options: dict, where: str) -> None:
    """``InputError`` for an option whose value is not of its field's kind (judged by the default)."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(config_class)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    check_option_values({k: v for k, v in defaults.items() if k in options}, options, where)


def check_option_values(defaults: dict, options: dict, where: str) -> None:
    """``InputError`` for an option whose value is not of the kind of its default (an int where a
    float is expected passes; None defaults are left to the setting's own checks)."""
    for key, value in options.items():
        default = defaults.get(key)
        if default is None:  # optional settings: their own checks judge them
            continue
        kinds = {bool: (bool,), int: (int, np.integer), float: (int, float, np.integer, np.floating), str: (str,),
                 list: (list, tuple), tuple: (list, tuple), dict: (dict,)}
        expected = kinds.get(type(default))
        wrong = expected is not None and (not isinstance(value, expected) or
                                          (type(default) is not bool and isinstance(value, bool)))
        if wrong:
            kind = "list" if type(default) in (list, tuple) else type(default).__name__
            raise InputError(f"{where}: option {key}={value!r}: expected {kind} (default {default!r})")
