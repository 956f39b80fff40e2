"""A fuzz pass over the training-set loaders: valid files of every format, their bytes mutated
(overwritten, flipped, cut, inserted, removed) by hypothesis; every case either loads or is one
``MemauditError``, never another exception (which the CLI would print as a traceback).

Cases per format: ``MEMAUDIT_FUZZ_N`` (default 50, so that the seven formats take well under
half a minute); ``MEMAUDIT_FUZZ_N=2000 pytest tests/test_fuzz_loaders.py`` is the long pass.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from format_writers import (digits, png_bytes, write_cifar10, write_edm_zip, write_parquet, write_shards)
from memaudit.data import load_image_set
from memaudit.errors import MemauditError

CASES = int(os.environ.get("MEMAUDIT_FUZZ_N", "50"))


def _write_valid(kind: str, folder: Path) -> tuple[str, Path]:
    """A small valid set of ``kind`` in ``folder``: (the spec to load, the file whose bytes are mutated)."""
    images, labels = digits(10)
    rgb = np.repeat(images, 3, axis=-1)
    if kind == "npz":
        np.savez(folder / "set.npz", images=images, labels=labels, seeds=np.arange(10))
        return f"npz:{folder / 'set.npz'}", folder / "set.npz"
    if kind == "npy":
        np.save(folder / "set.npy", images)
        return f"npy:{folder / 'set.npy'}", folder / "set.npy"
    if kind == "png":
        (folder / "pngs").mkdir()
        for i in range(3):
            (folder / "pngs" / f"{i}.png").write_bytes(png_bytes(images[i]))
        return f"folder:{folder / 'pngs'}", folder / "pngs" / "1.png"
    if kind == "zip":
        write_edm_zip(folder / "set.zip", images, labels)
        return f"edm-zip:{folder / 'set.zip'}", folder / "set.zip"
    if kind == "parquet":
        write_parquet(folder / "set.parquet", images, labels, row_group_size=4)
        return f"parquet:{folder / 'set.parquet'}", folder / "set.parquet"
    if kind == "webdataset":
        shards = write_shards(folder / "shards", images, labels, per_shard=6)
        return f"webdataset:{shards[0]}", shards[0]
    if kind == "cifar":
        write_cifar10(folder / "cifar", np.stack([np.pad(im, ((0, 24), (0, 24), (0, 0))) for im in rgb]), labels, batches=1)
        return f"cifar:{folder / 'cifar'}", folder / "cifar" / "data_batch_1"
    raise AssertionError(kind)


FORMATS = ("npz", "npy", "png", "zip", "parquet", "webdataset", "cifar")

# one mutation: (kind, where as a fraction of the file, bytes)
MUTATION = st.tuples(st.sampled_from(("overwrite", "flip", "truncate", "insert", "delete")),
                     st.floats(0.0, 1.0, allow_nan=False), st.binary(min_size=1, max_size=16))


def mutate(data: bytes, mutations) -> bytes:
    buffer = bytearray(data)
    for kind, where, chunk in mutations:
        at = min(int(where * len(buffer)), max(len(buffer) - 1, 0))
        if kind == "overwrite":
            buffer[at:at + len(chunk)] = chunk
        elif kind == "flip" and buffer:
            buffer[at] ^= chunk[0] or 0xFF
        elif kind == "truncate":
            del buffer[at:]
        elif kind == "insert":
            buffer[at:at] = chunk
        elif kind == "delete":
            del buffer[at:at + len(chunk)]
    return bytes(buffer)


@pytest.fixture(scope="module")
def valid_sets(tmp_path_factory):
    sets = {}
    for kind in FORMATS:
        folder = tmp_path_factory.mktemp(f"valid-{kind}")
        spec, target = _write_valid(kind, folder)
        load_image_set(spec)  # the unmutated file loads
        sets[kind] = (folder, spec, target)
    return sets


@pytest.mark.parametrize("kind", FORMATS)
def test_mutated_files_load_or_fail_in_one_line(valid_sets, kind):
    folder, spec, target = valid_sets[kind]
    original = target.read_bytes()
    outcomes = {"loaded": 0, "refused": 0}

    @settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(MUTATION, min_size=1, max_size=4))
    def case(mutations):
        work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"case-{kind}-"))
        try:  # a copy of the valid set with the target's bytes mutated: a new path, so no store reuse
            copy = work / "set"
            shutil.copytree(folder, copy)
            (copy / target.relative_to(folder)).write_bytes(mutate(original, mutations))
            try:
                image_set = load_image_set(spec.replace(str(folder), str(copy)))
            except MemauditError as error:
                assert "\n" not in str(error).strip()
                outcomes["refused"] += 1
                return
            assert image_set.images.dtype == np.uint8 and image_set.images.ndim == 4
            outcomes["loaded"] += 1
        finally:
            shutil.rmtree(work, ignore_errors=True)

    case()
    assert sum(outcomes.values()) >= min(CASES, 10)
    print(f"{kind}: {outcomes}")
