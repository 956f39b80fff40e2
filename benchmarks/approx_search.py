"""Persisted approximate search at scale: memaudit.search.knn with a cached IVF-PQ index.

The database is drawn from a Gaussian mixture (thousands of centres, noise with a decaying
spectrum, so the data has a lower intrinsic dimension, as embeddings do) and written in chunks to a
.npy file that is then memory-mapped (``--dir``, deleted at the end unless ``--keep``); a share of
the queries are near-duplicates of database rows, the case an audit looks for.

Three audits' searches run one after the other against the same cache folder: the first builds the
index (and publishes it); the second, of the same samples, loads it (``built: false``), the
exact neighbours of its tuning sample and the tuner's choice (both cached by the samples'
content); the third, of new samples, loads the index, searches its tuning sample exactly and
tunes. Each tunes (or reuses) nprobe and the re-rank depth on a sample of the queries, searches
every query, re-ranks its candidates from the memory-mapped file (float32, then exactly) and
measures recall on the held-out half of the sample. ``build_s`` is the time inside ``memaudit.indexes.build`` (timed by
wrapping it, the library unchanged). An independent check then searches ``--check`` other queries
exactly (``index="flat"``) and reports recall@k of the second search's results on them: by ids
and by distance (a found neighbour as near as the exact one counts). Peak RSS is the process's
maximum resident set (ru_maxrss). Prints one JSON object on stdout; notes go to stderr.

    python benchmarks/approx_search.py [--n 10000000] [--dim 256] [--queries 10000] [--k 2]
                                       [--clusters 4096] [--dir /tmp/memaudit-approx] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from provenance import library_version  # benchmarks/ is the script's folder


def note(message: str) -> None:
    print(f"[approx_search {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _spectrum(dim: int) -> np.ndarray:
    """Per-dimension standard deviations decaying like 1/sqrt(1 + i/8): effective dimension well below dim."""
    return (1.0 / np.sqrt(1.0 + np.arange(dim) / 8.0)).astype(np.float32)


def _mixture_block(rng, rows: int, centres: np.ndarray, noise: np.ndarray) -> np.ndarray:
    block = rng.standard_normal((rows, centres.shape[1]), dtype=np.float32)
    block *= noise
    block += centres[rng.integers(0, len(centres), rows)]
    return block


def write_database(path: Path, n: int, dim: int, centres, noise, rng, chunk: int = 262_144) -> None:
    """A float32 (n, dim) .npy written chunk by chunk with plain writes (never all in memory)."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for start in range(0, n, chunk):
            handle.write(_mixture_block(rng, min(chunk, n - start), centres, noise).tobytes())


