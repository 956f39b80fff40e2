"""Decoding policy shared by every format: one image file or buffer to uint8 HWC, the same way
for training images and samples.

- Channels: grayscale (1-bit, 8-bit, 16-bit, float) stays one channel; palette, RGBA, LA, CMYK,
  YCbCr and the rest become RGB (transparency is dropped: composited on black).
- 16-bit images keep their 8 most significant bits.
- EXIF orientation is applied, as viewers show the image.
- Pillow's decompression-bomb limit stays on; a bomb is an error naming the file.
- ``--on-error skip`` goes on past unreadable files and records them; ``fail`` stops at the first.
- ``--resize center-crop|resize`` brings every image to one size; ``none`` demands one size.
"""

from __future__ import annotations

import io
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memaudit.errors import DataError
from memaudit.imageset import ImageSet

ON_ERROR = ("fail", "skip")
RESIZE_MODES = ("none", "center-crop", "resize")
GRAYSCALE_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class LoadOptions:
    on_error: str = "fail"
    resize: str = "none"
    size: tuple[int, int] | None = None  # (height, width) for center-crop / resize

    def validate(self) -> None:
        if self.on_error not in ON_ERROR:
            raise DataError(f"--on-error {self.on_error}: expected one of {', '.join(ON_ERROR)}")
        if self.resize not in RESIZE_MODES:
            raise DataError(f"--resize {self.resize}: expected one of {', '.join(RESIZE_MODES)}")
        if self.resize != "none" and self.size is None:
            raise DataError(f"--resize {self.resize}: needs a target size (--image-size N or HxW)")
        if self.resize != "none":  # one RGB image, and Pillow's copy of it while resizing
            self.check_memory(2, 3)

    def check_memory(self, count: int, channels: int) -> None:
        """Refuse --image-size when ``count`` resized images cannot be held in memory."""
        if self.resize == "none" or self.size is None:
            return
        from memaudit.memory import check_fits

        height, width = self.size
        check_fits(count * height * width * channels, f"--image-size {height}x{width}",
                   f"{count} image(s) of {height}x{width}x{channels}")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``N`` or ``HxW`` as (height, width)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise DataError(f"--image-size {text}: expected N or HxW with positive integers, e.g. 32 or 64x48")
    return (values[0], values[-1])


class DecodeError(DataError):
    """One unreadable image: skippable under ``--on-error skip``."""


def to_array(image, name: str) -> np.ndarray:
    """A PIL image as uint8 HWC under the channel policy above."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(image, dtype=np.int64 if image.mode == "I" else np.uint16).astype(np.int64)
        peak = 65535 if image.mode != "I" or wide.max(initial=0) > 255 else 255
        array = (np.clip(wide, 0, peak) * 255 // peak).astype(np.uint8)
    elif image.mode in GRAYSCALE_MODES:
        array = np.asarray(image.convert("L"), dtype=np.uint8)
    else:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def decode(source: bytes | Path, name: str) -> np.ndarray:
    """Decode one image (a file path or its bytes) to uint8 HWC; ``DecodeError`` names it."""
    from PIL import Image, UnidentifiedImageError

    try:
        stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
        with stream, Image.open(stream) as image:
            image.load()
            return to_array(image, name)
    except Image.DecompressionBombError as error:
        raise DecodeError(f"{name}: refused as a decompression bomb ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DecodeError(f"{name}: not a readable image ({error}); expected a valid PNG, JPEG or WebP file") from None


def fit(array: np.ndarray, options: LoadOptions) -> np.ndarray:
    """Apply ``--resize``: centre-crop to the target aspect then resize, or resize outright."""
    if options.resize == "none" or options.size is None or array.shape[:2] == options.size:
        return array
    from PIL import Image

    height, width = options.size
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if options.resize == "center-crop":
        scale = max(height / image.height, width / image.width)
        crop_h, crop_w = round(height / scale), round(width / scale)
        top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    resized = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)
    return resized[..., None] if resized.ndim == 2 else resized


class MemorySink:
    """Decoded images kept in memory (a load that is not being stored)."""

    def __init__(self):
        self.arrays: list[np.ndarray] = []

    def append(self, array: np.ndarray) -> None:
        self.arrays.append(array)

    def __len__(self) -> int:
        return len(self.arrays)

    def result(self) -> np.ndarray:
        return np.stack(self.arrays)


class FileSink:
    """Decoded images appended to a raw uint8 file as they come, then memory-mapped: decoding a set
    into the on-disk store holds one image at a time in memory, whatever the set's size."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "wb")
        self.count = 0
        self.shape: tuple | None = None

    def append(self, array: np.ndarray) -> None:
        self.shape = array.shape
        self.handle.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def result(self) -> np.ndarray:
        self.handle.close()
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, *self.shape))


# The sink the next Collector writes to: the on-disk store sets a FileSink around a load
# (formats need not know whether they are being stored).
SINK: ContextVar = ContextVar("memaudit_decode_sink", default=None)


@dataclass
class Collector:
    """Gathers decoded images of one set: one shape (or ``--resize``), skipped files recorded."""

    source: str
    options: LoadOptions
    images: MemorySink | FileSink = field(default_factory=lambda: SINK.get() or MemorySink())
    ids: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    _first: tuple | None = None

    def add(self, decode_one, item_id: str, label=None, caption=None) -> None:
        """Decode one image with ``decode_one()`` and keep it, or record why not (``skip``)."""
        try:
            array = fit(decode_one(), self.options)
        except DecodeError as error:
            if self.options.on_error == "fail":
                raise DataError(f"{error} (--on-error skip goes on past unreadable files)") from None
            self.skipped.append({"id": item_id, "reason": str(error)})
            return
        if self._first is None:
            self._first = (array.shape, item_id)
        elif array.shape != self._first[0]:
            first_shape, first_id = self._first
            raise DataError(f"{self.source}: images differ in shape: {first_id} is {hwc(first_shape)} but {item_id} "
                            f"is {hwc(array.shape)}; all images of one set must share one size and channel count "
                            "(or pass --resize center-crop|resize with --image-size)")
        self.images.append(array)
        self.ids.append(item_id)
        self.labels.append(label)
        self.captions.append(caption)

    def image_set(self, spec: str):

        if not self.images:
            detail = f"; all {len(self.skipped)} were unreadable" if self.skipped else ""
            raise DataError(f"{self.source}: holds no readable images{detail}")
        labels = None
        if any(label is not None for label in self.labels):
            if any(label is None for label in self.labels):
                raise DataError(f"{self.source}: some images have labels and some do not; label all or none")
            try:
                labels = np.asarray(self.labels, dtype=np.int64)
            except (OverflowError, TypeError, ValueError):
                raise DataError(f"{self.source}: labels must be integers that fit in 64 bits") from None
        captions = self.captions if any(c is not None for c in self.captions) else None
        if captions is not None:
            captions = ["" if c is None else str(c) for c in captions]
        return ImageSet(images=self.images.result(), ids=self.ids, spec=spec, labels=labels, captions=captions,
                        skipped=self.skipped)


def number_labels(labels: list, integer_text: bool = False) -> list:
    """Integer labels as they are; class names numbered in sorted order. With ``integer_text``
    (CSV metadata, where every value is text) labels that all read as integers are taken as such."""
    if all(label is None or isinstance(label, int) for label in labels):
        return labels
    if integer_text:
        try:
            return [None if label is None else int(label) for label in labels]
        except (TypeError, ValueError):
            pass
    names = {text: index for index, text in enumerate(sorted({str(l) for l in labels if l is not None}))}
    return [None if label is None else names[str(label)] for label in labels]


def hwc(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)
