"""EDM / DiffMemorize dataset zips, as EDM's ``dataset_tool.py`` writes them (the paper's format).

Image members (``00000/img00000000.png``...) are read in sorted name order, straight from the
zip, never extracted. An optional ``dataset.json`` gives ``{"labels": [[member, label], ...]}``
(or ``"labels": null``). Other members are ignored. A member with an absolute path or a ``..``
component refuses the archive; a label naming a missing member is an error.
"""

from __future__ import annotations

import json
import lzma
import struct
import zipfile
import zlib
from pathlib import Path

from memaudit.errors import DataError

from .decode import Collector, DecodeError, LoadOptions, decode
from .folder import IMAGE_SUFFIXES
from .members import read_bounded, safe_name

METADATA = "dataset.json"
# What zipfile raises on damaged archives and members (IndexError and struct.error on damaged headers).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, NotImplementedError,
              RuntimeError, EOFError, OSError, ValueError, IndexError, struct.error)


def sniff(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".zip"


def _labels(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], path: Path) -> dict[str, int] | None:
    """member -> label from dataset.json; None without labels."""
    if METADATA not in members:
        return None
    where = f"{path}: {METADATA}"
    try:
        with archive.open(members[METADATA]) as stream:
            document = json.loads(read_bounded(stream, where, members[METADATA].file_size))
    except (DecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{where} is not readable JSON ({error})") from None
    except ZIP_ERRORS as error:
        raise DataError(f"{where} cannot be read from the zip ({error})") from None
    rows = document.get("labels") if isinstance(document, dict) else None
    if rows is None:
        return None
    if not isinstance(rows, list):
        raise DataError(f"{where}: 'labels' must be a list of [member, label] pairs or null")
    labels = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
                and isinstance(row[1], int) and not isinstance(row[1], bool)):
            raise DataError(f"{where}: label entry {str(row)[:80]!r} is not a [member, integer label] pair")
        name = row[0].replace("\\", "/")
        if name not in members:
            raise DataError(f"{where}: labels member {row[0]!r}, which the zip does not hold")
        labels[name] = row[1]
    return labels


def load(path: Path, spec: str, options: LoadOptions):
    try:
        archive = zipfile.ZipFile(path)
    except ZIP_ERRORS as error:
        raise DataError(f"{path}: not a readable zip file ({error}); expected a dataset zip made by EDM's dataset_tool.py") from None
    with archive:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            name = safe_name(str(path), info.filename)
            if name in members:
                raise DataError(f"{path}: member {info.filename!r} appears twice; a dataset zip names each image once")
            members[name] = info
        images = sorted(n for n in members if not n.endswith("/") and Path(n).suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{path}: the zip holds no images; expected members ending in {', '.join(IMAGE_SUFFIXES)}")
        labels = _labels(archive, members, path)

        def read(name: str):
            where = f"{path}:{name}"
            try:
                with archive.open(members[name]) as stream:
                    data = read_bounded(stream, where, members[name].file_size)
            except DecodeError:
                raise
            except ZIP_ERRORS as error:
                raise DecodeError(f"{where}: member cannot be read from the zip ({error})") from None
            return decode(data, where)

        collector = Collector(str(path), options)
        for name in images:
            label = None if labels is None else labels.get(name)
            collector.add(lambda name=name: read(name), name, label)
    return collector.image_set(spec)
