"""memaudit.search.knn against a plain numpy float32 matrix product of the same shapes.

The product Q @ B.T is the arithmetic core of exact L2 search, so its time is the floor the
search should approach (throughput_vs_matmul: the goal is >= 0.9). knn runs on its default
backend and, for comparison, on faiss-cpu. ``crossover`` then times every CPU backend and the
matrix product again at each thread count of ``--threads`` (threadpoolctl limits every BLAS and
OpenMP pool; torch's own pool is set too), which measures where ``flat_backend``'s switch from
faiss-cpu to torch-cpu (``FEW_CORES``) belongs. Prints one JSON object; all timings come from one run.
On a shared machine ``--repeats N`` times knn, faiss-cpu and the product N times each, interleaved,
and keeps each one's fastest (the crossover too).

    python benchmarks/knn_throughput.py [--nq 10000] [--nb 50000] [--dim 3072] [--k 2] [--threads 1,2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nq", type=int, default=10_000)
    parser.add_argument("--nb", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="thread counts for the backend crossover (empty: none)")
    parser.add_argument("--repeats", type=int, default=1, help="time everything this many times, keep the fastest")
    args = parser.parse_args()

    from memaudit import progress
    from memaudit.search import knn

    progress.set_enabled(False)
    rng = np.random.default_rng(args.seed)
    # uint8 pixels, as audits search them (CIFAR-10 shape by default: 32x32x3 = 3072)
    database = rng.integers(0, 256, (args.nb, args.dim), dtype=np.uint8)
    queries = rng.integers(0, 256, (args.nq, args.dim), dtype=np.uint8)

    from memaudit.search import flat_backend

    backend = flat_backend()
    knn(queries[:10], database[:1000], args.k)  # warm-up: imports and thread pools, not timed
    q32, b32 = queries.astype(np.float32), database.astype(np.float32)
    knn_s = faiss_s = matmul_s = float("inf")
    for _ in range(args.repeats):
        knn_s = min(knn_s, _seconds(lambda: knn(queries, database, args.k)))
        # the same search through faiss-cpu's flat search, for comparison
        os.environ["MEMAUDIT_FLAT_BACKEND"] = "faiss-cpu"
        faiss_s = min(faiss_s, _seconds(lambda: knn(queries, database, args.k)))
        del os.environ["MEMAUDIT_FLAT_BACKEND"]
        matmul_s = min(matmul_s, _seconds(lambda: q32 @ b32.T))

    flops = 2.0 * args.nq * args.nb * args.dim
    crossover = _crossover(queries, database, q32, b32, args.k, sorted({int(t) for t in args.threads.split(",") if t}),
                           args.repeats)
    print(json.dumps({
        "benchmark": "knn_throughput",
        "shape": {"queries": args.nq, "database": args.nb, "dim": args.dim, "k": args.k},
        "repeats": args.repeats,
        "backend": backend,
        "knn_s": round(knn_s, 3),
        "faiss_cpu_knn_s": round(faiss_s, 3),
        "numpy_matmul_s": round(matmul_s, 3),
        "knn_over_matmul": round(knn_s / matmul_s, 3),
        "throughput_vs_matmul": round(matmul_s / knn_s, 3),
        "faiss_cpu_throughput_vs_matmul": round(matmul_s / faiss_s, 3),
        "knn_gflops": round(flops / knn_s / 1e9, 1),
        "matmul_gflops": round(flops / matmul_s / 1e9, 1),
        "crossover": crossover,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }))


def _seconds(work) -> float:
    """Wall-clock seconds of ``work()``; its result is freed after the clock stops, not kept."""
    tick = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - tick
    del result
    return seconds


def _crossover(queries, database, q32, b32, k, thread_counts, repeats) -> list[dict]:
    """Each CPU backend's knn time against the matrix product at each thread count (fastest of ``repeats``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return [{"skipped": "threadpoolctl is not installed"}]
    import torch

    from memaudit.search import knn

    rows = []
    before = torch.get_num_threads()
    for threads in thread_counts:
        with threadpool_limits(limits=threads):
            torch.set_num_threads(threads)
            seconds = {"matmul": float("inf"), "faiss-cpu": float("inf"), "torch-cpu": float("inf")}
            for _ in range(repeats):
                seconds["matmul"] = min(seconds["matmul"], _seconds(lambda: q32 @ b32.T))
                for backend in ("faiss-cpu", "torch-cpu"):
                    os.environ["MEMAUDIT_FLAT_BACKEND"] = backend
                    seconds[backend] = min(seconds[backend], _seconds(lambda: knn(queries, database, k)))
                del os.environ["MEMAUDIT_FLAT_BACKEND"]
            matmul_s = seconds["matmul"]
            row = {"threads": threads, "numpy_matmul_s": round(matmul_s, 3)}
            for backend in ("faiss-cpu", "torch-cpu"):
                row[backend] = {"knn_s": round(seconds[backend], 3),
                                "throughput_vs_matmul": round(matmul_s / seconds[backend], 3)}
            row["faster"] = min(("faiss-cpu", "torch-cpu"), key=lambda b: row[b]["knn_s"])
            rows.append(row)
    torch.set_num_threads(before)
    return rows


if __name__ == "__main__":
    main()
