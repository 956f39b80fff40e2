"""Exact tiled-l2 and exact precision/recall (with density/coverage) against the pixel kNN search
of the same run, on CIFAR-sized images.

The audit's pixel search (memaudit.search.knn, k = 50 as carlini-relative needs) is the unit: the
figures are each step's time as a ratio to it. Training images are smooth random "photos" (a 4x4
field upsampled, plus noise); a share of the samples (--copies) are noisy copies of training
images, the rest new images of the same kind, so the tiled bound settles some samples at once and
sends the rest through the whole-set pass. Precision/recall is timed twice: computing the training
set's k-NN radii (the N^2 part), and as a later audit of the same training set does, reading them
from the cache. Prints one JSON object.

The default run is small enough for a 2-core machine (1,000 samples x 5,000 training images);
the issue's size is --nq 10000 --nb 50000.

    python benchmarks/exact_criteria.py [--nq 1000] [--nb 5000] [--side 32] [--copies 0.1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from provenance import library_version


def photos(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    fine = np.repeat(np.repeat(coarse, side // 4, axis=1), side // 4, axis=2)
    return np.clip(fine + rng.normal(0, 16, fine.shape), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nq", type=int, default=1_000)
    parser.add_argument("--nb", type=int, default=5_000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--copies", type=float, default=0.1, help="share of samples that copy a training image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from memaudit import progress
    from memaudit.criteria import RELATIVE_NEIGHBOURS
    from memaudit.quality import manifold_metrics
    from memaudit.search import flat_backend, knn
    from memaudit.tiled import nearest_tiled_l2

    progress.set_enabled(False)
    rng = np.random.default_rng(args.seed)
    train = photos(rng, args.nb, args.side)
    copies = int(round(args.copies * args.nq))
    sources = rng.choice(args.nb, copies, replace=False)
    copied = np.clip(train[sources].astype(int) + rng.integers(-4, 5, (copies, *train.shape[1:])), 0, 255)
    samples = np.concatenate([copied.astype(np.uint8), photos(rng, args.nq - copies, args.side)])
    k = min(RELATIVE_NEIGHBOURS, args.nb)

    knn(samples[:10], train[:1000], 2)  # warm-up: imports and thread pools, not timed
    tick = time.perf_counter()
    distances, indices = knn(samples, train, k, dtype=np.float64)
    knn_s = time.perf_counter() - tick

    tick = time.perf_counter()
    scores, nearest = nearest_tiled_l2(samples, train, indices, distances)
    tiled_s = time.perf_counter() - tick
    scale = 255.0 * np.sqrt(samples[0].size)
    settled = int((scores < distances[:, -1] / scale).sum())
    outside = int(sum(nearest[i] not in indices[i] for i in range(len(samples))))

    flat = lambda images: images.reshape(len(images), -1).astype(np.float32)  # noqa: E731
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "radii.npz"
        tick = time.perf_counter()
        figures = manifold_metrics(flat(train), flat(samples), radii_cache=cache)
        prdc_s = time.perf_counter() - tick
        tick = time.perf_counter()  # a later audit of the same training set reads its radii
        again = manifold_metrics(flat(train), flat(samples), radii_cache=cache)
        prdc_cached_s = time.perf_counter() - tick
    assert again == figures

    print(json.dumps({
        "benchmark": "exact_criteria",
        "shape": {"samples": args.nq, "train": args.nb, "image": [args.side, args.side, 3], "copies": copies,
                  "knn_k": k},
        "knn_backend": flat_backend(),
        "knn_s": round(knn_s, 3),
        "tiled_l2_s": round(tiled_s, 3),
        "precision_recall_density_coverage_s": round(prdc_s, 3),
        "tiled_l2_over_knn": round(tiled_s / knn_s, 2),
        "precision_recall_over_knn": round(prdc_s / knn_s, 2),
        "precision_recall_cached_training_radii_s": round(prdc_cached_s, 3),
        "precision_recall_cached_training_radii_over_knn": round(prdc_cached_s / knn_s, 2),
        "tiled_l2_settled_by_the_bound": settled,
        "tiled_l2_nearest_outside_the_knn_candidates": outside,
        "tiled_l2_flagged_at_0.15": int((scores < 0.15).sum()),
        "quality": {name: round(value, 6) for name, value in figures.items()},
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "memaudit": library_version(),
    }))


if __name__ == "__main__":
    main()
