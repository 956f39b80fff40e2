"""Resident memory of a pixel-space search over a large on-disk store, against the store's size.

Writes an N x 32 x 32 x 3 uint8 store (.npy, default 1,000,000 images: 2.9 GiB) in chunks, then
searches Q samples against it memory-mapped, as an audit does, sampling /proc/self/status every
20 ms: RssAnon (the process's own memory) and RssFile (pages of the mapped store, which the kernel
reclaims at will). Prints one JSON object.

    python benchmarks/store_memory.py [--n 1000000] [--queries 256] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()

    from memaudit import progress
    from memaudit.data import load_image_set
    from memaudit.search import knn

    progress.set_enabled(False)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "store.npy"
        store = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(args.n, 32, 32, 3))
        rng = np.random.default_rng(0)
        tick = time.perf_counter()
        for start in range(0, args.n, 50_000):
            stop = min(args.n, start + 50_000)
            store[start:stop] = rng.integers(0, 256, (stop - start, 32, 32, 3), dtype=np.uint8)
        store.flush()
        del store
        write_s = time.perf_counter() - tick

        peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        running = True

        def sample():
            while running:
                for field in peaks:
                    peaks[field] = max(peaks[field], _status_kib(field))
                time.sleep(0.02)

        baseline_anon = _status_kib("RssAnon")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tick = time.perf_counter()
        train = load_image_set(f"npy:{path}")  # memory-mapped
        queries = np.ascontiguousarray(train.images[rng.integers(0, args.n, args.queries)])
        distances, indices = knn(queries, train.images, 2)
        search_s = time.perf_counter() - tick
        running = False
        sampler.join()
        store_bytes = path.stat().st_size
        print(json.dumps({
            "benchmark": "store_memory", "images": args.n, "image_shape": [32, 32, 3], "queries": args.queries,
            "store_gib": round(store_bytes / 2**30, 3), "write_s": round(write_s, 1), "search_s": round(search_s, 1),
            "exact_copies_found": float(np.mean(distances[:, 0] == 0)),
            "baseline_anon_gib": round(baseline_anon / 2**20, 3),
            "peak_anon_gib": round(peaks["RssAnon"] / 2**20, 3),
            "peak_anon_over_store": round(peaks["RssAnon"] * 1024 / store_bytes, 3),
            "peak_file_gib": round(peaks["RssFile"] / 2**20, 3),
            "peak_rss_gib": round(peaks["VmRSS"] / 2**20, 3),
            "note": "RssAnon is the process's own memory; RssFile counts mapped store pages, reclaimable cache",
        }))


if __name__ == "__main__":
    main()