def make_queries(database, nq: int, centres, noise, duplicate_fraction: float, rng) -> np.ndarray:
    queries = _mixture_block(rng, nq, centres, noise)
    # near-duplicates of training rows (what memorisation looks like): a row plus 5% of the cluster noise
    dup = rng.choice(nq, int(round(duplicate_fraction * nq)), replace=False)
    source = np.sort(rng.integers(0, len(database), len(dup)))
    queries[dup] = database[source] + 0.05 * noise * rng.standard_normal((len(dup), queries.shape[1]), dtype=np.float32)
    return queries


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="database rows")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--clusters", type=int, default=4096, help="Gaussian mixture centres")
    parser.add_argument("--noise", type=float, default=0.6, help="cluster noise relative to the centres' spread")
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of queries that are near-duplicates")
    parser.add_argument("--check", type=int, default=1000, help="queries searched exactly for the independent check")
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/memaudit-approx"), help="data and cache folder")
    parser.add_argument("--keep", action="store_true", help="keep the data and the index when done")
    parser.add_argument("--no-new-samples", dest="new_samples", action="store_false",
                        help="skip the third search (new queries against the cached index)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ["MEMAUDIT_CACHE"] = str(args.dir / "cache")
    import faiss

    from memaudit import indexes, progress, tuning
    from memaudit.search import Approximate, SearchInfo, knn

    progress.set_enabled(False)
    load_before = os.getloadavg()
    version = library_version()  # at the start: the checkout may change while this runs
    total_tick = time.perf_counter()
    args.dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.dir / "cache", ignore_errors=True)  # the first search must build
    path = args.dir / f"database-{args.n}x{args.dim}-{args.seed}.npy"
    rng = np.random.default_rng(args.seed)
    spectrum = _spectrum(args.dim)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32) * spectrum
    noise = spectrum * np.float32(args.noise)
    expected_bytes = 128 + 4 * args.n * args.dim  # a complete file of this run's data (the .npy header is 128 bytes)
    tick = time.perf_counter()
    if path.is_file() and path.stat().st_size == expected_bytes:  # left by --keep: the same seed, the same data
        note(f"reusing {path}")
    else:
        note(f"writing {args.n} x {args.dim} float32 ({4 * args.n * args.dim / 2**30:.2f} GiB) to {path}")
        write_database(path, args.n, args.dim, centres, noise, rng)
    generate_s = time.perf_counter() - tick
    database = np.load(path, mmap_mode="r")
    queries = make_queries(database, args.queries, centres, noise, args.duplicates, np.random.default_rng([args.seed, 1]))
    note(f"generated in {generate_s:.1f}s; peak RSS so far {peak_rss_gib()} GiB")

    build_times = []
    original_build = indexes.build

    def timed_build(*a, **kw):
        tick = time.perf_counter()
        try:
            return original_build(*a, **kw)
        finally:
            build_times.append(time.perf_counter() - tick)

    indexes.build = timed_build
    # the data are determined by these parameters: they identify the vectors (an audit uses the
    # feature cache key: the set's content fingerprint, the space, its weights and preprocessing)
    vectors_key = f"approx-benchmark|{args.n}|{args.dim}|{args.clusters}|{args.noise}|{args.seed}"
    runs = []

    def search(attempt, q):
        info = SearchInfo("", "", 0, "")
        tick = time.perf_counter()
        _, found = knn(q, database, args.k, index="ivf-pq", info=info,
                       approximate=Approximate(vectors_key=vectors_key, target_recall=args.target_recall))
        seconds = time.perf_counter() - tick
        tried = info.tuning.pop("tried", None) if info.tuning else None
        runs.append({"search": attempt, "seconds": round(seconds, 3), "qps": round(len(q) / seconds, 1),
                     **info.as_dict(), "build_s": round(build_times[-1], 3) if info.built else 0.0,
                     "tuning_settings_tried": len(tried or []), "peak_rss_gib_so_far": peak_rss_gib()})
        note(f"{attempt}: {json.dumps(runs[-1])}")
        return found

    found = search("first: builds the index", queries)
    found = search("second: the same samples (index and the sample's exact neighbours cached)", queries)
    index_file = indexes.index_path(runs[0]["index_digest"])
    index_bytes = index_file.stat().st_size

    note(f"independent check: {args.check} queries searched exactly")  # of the second search's results
    # queries outside the library's tuning and held-out sample
    outside = np.setdiff1d(np.arange(args.queries), np.concatenate(tuning.split_sample(args.queries)))
    check_rows = np.sort(np.random.default_rng(args.seed + 1).choice(outside, min(args.check, len(outside)),
                                                                     replace=False))
    tick = time.perf_counter()
    exact_d, exact_i = knn(queries[check_rows], database, args.k, index="flat", dtype=np.float64)
    check_s = time.perf_counter() - tick
    approx_i = found[check_rows]
    by_id = float(np.mean([len(set(a) & set(e)) / args.k for a, e in zip(approx_i, exact_i)]))
    q = queries[check_rows].astype(np.float64)
    rows = np.asarray(database[np.sort(np.unique(approx_i))], dtype=np.float64)
    lookup = np.searchsorted(np.sort(np.unique(approx_i)), approx_i)
    approx_d = np.sqrt(((q[:, None, :] - rows[lookup]) ** 2).sum(-1))
    by_distance = float(np.mean(approx_d <= exact_d[:, -1:] * (1 + 1e-12)))  # within the exact k-th distance

    if args.new_samples:
        search("third: new samples (index cached, the sample's exact neighbours searched)",
               make_queries(database, args.queries, centres, noise, args.duplicates, np.random.default_rng([args.seed, 2])))
    first, second = runs[:2]
    result = {
        "benchmark": "approx_search",
        "n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
        "database_float32_gib": round(4 * args.n * args.dim / 2**30, 3),
        "data": {"kind": "gaussian_mixture", "clusters": args.clusters, "noise": args.noise, "spectrum": "1/sqrt(1+i/8)",
                 "duplicate_queries": args.duplicates, "seed": args.seed, "generate_s": round(generate_s, 3),
                 "storage": "float32 .npy, memory-mapped"},
        "index": {"kind": "ivf-pq", "params": first["params"], "file_gib": round(index_bytes / 2**30, 3),
                  "build_s": first["build_s"]},
        "runs": runs,
        "first_over_second": round(first["seconds"] / second["seconds"], 2),
        "first_over_third": round(first["seconds"] / runs[2]["seconds"], 2) if len(runs) > 2 else None,
        "search_qps_second": second["qps"],
        "check": {"queries": len(check_rows), "exact_s": round(check_s, 3), "recall_at_k_by_id": round(by_id, 5),
                  "recall_at_k_by_distance": round(by_distance, 5)},
        "peak_rss_gib": peak_rss_gib(),
        "total_s": round(time.perf_counter() - total_tick, 1),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_version": faiss.__version__,
        "memaudit_version": version,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))
    if not args.keep:
        del database
        path.unlink(missing_ok=True)
        shutil.rmtree(args.dir / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
