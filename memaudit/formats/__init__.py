"""Training-set formats: each turns a path into uint8 images with ids (and labels or captions).

Formats register in ``FORMATS`` by name. ``--train`` takes ``NAME:PATH`` to name the format, or
a path whose format is sniffed (the first registered format whose ``sniff`` accepts it: specific
formats come before the generic folder). A format with a ``pattern`` test also takes a spec that
is no single path, such as webdataset's ``shards-{000..009}.tar``. Every
format decodes through ``memaudit.formats.decode``, so channel conversion, EXIF orientation,
bad files (``--on-error``) and resizing (``--resize``) behave the same whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memaudit.errors import DataError

from . import arrays, cifar, edm_zip, folder, hf_disk, parquet, webdataset
from .decode import LoadOptions


@dataclass(frozen=True)
class Format:
    name: str
    sniff: Callable[[Path], bool]
    load: Callable[[Path, str, LoadOptions], "object"]  # -> memaudit.data.ImageSet
    description: str
    pattern: Callable[[str], bool] | None = None  # accepts a spec naming several files (glob, braces)
    decodes: bool = True  # decodes image files: the result is kept in the on-disk store


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("cifar", cifar.sniff, cifar.load,
           "a CIFAR-10/100 python batch folder (data_batch_1..5 or train; the training batches are read)"),
    Format("hf", hf_disk.sniff, hf_disk.load,
           "a Hugging Face dataset saved with save_to_disk (state.json, dataset_info.json, .arrow files)"),
    Format("parquet", parquet.sniff, parquet.load,
           "a .parquet file (or a folder of them) with an image column of {bytes, path} structs or bytes"),
    Format("edm-zip", edm_zip.sniff, edm_zip.load,
           "an EDM dataset zip (images plus an optional dataset.json of labels)"),
    Format("webdataset", webdataset.sniff, webdataset.load,
           "webdataset .tar shards: one file, a glob or brace ranges (data-{000..009}.tar)", webdataset.sniff_pattern),
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
    the path does not exist (and is no pattern a format takes)."""
    name, sep, rest = spec.partition(":")
    if sep and name in FORMATS and not Path(spec).exists():
        chosen = FORMATS[name]
        path = Path(rest).expanduser()
        if not path.exists() and not (chosen.pattern and chosen.pattern(rest)):
            raise DataError(f"{spec}: no such file or folder {rest!r}")
        return chosen, path
    path = Path(spec).expanduser()
    if sep and name not in FORMATS and not path.exists() and Path(rest).expanduser().exists():
        raise DataError(f"{spec}: unknown format {name!r} before the path; name one of {', '.join(FORMATS)} as "
                        f"FORMAT:PATH, or give the path alone to have its format recognised")
    if not path.exists():
        return next(((f, path) for f in FORMATS.values() if f.pattern and f.pattern(spec)), None)
    for candidate in FORMATS.values():
        if candidate.sniff(path):
            return candidate, path
    raise DataError(f"{spec}: unknown image-set format; name one as FORMAT:PATH with FORMAT from "
                    f"{', '.join(FORMATS)} ({describe_formats()})")


__all__ = ["FORMATS", "Format", "LoadOptions", "describe_formats", "resolve"]
