"""Exact search (memaudit.search.knn) against the bare float32 matrix product and faiss, in one run.

The product ``Q @ B.T`` (float32, every query against every row) is the arithmetic core of exact
L2 search, so its time is the floor the search should reach: each ratio is GEMM time / method
time (>= 1.0: the search costs no more than the product alone). For each thread count of
``--threads`` and each dtype (float32 features, standard normal; uint8 pixels, uniform) the run
times the numpy product (the reference), torch's product, ``knn`` on its default backend and
faiss's ``IndexFlatL2`` (add, then search k; fed float32, converted before the clock starts).
Threads are set inside the process: threadpoolctl limits every BLAS and OpenMP pool it finds
(numpy's and faiss's OpenBLAS, faiss's and torch's libgomp), torch.set_num_threads sets torch's
pool and its MKL, faiss.omp_set_num_threads faiss's; ``pools`` records what each library reported
under the limit, and ``cpu_per_wall`` each timing's process CPU seconds per wall second (at most
about the thread count: above it, a pool ignored the limit; far below it, the machine is shared and
the wall times are not the methods' own). ``vs_gemm_cpu`` is the same ratio in process CPU
seconds: on a shared machine at one thread, the steadier figure. ``exact`` checks knn's result on a
sample of queries against a float64 brute force (same indices, ties to the lower index; distances
equal once rounded to float32). ``--repeats N`` times everything N times, interleaved, and keeps
each one's fastest (for a shared machine). Prints one JSON object.

    python benchmarks/knn_throughput.py [--nq 10000] [--nb 50000] [--dim 3072] [--k 2] [--threads 1,2]
                                        [--dtypes float32,uint8] [--repeats 1] [--check 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nq", type=int, default=10_000, help="queries")
    parser.add_argument("--nb", type=int, default=50_000, help="database rows")
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--dtypes", default="float32,uint8", help="float32 and/or uint8")
    parser.add_argument("--repeats", type=int, default=1, help="time everything this many times, keep the fastest")
    parser.add_argument("--check", type=int, default=200, help="queries checked against a float64 brute force")
    args = parser.parse_args(argv)

    import faiss
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from memaudit import progress
    from memaudit.search import flat_backend, knn

    progress.set_enabled(False)
    rng = np.random.default_rng(args.seed)
    data = {}
    for dtype in args.dtypes.split(","):
        if dtype == "float32":  # features, as embedding spaces and float --samples give them
            data[dtype] = (rng.standard_normal((args.nq, args.dim), dtype=np.float32),
                           rng.standard_normal((args.nb, args.dim), dtype=np.float32))
        elif dtype == "uint8":  # pixels, as audits in pixel space search them (CIFAR-10 shape by default)
            data[dtype] = (rng.integers(0, 256, (args.nq, args.dim), dtype=np.uint8),
                           rng.integers(0, 256, (args.nb, args.dim), dtype=np.uint8))
        else:
            parser.error(f"--dtypes: {dtype!r} is neither float32 nor uint8")
    as32 = {dtype: (q.astype(np.float32), b.astype(np.float32)) for dtype, (q, b) in data.items()}
    q32, b32 = next(iter(as32.values()))  # the product's time does not depend on the values

    def flat_l2(queries, rows):
        index = faiss.IndexFlatL2(rows.shape[1])
        index.add(rows)
        return index.search(queries, args.k)

    before = torch.get_num_threads()
    runs = []
    for threads in sorted({int(t) for t in args.threads.split(",") if t}):
        with threadpool_limits(limits=threads):
            torch.set_num_threads(threads)
            faiss.omp_set_num_threads(threads)
            knn(*(a[:20] for a in next(iter(data.values()))), args.k)  # warm-up: imports and pools, not timed
            timings = {}
            for _ in range(args.repeats):
                work = {"gemm_numpy": lambda: q32 @ b32.T,
                        "gemm_torch": lambda: torch.from_numpy(q32) @ torch.from_numpy(b32).T}
                for dtype, (queries, rows) in data.items():
                    work[f"knn_{dtype}"] = lambda q=queries, b=rows: knn(q, b, args.k)
                    work[f"faiss_flat_l2_{dtype}"] = lambda q=as32[dtype][0], b=as32[dtype][1]: flat_l2(q, b)
                for name, job in work.items():
                    seconds, cpu = _seconds(job)
                    if seconds < timings.get(name, (np.inf, 0))[0]:
                        timings[name] = (seconds, cpu)
            pools = [{"library": p['filepath'].split('site-packages/')[-1], "api": p["user_api"],
                      "threads": p["num_threads"]}
                     for p in threadpool_info()]
            pools.append({"library": "torch (intra-op, MKL)", "threads": torch.get_num_threads()})
        gemm = timings["gemm_numpy"][0]
        gemm_torch = timings["gemm_torch"][0]
        run = {"threads": threads, "gemm_numpy_s": round(gemm, 3), "gemm_torch_s": round(gemm_torch, 3),
               "gemm_gflops": round(2.0 * args.nq * args.nb * args.dim / gemm / 1e9, 1), "pools": pools,
               "cpu_per_wall": {name: round(cpu / seconds, 2) for name, (seconds, cpu) in timings.items()}}
        gemm_cpu = timings["gemm_numpy"][1]
        for dtype in data:
            run[dtype] = {
                method: {"s": round(timings[f"{method}_{dtype}"][0], 3),
                         "vs_gemm": round(gemm / timings[f"{method}_{dtype}"][0], 3),
                         "vs_torch_gemm": round(gemm_torch / timings[f"{method}_{dtype}"][0], 3),
                         "vs_gemm_cpu": round(gemm_cpu / timings[f"{method}_{dtype}"][1], 3)}
                for method in ("knn", "faiss_flat_l2")}
        runs.append(run)
    torch.set_num_threads(before)
    result = {
        "benchmark": "knn_throughput",
        "shape": {"queries": args.nq, "database": args.nb, "dim": args.dim, "k": args.k},
        "repeats": args.repeats,
        "backend": flat_backend(),
        "ratio": "GEMM seconds / method seconds (numpy float32 q @ b.T, same threads; >= 1.0 reaches it)",
        "runs": runs,
        "exact": {dtype: _check(queries[:args.check], rows, args.k, knn) for dtype, (queries, rows) in data.items()},
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.machine(),
    }
    print(json.dumps(result))
    return result


def _seconds(work) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``work()``; its result is freed after the clocks stop."""
    cpu, tick = time.process_time(), time.perf_counter()
    result = work()
    seconds, cpu = time.perf_counter() - tick, time.process_time() - cpu
    del result
    return seconds, cpu


