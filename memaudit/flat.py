"""Exact block search backends: the k best rows of one database block for every query.

Each backend gives, for every query, the float32 keys (full squared L2 ``|q|^2 + |b|^2 - 2 q.b``,
or the negated inner product: smaller is nearer) and block-local row indices of its ``want``
smallest keys, unsorted. Every key is a float32 matrix product plus norms, or faiss's direct sum
for a few queries, whose rounding ``memaudit.exact.key_error_factor`` bounds; ``memaudit.exact``
re-scores exactly what that bound cannot rule out. ``flat_backend`` picks the fastest for the
machine (``$MEMAUDIT_FLAT_BACKEND`` forces one); on the CPU that is ``TILES_BACKEND``, a search
``memaudit.exact`` runs itself rather than a block backend.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from memaudit import distributed
from memaudit.errors import InputError


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise InputError(
            "faiss is not installed; install memaudit with the 'cpu' extra (faiss-cpu) or the 'gpu' extra (faiss-gpu)"
        ) from None
    return faiss


def as_float32(rows) -> np.ndarray:
    """A contiguous float32 copy, converted by torch on all cores (numpy's cast uses one)."""
    import torch

    rows = np.ascontiguousarray(rows)
    if rows.dtype == np.float32:
        return rows
    with reading_read_only_arrays():
        return torch.from_numpy(rows).to(torch.float32).numpy()


@contextlib.contextmanager
def reading_read_only_arrays():
    """Silence torch's warning about non-writable arrays (memory-mapped stores and caches): they are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        yield


def _faiss_block_search(queries, block, want, metric, gpu: bool):
    """Keys from a faiss flat search (its squared L2 is ``|q|^2 + |b|^2 - 2 q.b``, clamped at 0)."""
    faiss = _import_faiss()
    if gpu:
        index = faiss.IndexFlatL2(block.shape[1]) if metric == "l2" else faiss.IndexFlatIP(block.shape[1])
        index = _to_gpus(faiss, index)
        index.add(block)
        d, i = index.search(queries, want)
    else:  # faiss.knn searches the block in place: no copy into an index
        d, i = faiss.knn(queries, block, want, metric=faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    return (d if metric == "l2" else -d), i


_gpu_resources = {}


def _to_gpus(faiss, index):
    """A faiss GPU index: on this rank's GPU in a distributed run (one GPU per rank), else sharded
    over every GPU of the machine (each GPU holds a slice of the block; faiss merges the results)."""
    world = distributed.current()
    if world.distributed:
        gpu = int(world.cuda_device().partition(":")[2])
        if gpu not in _gpu_resources:
            _gpu_resources[gpu] = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(_gpu_resources[gpu], gpu, index)
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options)


def _torch_block_search(queries: np.ndarray, block: np.ndarray, want: int, metric: str, device: str = "cpu"):
    """The same keys from a torch matrix product and top-k; queries go in chunks of about 256 MiB
    of scores. The product ranks by ``|b|^2 - 2 q.b`` and ``|q|^2`` (constant per query) is added
    to the ``want`` kept only."""
    import torch

    database = torch.from_numpy(block).to(device)
    norms = (database * database).sum(1) if metric == "l2" else None
    chunk = max(1, (1 << 28) // (4 * len(block)))
    keys, rows = [], []
    with torch.inference_mode(), full_float32_products(torch):
        for start in range(0, len(queries), chunk):
            query = torch.from_numpy(queries[start:start + chunk]).to(device)
            # |b|^2 - 2 q.b in one matrix product (addmm's beta * input + alpha * q @ b^T)
            key = torch.addmm(norms[None, :], query, database.T, alpha=-2) if metric == "l2" else -(query @ database.T)
            value, index = torch.topk(key, want, dim=1, largest=False, sorted=False)
            if metric == "l2":
                value += (query * query).sum(1, keepdim=True)
            keys.append(value.cpu().numpy())
            rows.append(index.cpu().numpy())
    return np.concatenate(keys), np.concatenate(rows).astype(np.int64)


@contextlib.contextmanager
def full_float32_products(torch):
    """Float32 matrix products in full float32 (no TF32 or bfloat16, which a caller may have
    allowed): the bound on the keys' rounding assumes it."""
    before = torch.get_float32_matmul_precision()
    if before != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if before != "highest":
            torch.set_float32_matmul_precision(before)


# Exact search on the CPU. ``TILES_BACKEND`` is not a block backend: ``memaudit.exact`` runs it
# itself (tiles of the product in one reused buffer, pruned by each query's running k-th best
# key), because a block backend's dense top-k over whole blocks costs more than the product's
# own overheads. Measured with benchmarks/knn_throughput.py (see README "Benchmarks") against
# faiss-cpu and the dense torch-cpu block search at 1 and 2 threads; it is the CPU default at
# every core count (MKL's sgemm scales with torch's threads, faiss-cpu's bundled BLAS did not).
TILES_BACKEND = "torch-cpu-tiles"
FLAT_BACKENDS = {
    "faiss-gpu": lambda q, b, want, metric: _faiss_block_search(q, b, want, metric, gpu=True),
    "torch-cuda": lambda q, b, want, metric: _torch_block_search(q, b, want, metric,
                                                                 distributed.current().cuda_device()),
    "torch-cpu": lambda q, b, want, metric: _torch_block_search(q, b, want, metric, "cpu"),
    "faiss-cpu": lambda q, b, want, metric: _faiss_block_search(q, b, want, metric, gpu=False),
}
BACKENDS = (*FLAT_BACKENDS, TILES_BACKEND)


def flat_backend() -> str:
    """faiss-gpu when installed with a GPU, else torch on CUDA, else on the CPU torch's product in
    tiles (``TILES_BACKEND``); ``$MEMAUDIT_FLAT_BACKEND`` forces one."""
    forced = os.environ.get("MEMAUDIT_FLAT_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise InputError(f"MEMAUDIT_FLAT_BACKEND={forced}: expected one of {', '.join(BACKENDS)}")
        return forced
    try:
        import faiss

        if _faiss_gpus(faiss):
            return "faiss-gpu"
    except ImportError:
        pass
    import torch

    if torch.cuda.is_available():
        return "torch-cuda"
    return TILES_BACKEND


def _faiss_gpus(faiss) -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
