"""CIFAR-10/100 python batch directories (``cifar-10-batches-py``, ``cifar-100-python``).

A batch file is a pickle of a dict with ``b'data'`` (N x 3072 uint8: the red, green and blue
32x32 planes of each image, row-major) and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'``
(CIFAR-100). The training split is read: ``data_batch_1``..``data_batch_5`` (CIFAR-10) or
``train`` (CIFAR-100), the images a model was trained on.

Safety: batches are pickles, and ``pickle.load`` runs whatever a pickle names. They are read with
``RestrictedUnpickler``, whose ``find_class`` refuses every global except exactly these three
numpy ones, which a pickled numpy array needs: ``numpy.core.multiarray._reconstruct`` (spelled
``numpy._core.multiarray._reconstruct`` by numpy 2), ``numpy.ndarray`` and ``numpy.dtype``.
Nothing else is ever imported or called: a pickle naming ``os.system``, ``builtins.eval`` or any
other global is refused before it runs.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np

from memaudit.errors import DataError

from .decode import Collector, LoadOptions

SIDE = 32
MAX_BATCH_BYTES = 1 << 30  # 1 GiB; a CIFAR batch is about 30 MiB
LABEL_KEYS = (b"labels", b"fine_labels")


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy globals of an array, and refuses the rest."""

    ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str):
        allowed = self.ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays may be unpickled)")
        return allowed

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def restricted_loads(data: bytes):
    """Unpickle ``data`` (Python 2 pickles too: strings stay bytes) under ``RestrictedUnpickler``."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _batch_files(path: Path) -> list[Path]:
    numbered = [p for p in path.glob("data_batch_*") if re.fullmatch(r"data_batch_\d+", p.name) and p.is_file()]
    if numbered:
        return sorted(numbered, key=lambda p: int(p.name.rsplit("_", 1)[1]))
    if (path / "train").is_file():
        return [path / "train"]
    return []


def sniff(path: Path) -> bool:
    return path.is_dir() and ((path / "data_batch_1").is_file()
                              or ((path / "train").is_file() and (path / "meta").is_file()))


def _read_batch(file: Path) -> tuple[np.ndarray, list[int]]:
    """The images (N, 32, 32, 3) and labels of one batch file; ``DataError`` naming it otherwise."""
    if file.stat().st_size > MAX_BATCH_BYTES:
        raise DataError(f"{file}: larger than {MAX_BATCH_BYTES >> 30} GiB; not a CIFAR batch")
    try:
        batch = restricted_loads(file.read_bytes())
    except pickle.UnpicklingError as error:
        raise DataError(f"{file}: refused ({error}); expected a CIFAR python batch") from None
    except Exception as error:  # noqa: BLE001 -- any failure of an untrusted pickle is bad input
        raise DataError(f"{file}: not a readable CIFAR batch ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise DataError(f"{file}: not a CIFAR batch; expected a pickled dict with b'data' and b'labels'")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{file}: b'data' is {getattr(data, 'dtype', '')} {shape}; expected uint8 N x 3072")
    labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DataError(f"{file}: expected {len(data)} labels under b'labels' or b'fine_labels'")
    try:
        labels = [int(label) for label in labels]
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{file}: labels must be integers") from None
    return data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1), labels


def load(path: Path, spec: str, options: LoadOptions):
    if not path.is_dir():
        raise DataError(f"{path}: a CIFAR path is the batch folder (cifar-10-batches-py or cifar-100-python)")
    files = _batch_files(path)
    if not files:
        raise DataError(f"{path}: no CIFAR training batches; expected data_batch_1..5 (CIFAR-10) or train (CIFAR-100)")
    collector = Collector(str(path), options)
    for file in files:
        images, labels = _read_batch(file)
        for index, (image, label) in enumerate(zip(images, labels)):
            collector.add(lambda image=image: np.ascontiguousarray(image), f"{file.name}[{index}]", label)
    return collector.image_set(spec)
