"""Hugging Face ``datasets`` saved with ``save_to_disk``, read with pyarrow alone.

A saved Dataset is a folder with ``dataset_info.json``, ``state.json`` and its ``.arrow`` files
(``data-00000-of-00001.arrow``...: Arrow IPC streams), listed in order under ``_data_files`` in
state.json. A saved DatasetDict holds ``dataset_dict.json`` and one such folder per split; its
``train`` split is read (the only split, if there is one). Columns as in ``table``. The
``datasets`` package is not needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from memaudit.errors import DataError

from .decode import Collector, LoadOptions, number_labels
from .table import collect

STATE, INFO, DICT = "state.json", "dataset_info.json", "dataset_dict.json"


def sniff(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / DICT).is_file():
        return True
    return (path / STATE).is_file() and (path / INFO).is_file()


def _json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{file}: not readable JSON ({error})") from None


def _split(path: Path) -> Path:
    """The folder of the split to read: the dataset itself, or a DatasetDict's train split."""
    if not (path / DICT).is_file():
        return path
    document = _json(path / DICT)
    splits = document.get("splits") if isinstance(document, dict) else None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{path / DICT}: expected {{\"splits\": [names]}}")
    chosen = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if chosen is None:
        raise DataError(f"{path}: a DatasetDict without a 'train' split ({', '.join(splits)}); name a split folder "
                        "as hf:PATH/SPLIT")
    if "/" in chosen or "\\" in chosen or chosen in ("", ".", ".."):
        raise DataError(f"{path / DICT}: split name {chosen!r} is not a folder name")
    return path / chosen


def _data_files(folder: Path) -> list[Path]:
    if not (folder / STATE).is_file():
        files = sorted(folder.glob("*.arrow"))
    else:
        state = _json(folder / STATE)
        entries = state.get("_data_files") if isinstance(state, dict) else None
        if not isinstance(entries, list):
            raise DataError(f"{folder / STATE}: expected a '_data_files' list of {{\"filename\": ...}}")
        files = []
        for entry in entries:
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
                raise DataError(f"{folder / STATE}: data file {str(name)[:80]!r} is not a file name inside the folder")
            if not (folder / name).is_file():
                raise DataError(f"{folder / STATE}: names data file {name!r}, which is missing")
            files.append(folder / name)
    if not files:
        raise DataError(f"{folder}: holds no .arrow data files; expected a dataset saved with save_to_disk")
    return files


def _batches(file: Path):
    """Record batches of one .arrow file: an IPC stream (as datasets writes it), or an IPC file."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(file)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
                return
            yield from reader
    except (pa.ArrowException, OSError, ValueError, IndexError, TypeError) as error:
        raise DataError(f"{file}: not a readable Arrow file ({error})") from None


def load(path: Path, spec: str, options: LoadOptions):
    folder = _split(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: the split folder is missing")
    collector = Collector(str(path), options)
    for file in _data_files(folder):
        collect(_batches(file), str(file), f"{folder.name}/{file.name}" if folder != path else file.name, collector)
    collector.labels = number_labels(collector.labels)
    return collector.image_set(spec)