def _check(queries, rows, k, knn) -> dict:
    """knn against a float64 brute force on ``queries``: the same rows (ties to the lower index) and
    distances equal after rounding to float32. The brute force ranks every row by float64
    ``|q|^2 + |b|^2 - 2 q.b`` (blocks of rows), then its best k + 16 by float64 differences."""
    distances, indices = knn(queries, rows, k)
    q = queries.astype(np.float64)
    width = min(len(rows), k + 16)
    near_key = np.full((len(q), 0), np.inf)
    near_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(rows), 8192):
        b = rows[start:start + 8192].astype(np.float64)
        keys = (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (q @ b.T)
        near_key = np.concatenate([near_key, keys], 1)
        near_i = np.concatenate([near_i, np.broadcast_to(np.arange(start, start + len(b)), keys.shape)], 1)
        keep = np.argpartition(near_key, width - 1, axis=1)[:, :width] if near_key.shape[1] > width else None
        if keep is not None:
            near_key, near_i = np.take_along_axis(near_key, keep, 1), np.take_along_axis(near_i, keep, 1)
    exact = np.stack([((rows[i].astype(np.float64) - row) ** 2).sum(1) for row, i in zip(q, near_i)])
    order = np.lexsort((near_i, exact), axis=1)[:, :k]
    best_d, best_i = np.sqrt(np.take_along_axis(exact, order, 1)), np.take_along_axis(near_i, order, 1)
    return {"queries": len(q), "same_indices": bool(np.array_equal(indices, best_i)),
            "same_float32_distances": bool(np.array_equal(distances, best_d.astype(np.float32))),
            "max_relative_distance_error": float(np.max(np.abs(distances - best_d) / np.maximum(best_d, 1e-300)))}


if __name__ == "__main__":
    main()
