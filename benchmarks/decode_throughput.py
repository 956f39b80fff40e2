"""Decode throughput per training-set format: images/s of memaudit's loader on one set.

The set: N 32x32 RGB crops at random places of scikit-learn's china.jpg and flower.jpg (real
photos), stored losslessly in each format as the tools that make it do (the writers in
tests/format_writers.py). Each format is loaded through ``load_image_set``, which decodes every
image (PNG through Pillow; arrays and CIFAR batches without), checks it against the source and
times the best of ``--repeat`` loads. Prints one JSON object.

    python benchmarks/decode_throughput.py [--n 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import format_writers as w  # noqa: E402


def write_all(root: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Every format's copy of the set under ``root``; format -> --train spec."""
    folder = root / "folder"
    folder.mkdir()
    for index, image in enumerate(images):
        (folder / f"{index:06d}.png").write_bytes(w.png_bytes(image))
    np.savez(root / "set.npz", images=images, labels=labels)
    w.write_edm_zip(root / "set.zip", images, labels)
    w.write_cifar10(root / "cifar", images, labels)
    w.write_shards(root / "shards", images, labels, per_shard=1000)
    w.write_parquet(root / "set.parquet", images, labels, row_group_size=1000)
    w.write_hf_dataset(root / "hf", images, labels)
    shards = len(list((root / "shards").glob("*.tar")))
    return {"folder": f"folder:{folder}", "npz": f"npz:{root / 'set.npz'}", "edm-zip": f"edm-zip:{root / 'set.zip'}",
            "cifar-like": f"cifar:{root / 'cifar'}",
            "webdataset": f"webdataset:{root}/shards/data-{{000..{shards - 1:03d}}}.tar",
            "parquet": f"parquet:{root / 'set.parquet'}", "hf": f"hf:{root / 'hf'}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from memaudit import progress
    from memaudit.data import load_image_set

    progress.set_enabled(False)
    images = w.photo_crops(args.n, args.side, seed=0)
    labels = np.arange(args.n) % 10
    results = {}
    with tempfile.TemporaryDirectory() as temp:
        for name, spec in write_all(Path(temp), images, labels).items():
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                image_set = load_image_set(spec)
                best = min(best, time.perf_counter() - start)
            assert np.array_equal(image_set.images, images), name  # lossless: the same pixels
            assert np.array_equal(image_set.labels, labels) or name == "folder", name
            results[name] = {"images_per_s": round(args.n / best), "seconds": round(best, 3)}
    print(json.dumps({
        "benchmark": "decode_throughput", "n_images": args.n, "image_shape": [args.side, args.side, 3],
        "source": "random crops of sklearn china.jpg and flower.jpg, PNG-encoded where the format holds files",
        "repeat": args.repeat, "timing": "best of repeat, one process, load_image_set end to end",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "formats": results,
    }, indent=2))


if __name__ == "__main__":
    main()
