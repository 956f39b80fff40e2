"""Training-set formats: each turns a path into uint8 images with ids (and labels or captions).

Formats register in ``FORMATS`` by name. ``--train`` takes ``NAME:PATH`` to name the format, or
a path whose format is sniffed (the first registered format whose ``sniff`` accepts it). Every
format decodes through ``memaudit.formats.decode``, so channel conversion, EXIF orientation,
bad files (``--on-error``) and resizing (``--resize``) behave the same whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memaudit.errors import DataError

from . import arrays, folder
from .decode import LoadOptions


@dataclass(frozen=True)
class Format:
    name: str
    sniff: Callable[[Path], bool]
    load: Callable[[Path, str, LoadOptions], "object"]  # -> memaudit.data.ImageSet
    description: str
    decodes: bool = True  # decodes image files: the result is kept in the on-disk store


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("folder", folder.sniff, folder.load,
           "a folder of .png/.jpg/.jpeg/.webp images, recursive, with optional metadata.jsonl/.csv"),
    Format("npz", arrays.sniff_npz, arrays.load_npz, "an .npz with uint8 NHWC images under 'images' or 'arr_0'",
           decodes=False),
    Format("npy", arrays.sniff_npy, arrays.load_npy, "an .npy of uint8 NHWC images (memory-mapped)", decodes=False),
)}


def describe_formats() -> str:
    return "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())


def resolve(spec: str) -> tuple[Format, Path] | None:
    """The format and path a ``--train`` value names: ``NAME:PATH`` or a sniffed path; None if
    the path does not exist."""
    name, sep, rest = spec.partition(":")
    if sep and name in FORMATS and not Path(spec).exists():
        path = Path(rest).expanduser()
        if not path.exists():
            raise DataError(f"{spec}: no such file or folder {rest!r}")
        return FORMATS[name], path
    path = Path(spec).expanduser()
    if not path.exists():
        return None
    for candidate in FORMATS.values():
        if candidate.sniff(path):
            return candidate, path
    raise DataError(f"{spec}: unknown image-set format; name one as FORMAT:PATH with FORMAT from "
                    f"{', '.join(FORMATS)} ({describe_formats()})")


__all__ = ["FORMATS", "Format", "LoadOptions", "describe_formats", "resolve"]
