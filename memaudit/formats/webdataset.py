"""webdataset ``.tar`` shards: one shard, a glob or brace ranges (see ``shards``).

Members are grouped into samples by key, webdataset's convention: the member name up to the
first dot of its base name (``dir/000123.jpg`` and ``dir/000123.txt`` are sample ``dir/000123``).
A sample's image is its ``.png``, ``.jpg``, ``.jpeg`` or ``.webp`` member (or, failing those, one
whose extension ends so, like ``.seg.png``), its caption the ``.txt`` member and its label the
``.cls`` member (an integer). Samples without an image are
ignored. Shards are streamed with tarfile, member by member, never extracted; a member with an
absolute path or a ``..`` component refuses the shard.
"""

from __future__ import annotations

import lzma
import struct
import tarfile
import zlib
from pathlib import Path

from memaudit.errors import DataError

from .decode import Collector, DecodeError, LoadOptions, decode
from .members import read_bounded, safe_name
from .shards import expand, is_pattern

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
TEXT_EXTENSIONS = ("txt", "cls")
SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError, IndexError, struct.error)


def sniff(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SHARD_SUFFIXES)


def sniff_pattern(spec: str) -> bool:
    """A glob or brace pattern of shards (which does not exist as one path)."""
    return is_pattern(spec) and spec.lower().endswith(SHARD_SUFFIXES)


def split_key(name: str) -> tuple[str, str]:
    """``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``)."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _samples(shard: Path):
    """(key, {extension: bytes}) per sample of one shard, streamed in member order."""
    key, parts, seen = None, {}, set()
    try:
        with tarfile.open(shard, mode="r|*") as stream:
            for member in stream:
                name = safe_name(str(shard), member.name)
                if not member.isfile():
                    continue
                member_key, extension = split_key(name)
                if extension not in TEXT_EXTENSIONS and extension.rpartition(".")[2] not in IMAGE_EXTENSIONS:
                    continue
                if member_key != key:
                    if key is not None:
                        yield key, parts
                    if member_key in seen:
                        raise DataError(f"{shard}: sample {member_key!r} is split across the shard; "
                                        "webdataset shards keep a sample's members together")
                    key, parts = member_key, {}
                    seen.add(member_key)
                if extension in parts:
                    raise DataError(f"{shard}: member {name!r} appears twice in sample {member_key!r}")
                handle = stream.extractfile(member)
                parts[extension] = b"" if handle is None else read_bounded(handle, f"{shard}:{name}", member.size)
    except DecodeError as error:
        raise DataError(str(error)) from None
    except DataError:
        raise
    except TAR_ERRORS as error:
        raise DataError(f"{shard}: not a readable tar shard ({error})") from None
    if key is not None:
        yield key, parts


def _text(value: bytes | None, where: str) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DataError(f"{where}: not UTF-8 text") from None


def _label(value: bytes | None, where: str) -> int | None:
    text = _text(value, where)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{where}: label {text[:40]!r} is not an integer") from None


def load(path: Path, spec: str, options: LoadOptions):
    shards = expand(str(path))
    collector = Collector(str(path), options)
    for shard in shards:
        for key, parts in _samples(shard):
            extension = next((e for e in IMAGE_EXTENSIONS if e in parts), None) or next(
                (e for e in parts if e not in TEXT_EXTENSIONS), None)
            if extension is None:
                continue
            where = f"{shard}:{key}"
            label, caption = _label(parts.get("cls"), f"{where}.cls"), _text(parts.get("txt"), f"{where}.txt")
            image = parts[extension]
            collector.add(lambda image=image, name=f"{where}.{extension}": decode(image, name),
                          f"{shard.name}/{key}", label, caption)
    if not collector.images and not collector.skipped:
        raise DataError(f"{path}: the shards hold no images; expected members ending in "
                        f"{', '.join('.' + e for e in IMAGE_EXTENSIONS)}")
    return collector.image_set(spec)
