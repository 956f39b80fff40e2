"""memaudit.search.knn with an approximate index (IVF, HNSW) against exact search, at scale.

The database is drawn from a Gaussian mixture (thousands of centres, noise with a decaying
spectrum, so the data has a lower intrinsic dimension, as embeddings do); a share of the queries
are near-duplicates of database rows, the case an audit looks for. For each metric the exact
search (``index="flat"``) runs once and is timed; each approximate index is then timed and its
recall@k measured against the exact result on every query. Prints one JSON object on stdout;
notes go to stderr.

``knn`` builds its index and searches it in one call, so the headline time is build + search
(what an audit pays). The ``phases_s`` breakdown is read off the library's own progress events
(train: until the "building" bar opens; add: while it is open; search_and_rescore: after it),
without changing the library.

    python benchmarks/approx_search.py [--n 1000000] [--dim 512] [--queries 10000] [--k 2]
                                       [--index ivf,hnsw] [--metric l2] [--clusters 4096] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time

import numpy as np
from provenance import library_version  # benchmarks/ is the script's folder


def note(message: str) -> None:
    print(f"[approx_search {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _spectrum(dim: int) -> np.ndarray:
    """Per-dimension standard deviations decaying like 1/sqrt(1 + i/8): effective dimension well below dim."""
    return (1.0 / np.sqrt(1.0 + np.arange(dim) / 8.0)).astype(np.float32)


def _mixture(rng, n: int, centres: np.ndarray, noise: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        block = rng.standard_normal((rows, centres.shape[1]), dtype=np.float32)
        block *= noise
        block += centres[rng.integers(0, len(centres), rows)]
        out[start:start + rows] = block
    return out


def make_data(n: int, dim: int, nq: int, clusters: int, noise_ratio: float, duplicate_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    spectrum = _spectrum(dim)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * spectrum
    noise = spectrum * np.float32(noise_ratio)
    database = _mixture(rng, n, centres, noise)
    queries = _mixture(rng, nq, centres, noise)
    # near-duplicates of training rows (what memorisation looks like): a row plus 5% of the cluster noise
    dup = rng.choice(nq, int(round(duplicate_fraction * nq)), replace=False)
    source = rng.integers(0, n, len(dup))
    queries[dup] = database[source] + 0.05 * noise * rng.standard_normal((len(dup), dim), dtype=np.float32)
    return database, queries


def _normalise_inplace(matrix: np.ndarray, chunk: int = 65_536) -> None:
    for start in range(0, len(matrix), chunk):
        block = matrix[start:start + chunk]
        block /= np.linalg.norm(block, axis=1, keepdims=True)


class PhaseClock:
    """Wraps memaudit.progress.task to timestamp when each progress bar opens and closes."""

    def __init__(self, progress_module):
        self.events: list[tuple[str, float, float]] = []
        self._module = progress_module
        self._original = progress_module.task

    @contextlib.contextmanager
    def _task(self, description, total, completed=0):
        opened = time.perf_counter()
        try:
            with self._original(description, total, completed) as advance:
                yield advance
        finally:
            self.events.append((description, opened, time.perf_counter()))

    def __enter__(self):
        self._module.task = self._task
        return self

    def __exit__(self, *exc):
        self._module.task = self._original

    def phases(self, start: float, end: float, kind: str) -> dict | None:
        build = [e for e in self.events if e[0] == f"building {kind} index" and start <= e[1] <= end]
        if not build:
            return None
        _, opened, closed = build[-1]
        phases = {"add": round(closed - opened, 3), "search_and_rescore": round(end - closed, 3)}
        if kind == "ivf":
            phases = {"train": round(opened - start, 3), **phases}
        else:
            phases = {"setup": round(opened - start, 3), **phases}
        return phases


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    a, e = approx[:, :k], exact[:, :k]
    hits = (a[:, :, None] == e[:, None, :]).any(axis=2).sum()
    return float(hits / (len(e) * k))


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="database rows")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--index", default="ivf,hnsw", help="comma-separated: ivf, hnsw (default both)")
    parser.add_argument("--metric", default="l2",
                        help="comma-separated: l2, ip; ip searches the data L2-normalised (in place, after l2)")
    parser.add_argument("--clusters", type=int, default=4096, help="Gaussian mixture centres")
    parser.add_argument("--noise", type=float, default=0.6, help="cluster noise relative to the centres' spread")
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of queries that are near-duplicates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    indexes = [s.strip() for s in args.index.split(",") if s.strip()]
    metrics = [s.strip() for s in args.metric.split(",") if s.strip()]
    if not set(indexes) <= {"ivf", "hnsw"} or not indexes:
        parser.error("--index: expected ivf, hnsw or ivf,hnsw")
    if not set(metrics) <= {"l2", "ip"} or not metrics:
        parser.error("--metric: expected l2, ip or l2,ip")
    metrics = [m for m in ("l2", "ip") if m in metrics]  # l2 first: ip normalises the data in place

    import faiss

    from memaudit import progress
    from memaudit.search import SearchInfo, knn, measure_recall

    progress.set_enabled(False)
    load_before = os.getloadavg()
    version = library_version()  # at the start: the checkout may change while this runs
    total_tick = time.perf_counter()
    note(f"generating {args.n} x {args.dim} database and {args.queries} queries")
    tick = time.perf_counter()
    database, queries = make_data(args.n, args.dim, args.queries, args.clusters, args.noise, args.duplicates, args.seed)
    generate_s = time.perf_counter() - tick
    note(f"generated in {generate_s:.1f}s ({database.nbytes / 2**30:.2f} GiB database)")

    results = []
    for metric in metrics:
        if metric == "ip":
            _normalise_inplace(database)
            _normalise_inplace(queries)
        note(f"[{metric}] exact search (index=flat)")
        info = SearchInfo("", "", 0, "")
        tick = time.perf_counter()
        _, exact_idx = knn(queries, database, args.k, metric=metric, index="flat", info=info)
        exact_s = time.perf_counter() - tick
        exact_qps = args.queries / exact_s
        exact_device = info.device
        note(f"[{metric}] exact: {exact_s:.1f}s, {exact_qps:.0f} queries/s ({info.device})")
        for kind in indexes:
            note(f"[{metric}] {kind}: build + search")
            info = SearchInfo("", "", 0, "")
            with PhaseClock(progress) as clock:
                start = time.perf_counter()
                _, approx_idx = knn(queries, database, args.k, metric=metric, index=kind, info=info)
                end = time.perf_counter()
            seconds = end - start
            phases = clock.phases(start, end, kind)
            recall = recall_at_k(approx_idx, exact_idx, args.k)
            tick = time.perf_counter()
            sampled = measure_recall(queries, database, args.k, metric, approx_idx)
            sampled_s = time.perf_counter() - tick
            search_s = phases["search_and_rescore"] if phases else None
            row = {
                "index": info.index,
                "metric": metric,
                "device": info.device,
                "candidates": info.candidates,
                "build_plus_search_s": round(seconds, 3),
                "phases_s": phases,
                "qps": round(args.queries / seconds, 1),
                "search_only_qps": round(args.queries / search_s, 1) if search_s else None,
                "recall_at_%d" % args.k: round(recall, 5),
                "measure_recall_256_sample": round(sampled, 5),
                "measure_recall_s": round(sampled_s, 3),
                "exact_device": exact_device,
                "exact_s": round(exact_s, 3),
                "exact_qps": round(exact_qps, 1),
                "speedup_vs_exact": round(exact_s / seconds, 3),
                "search_only_speedup_vs_exact": round(exact_s / search_s, 3) if search_s else None,
            }
            results.append(row)
            note(f"[{metric}] {kind}: {seconds:.1f}s (phases {phases}), recall@{args.k} {recall:.4f}, "
                 f"speedup {exact_s / seconds:.2f}x")
            del approx_idx

    print(json.dumps({
        "benchmark": "approx_search",
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "data": {"kind": "gaussian_mixture", "clusters": args.clusters, "noise": args.noise,
                 "spectrum": "1/sqrt(1+i/8)", "duplicate_queries": args.duplicates, "seed": args.seed,
                 "generate_s": round(generate_s, 3)},
        "timing_note": ("knn builds the index and searches it in one call: build_plus_search_s and qps include index "
                        "construction; phases_s splits it at the library's progress events; exact is knn(index='flat'); "
                        "recall is against the exact result on every query (measure_recall_256_sample is the library's "
                        "256-query estimate)"),
        "results": results,
        "total_s": round(time.perf_counter() - total_tick, 1),
        "peak_rss_gib": peak_rss_gib(),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_version": faiss.__version__,
        "memaudit_version": version,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
