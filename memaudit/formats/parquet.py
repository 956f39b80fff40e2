"""Parquet files with an image column (see ``table`` for the columns), read with pyarrow.

A path is one ``.parquet`` file, or a folder whose ``.parquet`` files (directly inside it) are
read in name order. Files are read one row group at a time.
"""

from __future__ import annotations

from pathlib import Path

from memaudit.errors import DataError

from .decode import Collector, LoadOptions, number_labels
from .table import collect

SUFFIX = ".parquet"


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob(f"*{SUFFIX}") if p.is_file())


def sniff(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == SUFFIX
    return path.is_dir() and bool(_files(path))


def _batches(file: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
        for group in range(reader.num_row_groups):
            yield from reader.read_row_group(group).to_batches()
    except (pa.ArrowException, OSError, ValueError, IndexError, TypeError) as error:
        raise DataError(f"{file}: not a readable parquet file ({error})") from None


def load(path: Path, spec: str, options: LoadOptions):
    files = _files(path)
    if not files:
        raise DataError(f"{path}: holds no {SUFFIX} files")
    collector = Collector(str(path), options)
    for file in files:
        collect(_batches(file), str(file), file.name, collector)
    collector.labels = number_labels(collector.labels)
    return collector.image_set(spec)
