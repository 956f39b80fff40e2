"""Image folders, recursive, in path order, with Hugging Face imagefolder metadata.

``metadata.jsonl`` or ``metadata.csv`` anywhere in the tree gives per-file ``file_name`` (relative
to the metadata file), a caption under ``text`` or ``caption`` and a ``label`` (integers, or class
names numbered in sorted order). An image without a metadata caption takes the text of a ``NAME.txt``
file beside it as its caption (the DreamBooth / kohya captioned-folder layout). Without metadata, images sitting one folder deep in two or more
class folders take those folders' names as labels, as imagefolder does.

One policy for every way of naming a file: what the set reads must lie inside the folder once
links are resolved. A metadata ``file_name`` that leads outside, and a symbolic link that points
outside, are both refused, naming the file (a downloaded data set cannot make an audit read, and
show in its report, a file from elsewhere on the machine). Links within the folder are followed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from memaudit.errors import DataError

from .decode import Collector, LoadOptions, decode, number_labels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_KEYS = ("text", "caption")


def sniff(path: Path) -> bool:
    return path.is_dir()


def _metadata_rows(path: Path) -> list[dict]:
    try:
        return _parse_metadata(path)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not readable UTF-8 {path.suffix[1:]} metadata ({error})") from None


def _parse_metadata(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {number} is not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
        return rows
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _read_metadata(root: Path) -> dict[Path, dict]:
    """file -> {"label", "caption"} from every metadata file under ``root``."""
    entries: dict[Path, dict] = {}
    for meta in sorted(p for name in METADATA_FILES for p in root.rglob(name)):
        for row in _metadata_rows(meta):
            name = row.get("file_name")
            if not name:
                raise DataError(f"{meta}: a row has no file_name; imagefolder metadata names each image in file_name")
            file = (meta.parent / str(name)).resolve()
            if root.resolve() not in file.parents:
                raise DataError(f"{meta}: file_name {name!r} points outside {root}")
            if not file.is_file():
                raise DataError(f"{meta}: file_name {name!r} names a missing file")
            caption = next((row[k] for k in CAPTION_KEYS if row.get(k) not in (None, "")), None)
            entries[file] = {"label": row.get("label"), "caption": caption}
    return entries


def _sidecar_caption(root: Path, image: Path) -> str | None:
    """The caption in ``NAME.txt`` beside ``image`` (``NAME.png``), or None when there is none."""
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    if root.resolve() not in sidecar.resolve().parents:
        raise DataError(f"{sidecar}: a link to {sidecar.resolve()}, outside {root}; a caption file must lie inside the folder")
    try:
        return sidecar.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise DataError(f"{sidecar}: the caption file is not UTF-8 text") from None


def _check_inside(root: Path, files: list[Path]) -> None:
    inside = root.resolve()
    for file in files:
        target = file.resolve()
        if inside not in target.parents:
            raise DataError(f"{file}: a link to {target}, outside {root}; a training folder's images must lie inside it "
                            "(links within it are followed): copy the file in, or give a folder holding both")


def load(path: Path, spec: str, options: LoadOptions):
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: the folder holds no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    _check_inside(path, files)
    metadata = _read_metadata(path)
    if metadata:
        labels = [metadata.get(f.resolve(), {}).get("label") for f in files]
        captions = [metadata.get(f.resolve(), {}).get("caption") for f in files]
    else:
        folders = [f.relative_to(path).parts[:-1] for f in files]
        by_folder = all(len(parts) == 1 for parts in folders) and len(set(folders)) >= 2
        labels = [parts[0] for parts in folders] if by_folder else [None] * len(files)
        captions = [None] * len(files)
    captions = [caption if caption is not None else _sidecar_caption(path, file) for file, caption in zip(files, captions)]
    collector = Collector(str(path), options)
    for file, label, caption in zip(files, number_labels(labels, integer_text=True), captions):
        collector.add(lambda file=file: decode(file, str(file)), file.relative_to(path).as_posix(), label, caption)
    return collector.image_set(spec)
