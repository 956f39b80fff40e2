"""Writers of training sets in the formats people store them, for tests and benchmarks.

Each writer stores real images (scikit-learn's digits, crops of its sample photos) as the tool
that makes the format does: EDM's dataset_tool.py, CIFAR's python batches, webdataset shards,
parquet files with Hugging Face Image structs, and ``datasets``' save_to_disk layout.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def digits(count: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The real digits memaudit's ``digits:N`` set holds: uint8 (N, 8, 8, 1) and labels."""
    from memaudit.data import load_image_set

    image_set = load_image_set(f"digits:{count}")
    return image_set.images, image_set.labels


def photo_crops(count: int, side: int = 32, seed: int = 0) -> np.ndarray:
    """``count`` RGB crops (side x side) at random places of scikit-learn's china.jpg and flower.jpg."""
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    crops = np.empty((count, side, side, 3), dtype=np.uint8)
    for i in range(count):
        photo = photos[i % 2]
        top = rng.integers(0, photo.shape[0] - side + 1)
        left = rng.integers(0, photo.shape[1] - side + 1)
        crops[i] = photo[top:top + side, left:left + side]
    return crops


def edm_name(index: int) -> str:
    """Member name of image ``index`` as EDM's dataset_tool.py writes it."""
    return f"{index // 1000:05d}/img{index:08d}.png"


def write_edm_zip(path: Path, images: np.ndarray, labels=None, extra: dict | None = None) -> Path:
    """A zip as dataset_tool.py writes it: PNG members and dataset.json of [member, label] pairs."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        names = [edm_name(i) for i in range(len(images))]
        for name, image in zip(names, images):
            archive.writestr(name, png_bytes(image))
        rows = None if labels is None else [[name, int(label)] for name, label in zip(names, labels)]
        archive.writestr("dataset.json", json.dumps({"labels": rows}))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it (CIFAR's batches): byte strings as BINSTRING opcodes, where
    Python 3's protocol 2 would call _codecs.encode."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_batch(images: np.ndarray, labels, label_key: bytes = b"labels") -> dict:
    """A CIFAR batch dict: b'data' N x 3072 uint8 (R, G, B planes, row-major), labels as a list."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
    return {b"batch_label": b"training batch", label_key: [int(label) for label in labels], b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}


def write_cifar10(folder: Path, images: np.ndarray, labels, batches: int = 5) -> Path:
    """A cifar-10-batches-py folder: data_batch_1..N of the given images, a test_batch of others."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, part in enumerate(np.array_split(np.arange(len(images)), batches), 1):
        (folder / f"data_batch_{number}").write_bytes(py2_pickle(cifar_batch(images[part], np.asarray(labels)[part])))
    (folder / "test_batch").write_bytes(py2_pickle(cifar_batch(255 - images[:3], [0, 1, 2])))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane", b"automobile"], b"num_vis": 3072}))
    return folder


def write_cifar100(folder: Path, images: np.ndarray, labels) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    batch = cifar_batch(images, labels, b"fine_labels")
    batch[b"coarse_labels"] = [int(label) // 5 for label in labels]
    for name, content in (("train", batch), ("test", cifar_batch(255 - images[:2], [0, 1], b"fine_labels")),
                          ("meta", {b"fine_label_names": [b"apple"], b"coarse_label_names": [b"fruit"]})):
        (folder / name).write_bytes(py2_pickle(content))
    return folder


def _tar_add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, images: np.ndarray, labels=None, captions=None, per_shard: int = 10,
                 extension: str = "png") -> list[Path]:
    """webdataset shards ``data-000.tar``...: per sample ``KEY.png``, ``KEY.cls``, ``KEY.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard, start in enumerate(range(0, len(images), per_shard)):
        path = folder / f"data-{shard:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in range(start, min(start + per_shard, len(images))):
                key = f"sample{i:06d}"
                _tar_add(archive, f"{key}.{extension}", png_bytes(images[i]))
                if labels is not None:
                    _tar_add(archive, f"{key}.cls", str(int(labels[i])).encode())
                if captions is not None:
                    _tar_add(archive, f"{key}.txt", captions[i].encode())
        shards.append(path)
    return shards


def image_table(images: np.ndarray, labels=None, captions=None, raw: bool = False, metadata: dict | None = None):
    """A pyarrow table with an ``image`` column of Hugging Face Image structs (or raw bytes)."""
    import pyarrow as pa

    encoded = [png_bytes(image) for image in images]
    if raw:
        columns = {"image": pa.array(encoded, type=pa.binary())}
    else:
        kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        columns = {"image": pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)], type=kind)}
    if labels is not None:
        columns["label"] = pa.array([int(label) for label in labels], type=pa.int64())
    if captions is not None:
        columns["text"] = pa.array(list(captions), type=pa.string())
    table = pa.table(columns)
    return table.replace_schema_metadata(metadata) if metadata else table


def write_parquet(path: Path, images: np.ndarray, labels=None, captions=None, raw: bool = False,
                  row_group_size: int = 16) -> Path:
    import pyarrow.parquet as pq

    pq.write_table(image_table(images, labels, captions, raw), path, row_group_size=row_group_size)
    return path


def hf_features(labels, captions) -> dict:
    features = {"image": {"_type": "Image"}}
    if labels is not None:
        features["label"] = {"names": [str(c) for c in range(int(max(labels)) + 1)], "_type": "ClassLabel"}
    if captions is not None:
        features["text"] = {"dtype": "string", "_type": "Value"}
    return features


def write_hf_dataset(folder: Path, images: np.ndarray, labels=None, captions=None, split: str = "train") -> Path:
    """What ``Dataset.save_to_disk`` writes: data-00000-of-00001.arrow (an Arrow IPC stream whose
    schema carries the features under b"huggingface"), dataset_info.json and state.json."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    features = hf_features(labels, captions)
    table = image_table(images, labels, captions, metadata={b"huggingface": json.dumps({"info": {"features": features}})})
    name = "data-00000-of-00001.arrow"
    with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=16):
            writer.write_batch(batch)
    (folder / "dataset_info.json").write_text(json.dumps(
        {"builder_name": None, "citation": "", "config_name": None, "dataset_size": None, "description": "",
         "download_checksums": None, "download_size": None, "features": features, "homepage": "", "license": "",
         "size_in_bytes": None, "splits": None, "supervised_keys": None, "version": None}, indent=2))
    (folder / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": name}], "_fingerprint": "0123456789abcdef", "_format_columns": None,
         "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}, indent=2))
    return folder


def write_hf_dataset_dict(folder: Path, splits: dict) -> Path:
    """What ``DatasetDict.save_to_disk`` writes: dataset_dict.json and one dataset folder per split."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for split, (images, labels) in splits.items():
        write_hf_dataset(folder / split, images, labels, split=split)
    return folder
