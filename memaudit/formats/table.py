"""Images in Arrow tables (parquet files, Hugging Face datasets): which columns hold what.

- image: the column ``image`` or ``img``, else the first one shaped like an image. Either Hugging
  Face's Image feature, a struct ``{"bytes": ..., "path": ...}`` (only the bytes are read: a path
  is never opened), or raw encoded bytes (PNG, JPEG, WebP).
- caption: a ``text`` or ``caption`` string column; label: a ``label`` or ``labels`` column of
  integers (Hugging Face's ClassLabel) or of class names, numbered in sorted order.
Record batches are validated in full before any value is read.
"""

from __future__ import annotations

from memaudit.errors import DataError

from .decode import Collector, DecodeError, decode

IMAGE_COLUMNS = ("image", "img")
CAPTION_COLUMNS = ("text", "caption")
LABEL_COLUMNS = ("label", "labels")


def _is_binary(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _is_image(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        return index >= 0 and _is_binary(kind.field(index).type)
    return _is_binary(kind)


def _is_text(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def pick_columns(schema, source: str) -> tuple[str, str | None, str | None]:
    """(image, caption, label) column names of ``schema``."""
    import pyarrow as pa

    try:
        names = list(schema.names)
    except UnicodeDecodeError:
        raise DataError(f"{source}: the table's column names are not valid UTF-8 (a damaged file)") from None
    image = next((n for n in IMAGE_COLUMNS if n in names and _is_image(schema.field(n).type)), None)
    image = image or next((n for n in names if _is_image(schema.field(n).type)), None)
    if image is None:
        raise DataError(f"{source}: no image column; expected an 'image' column of Hugging Face Image structs "
                        f"{{bytes, path}} or of encoded bytes, found {', '.join(names) or 'no columns'}")
    caption = next((n for n in CAPTION_COLUMNS if n in names and _is_text(schema.field(n).type)), None)
    label = next((n for n in LABEL_COLUMNS if n in names and (pa.types.is_integer(schema.field(n).type)
                                                               or _is_text(schema.field(n).type))), None)
    return image, caption, label


def _image_bytes(value, where: str) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        raise DecodeError(f"{where}: the image has no bytes (images stored only as a path are not read)")
    return value


def collect(batches, source: str, name: str, collector: Collector) -> None:
    """Feed every row of ``batches`` (pyarrow RecordBatches) to ``collector``, ids ``name[row]``.
    Labels are kept as stored: ``decode.number_labels`` turns class names into integers once all are in."""
    import pyarrow as pa

    row = 0
    columns = None
    for batch in batches:
        try:
            batch.validate(full=True)
        except pa.ArrowException as error:
            raise DataError(f"{source}: a record batch is corrupt ({error})") from None
        if columns is None:
            columns = pick_columns(batch.schema, source)
        elif pick_columns(batch.schema, source) != columns:
            raise DataError(f"{source}: record batches differ in their columns")
        image, caption, label = columns
        images = batch.column(image).to_pylist()
        captions = batch.column(caption).to_pylist() if caption else [None] * len(images)
        labels = batch.column(label).to_pylist() if label else [None] * len(images)
        for value, text, tag in zip(images, captions, labels):
            where = f"{source}[{row}]"
            collector.add(lambda value=value, where=where: decode(_image_bytes(value, where), where),
                          f"{name}[{row}]", tag, text)
            row += 1
